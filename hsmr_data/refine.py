"""One SKELify refinement round: the network's latest predictions → better labels in the label table.

A round takes the latest M predictions (`predictions.parquet` of a training run, one row per sample
with the step that made it), starts SKELify from each predicted (q, β) against the sample's dataset
keypoints, and commits round k with `label_table.commit_round`. A stored label is replaced only where
the new one reprojects better and keeps max|β| below `max_abs_beta` (2, HSMR's public configuration),
and, with `keep_passing` (the default), never where a label that passes the quality filters would be
replaced by one that fails them: the new label is judged by the same filters against the SMPL mesh,
and a failing one would lose the sample its pose label in the next export.

Where the keypoints come from: the source dataset shards (`hmr2_format.read_shards`), not the exported
training shards, because the new label's PVE to the SMPL pseudo-GT needs the SMPL parameters, which
only the source holds; the keypoints are normalised exactly as conversion does (`camera.to_crop_coordinates`,
box side max(scale)·200, `filters.clean_confidences`). The predictions' own 2D keypoints and camera
belong to the augmented crop and are not used.

Old and new labels are scored by one procedure (`Skelify.score`, which is conversion's: the camera
translation of `camera.fit_translation`, the error of `camera.reprojection_error`, same confidence
floor). The decision uses the old label's error recomputed now; the commit's SQL predicate
(`RefineConfig.better`: "s.kp2d_err < t.kp2d_err", plus the filter rule) checks the stored row again,
so a row whose stored error disagrees with the recomputed one can only be kept, never made worse.
Disagreements are counted (`stored_err_mismatch`; 0 on tables converted with the current camera fit).

New rows carry every label-table column: PVE to the SMPL mesh after the least-squares translation (the
mean vertex offset; conversion optimises the translation with the pose, which for a fixed pose ends
at the same minimiser up to its joint term), the filters' verdicts, LBFGS iterations, seconds and
convergence. The row keeps the sample's `chunk_id` (its input shard).

Resuming: round k's statistics, with a fingerprint of the predictions it used, are written next to the
table before the commit; the commit is one idempotent Delta transaction (app id "hsmr-refine",
version k). A round picked automatically is the last committed round + 1, unless that last round
used the same predictions, in which case there is nothing to do. So a round killed before its commit
reruns as the same k, one killed after it is recognised as done, and k is committed exactly once.

Inside training (`RefineCallback`): after a warm-up of W steps, every K steps a round runs on the
Trainer's predictions (gathered from every rank under DDP, the round run and committed by the main
process). "Training reads the updated labels" means: after a committed round the main process
announces the table version (`TableLabels`, a JSON file in the run folder), and every batch built
from the next step on, in the training processes and in their loader workers alike, carries for each
sample a round replaced the label the table holds at that version (q, β, trans, their 88-D and
mirrored forms, has_pose and has_betas from the row's filter verdict, as an export of that version
would), without re-exporting shards. A batch a worker built before the announcement is rebuilt by
the Trainer. Limits: only samples in the export can get labels (one filtered out of the export stays
out until the next export); and a training run resumed from a checkpoint reads the labels as the
table holds them at resume, including rounds committed after that checkpoint, so the bit-exact resume
of training does not extend across refinement rounds.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from hsmr_data import label_table, layout
from hsmr_data.datasets import DatasetSpec
from hsmr_data.export import label_arrays
from hsmr_data.filters import FilterConfig, apply_filters, clean_confidences
from hsmr_data.hmr2_format import read_shards
from hsmr_data.quarantine import Quarantine
from hsmr_model import camera
from hsmr_model.model_files import BodyModelPaths, read_keypoint_regressor
from hsmr_model.regressor import VertexRegressor
from hsmr_model.skel_layer import SKELLayer
from hsmr_model.skelify import REFINER_STAGES, Skelify, SkelifyConfig
from hsmr_model.smpl_layer import SMPLWithKeypoints

PREDICTION_COLUMNS = ("sample_id", "dataset", "step", "q", "betas")
# Stored and recomputed errors of one label differ by float noise at most when both used this procedure.
_ERR_RTOL, _ERR_ATOL = 1e-4, 1e-7


@dataclass(frozen=True)
class RefineConfig:
    """Where the inputs are and the knobs of a round. Paper defaults: M = 18,000, max|β| < 2."""

    table_uri: str
    dataset_dirs: Mapping[str, str]  # dataset name (the predictions' `dataset`) → folder holding shards/*.tar
    models_root: str = "storage/models"
    skel_sex: str = "male"
    latest: int = 18_000  # M: how many of the most recent predictions a round refines
    max_abs_beta: float = 2.0
    # Never replace a label that passes the filters by one that fails them (the export would then drop its pose).
    keep_passing: bool = True
    skelify: SkelifyConfig = field(default_factory=SkelifyConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)  # verdicts of the new labels

    @property
    def better(self) -> str:
        """The commit's SQL predicate over the new row `s` and the stored one `t`: `Decision.replace`'s rule
        checked against the stored row (max|β| is checked before: rows that break it are never sent)."""
        improved = label_table.KP2D_ERR_IMPROVED
        return f"{improved} AND (s.passed OR NOT t.passed)" if self.keep_passing else improved


@dataclass
class RoundResult:
    round: int
    status: str  # "committed", or "skipped": this round (or these predictions) was committed before
    stats: dict[str, Any]
    stats_path: str
    commit: dict[str, Any] | None = None  # label_table.CommitResult of this run's commit


@dataclass
class SourceSamples:
    """What a round needs of the source dataset, per sample id (N samples)."""

    index: dict[str, int]
    keypoints: np.ndarray  # (N, 44, 3) normalised crop coordinates, raw confidence
    global_orient: np.ndarray  # (N, 3) SMPL pseudo-GT
    body_pose: np.ndarray  # (N, 69)
    smpl_betas: np.ndarray  # (N, 10)


def read_source(dataset_dir: str | Path, dataset: str) -> SourceSamples:
    """Keypoints and SMPL pseudo-GT of every readable person in a dataset's shards (refused ones are skipped:
    conversion already reported them)."""
    ids, keypoints, orient, pose, betas = [], [], [], [], []
    for person in read_shards(DatasetSpec(dataset, str(dataset_dir)).shard_urls(), dataset, Quarantine()):
        side = torch.as_tensor([float(np.max(person.scale)) * 200.0])
        normalised = camera.to_crop_coordinates(
            torch.as_tensor(person.keypoints_2d[None], dtype=torch.float32),
            torch.as_tensor(person.center[None], dtype=torch.float32),
            side,
        )
        ids.append(person.sample_id)
        keypoints.append(normalised[0].numpy())
        orient.append(person.global_orient)
        pose.append(person.body_pose)
        betas.append(person.betas)
    return SourceSamples(
        index={sample_id: i for i, sample_id in enumerate(ids)},
        keypoints=np.asarray(keypoints, dtype=np.float32).reshape(-1, 44, 3),
        global_orient=np.asarray(orient, dtype=np.float32).reshape(-1, 3),
        body_pose=np.asarray(pose, dtype=np.float32).reshape(-1, 69),
        smpl_betas=np.asarray(betas, dtype=np.float32).reshape(-1, 10),
    )


# ------------------------------------------------------------------------------------ predictions
def read_predictions(path: str | Path) -> pa.Table:
    """The columns a round uses of a training run's predictions.parquet."""
    return pq.read_table(path, columns=list(PREDICTION_COLUMNS))


def predictions_table(predictions: Mapping[str, Mapping[str, Any]]) -> pa.Table:
    """The Trainer's in-memory predictions (sample id → row) as the table `read_predictions` gives."""
    rows = [predictions[key] for key in sorted(predictions)]
    return pa.table({name: [row[name] for row in rows] for name in PREDICTION_COLUMNS})


def select_latest(predictions: pa.Table, count: int) -> pa.Table:
    """The `count` most recent predictions (by step, ties by sample id), in sample-id order."""
    recent = predictions.sort_by([("step", "descending"), ("sample_id", "ascending")]).slice(0, count)
    return recent.sort_by("sample_id")


def fingerprint(predictions: pa.Table) -> str:
    """SHA-256 of the ids, steps and predicted (q, β) a round starts from: equal inputs, equal round."""
    digest = hashlib.sha256()
    digest.update("\n".join(predictions["sample_id"].to_pylist()).encode())
    digest.update(np.asarray(predictions["step"].to_numpy(), dtype=np.int64).tobytes())
    for name in ("q", "betas"):
        digest.update(_matrix(predictions[name]).astype(np.float64).tobytes())
    return digest.hexdigest()


def _matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A list column of equal-length rows as an (N, D) array."""
    values = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return np.array(values.flatten().to_numpy(zero_copy_only=False), dtype=np.float64).reshape(len(values), -1)


# ---------------------------------------------------------------------------------------- geometry
def vertex_distances(
    skel: SKELLayer, q: torch.Tensor, betas: torch.Tensor, smpl_vertices: torch.Tensor
) -> torch.Tensor:
    """Per-vertex distance of the SKEL skin to the SMPL mesh after the least-squares translation.

    Args:
        q: (B, 46); betas: (B, 10); smpl_vertices: (B, V, 3), same topology as the SKEL skin.
    Returns:
        (B, V) metres.
    """
    skin = skel(q, betas).skin_verts
    offset = (smpl_vertices - skin).mean(dim=1, keepdim=True)  # minimises the mean squared distance
    return (skin + offset - smpl_vertices).norm(dim=-1)


@dataclass
class Decision:
    """Old against new label for N samples: errors of the same scoring procedure, and which new labels win."""

    old_err: np.ndarray  # (N,) kp2d_err of the stored label, recomputed
    new_err: np.ndarray  # (N,)
    betas_ok: np.ndarray  # (N,) bool: max|β| of the new label < max_abs_beta
    passed_old: np.ndarray  # (N,) bool: the stored label's filter verdict
    passed_new: np.ndarray  # (N,) bool
    keep_passing: bool

    @property
    def improved(self) -> np.ndarray:
        """Lower kp2d_err (NaN on either side never is, as null in the SQL predicate)."""
        with np.errstate(invalid="ignore"):
            return self.new_err < self.old_err

    @property
    def keeps_filters(self) -> np.ndarray:
        return self.passed_new | ~self.passed_old | (not self.keep_passing)

    @property
    def replace(self) -> np.ndarray:
        return self.improved & self.betas_ok & self.keeps_filters

    def summary(self, rows: np.ndarray | slice = slice(None)) -> dict[str, Any]:
        """How many improved and were replaced, why the others were not, and by how much (normalised units)."""
        old, new, replace, improved = self.old_err[rows], self.new_err[rows], self.replace[rows], self.improved[rows]
        relative = (old[replace] - new[replace]) / old[replace]
        return {
            "samples": int(old.size),
            "improved": int(improved.sum()),
            "replaced": int(replace.sum()),
            "rejected_betas": int((improved & ~self.betas_ok[rows]).sum()),
            "rejected_filters": int((improved & self.betas_ok[rows] & ~self.keeps_filters[rows]).sum()),
            "kp2d_err_mean_before": _mean(old),
            "kp2d_err_mean_after": _mean(np.where(replace, new, old)),
            "replaced_kp2d_err_mean_before": _mean(old[replace]),
            "replaced_kp2d_err_mean_after": _mean(new[replace]),
            "replaced_relative_improvement_median": float(np.median(relative)) if relative.size else None,
            "passed_before": int(self.passed_old[rows].sum()),
            "passed_after": int(np.where(replace, self.passed_new[rows], self.passed_old[rows]).sum()),
            "replaced_failing_filters": int((replace & ~self.passed_new[rows]).sum()),
        }


def _mean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


# ------------------------------------------------------------------------------------------- round
class Refiner:
    """Body models, SKELify and the source samples, loaded once and reused by every round."""

    def __init__(self, config: RefineConfig):
        self.config = config
        paths = BodyModelPaths.from_root(config.models_root)
        regressor = VertexRegressor.from_sparse(read_keypoint_regressor(paths.keypoint_regressor).matrix)
        self.skelify = Skelify(SKELLayer.from_file(paths.skel(config.skel_sex)), regressor, config.skelify)
        self.device = self.skelify.device
        self.smpl = SMPLWithKeypoints.from_files(paths.smpl, paths.keypoint_regressor).smpl.to(self.device)
        self._sources: dict[str, SourceSamples] = {}

    def source(self, dataset: str) -> SourceSamples | None:
        """The dataset's source samples (read on first use), or None for a dataset without a folder."""
        if dataset not in self.config.dataset_dirs:
            return None
        if dataset not in self._sources:
            self._sources[dataset] = read_source(self.config.dataset_dirs[dataset], dataset)
        return self._sources[dataset]

    def keypoints_and_smpl(self, ids: list[str], datasets: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Raw-confidence keypoints (N, 44, 3) and SMPL parameters of samples all present in their sources."""
        picked = [(self._sources[d], self._sources[d].index[i]) for i, d in zip(ids, datasets, strict=True)]
        keypoints = np.stack([src.keypoints[row] for src, row in picked])
        smpl = {
            name: np.stack([getattr(src, name)[row] for src, row in picked])
            for name in ("global_orient", "body_pose", "smpl_betas")
        }
        return keypoints, smpl

    @torch.no_grad()
    def pve(self, q: torch.Tensor, betas: torch.Tensor, smpl: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Mean and max per-vertex distance (N,) of SKEL labels to their SMPL pseudo-GT meshes, metres."""
        means, maxima = [], []
        size = self.config.skelify.batch_size
        for start in range(0, q.shape[0], size):
            rows = slice(start, start + size)
            smpl_vertices = self.smpl(
                global_orient=torch.as_tensor(smpl["global_orient"][rows], device=self.device),
                body_pose=torch.as_tensor(smpl["body_pose"][rows], device=self.device),
                betas=torch.as_tensor(smpl["smpl_betas"][rows], device=self.device),
            ).vertices
            q_part, betas_part = q[rows].to(self.device), betas[rows].to(self.device)
            distances = vertex_distances(self.skelify.skel, q_part, betas_part, smpl_vertices)
            means.append(distances.mean(-1).cpu())
            maxima.append(distances.max(-1).values.cpu())
        return torch.cat(means).numpy(), torch.cat(maxima).numpy()


def stats_path(table_uri: str, round: int) -> Path:
    """Where round `round`'s statistics go: next to the table, in "{table}-rounds/" (local tables)."""
    table = Path(table_uri)
    return table.parent / f"{table.name}-rounds" / f"round-{round:04d}.json"


def latest_round(table_uri: str) -> int:
    """The last refinement round committed to the table (0: none yet)."""
    return max((k for k in label_table.round_versions(table_uri) if k >= 1), default=0)


def refine_round(refiner: Refiner, predictions: pa.Table, round: int | None = None) -> RoundResult:
    """Run and commit one refinement round on the latest `config.latest` of `predictions`.

    `round`: None picks the next one (see the module docstring for resuming); a given round already
    committed is skipped.
    """
    config = refiner.config
    selected = select_latest(predictions, config.latest)
    inputs = fingerprint(selected)
    if round is None:
        round = latest_round(config.table_uri)
        previous = _read_json(stats_path(config.table_uri, round)) if round else None
        if previous is not None and previous.get("predictions_fingerprint") == inputs:
            return RoundResult(round, "skipped", previous, str(stats_path(config.table_uri, round)))
        round += 1
    elif label_table.is_committed(config.table_uri, label_table.REFINE_APP_ID, round):
        path = stats_path(config.table_uri, round)
        return RoundResult(round, "skipped", _read_json(path) or {}, str(path))

    rows, stats = _round_rows(refiner, selected, round)
    stats["predictions_fingerprint"] = inputs
    path = stats_path(config.table_uri, round)
    _write_json(path, stats)  # before the commit: a committed round always has its statistics
    commit = label_table.commit_round(config.table_uri, rows, round, better=config.better)
    stats["commit"] = asdict(commit)
    _write_json(path, stats)
    return RoundResult(round, "skipped" if commit.skipped else "committed", stats, str(path), asdict(commit))


def _round_rows(refiner: Refiner, selected: pa.Table, number: int) -> tuple[pa.Table, dict[str, Any]]:
    """SKELify the selected predictions against their stored labels: the rows to commit and the statistics."""
    config = refiner.config
    labels = label_table.read_labels(config.table_uri)
    stored = {sample_id: i for i, sample_id in enumerate(labels["sample_id"].to_pylist())}
    ids, datasets = selected["sample_id"].to_pylist(), selected["dataset"].to_pylist()
    missing = {"no_label": 0, "no_source": 0}
    keep = []
    for position, (sample_id, dataset) in enumerate(zip(ids, datasets, strict=True)):
        source = refiner.source(dataset)
        if sample_id not in stored:
            missing["no_label"] += 1
        elif source is None or sample_id not in source.index:
            missing["no_source"] += 1
        else:
            keep.append(position)
    if not keep:
        raise ValueError(f"none of {len(ids)} predictions has both a label row and a source sample: {missing}")
    ids, datasets = [ids[i] for i in keep], [datasets[i] for i in keep]
    old = labels.take([stored[sample_id] for sample_id in ids])
    keypoints, smpl = refiner.keypoints_and_smpl(ids, datasets)
    floored = keypoints.copy()
    floored[..., 2] = clean_confidences(keypoints[..., 2], config.filters.keypoint_conf_floor)
    floored_t = torch.as_tensor(floored, dtype=torch.float32)

    old_q, old_betas = (torch.as_tensor(_matrix(old[name]), dtype=torch.float32) for name in ("q", "betas"))
    _, old_err = refiner.skelify.score(old_q, old_betas, floored_t)
    start_q, start_betas = (
        torch.as_tensor(_matrix(selected[name].take(keep)), dtype=torch.float32) for name in ("q", "betas")
    )
    started = time.perf_counter()
    fit = refiner.skelify.fit(start_q, start_betas, floored_t)
    seconds = time.perf_counter() - started
    pve_mean, pve_max = refiner.pve(fit.q, fit.betas, smpl)
    verdicts = apply_filters(pve_max, fit.betas.numpy(), keypoints[..., 2], config.filters)

    decision = Decision(
        old_err=old_err.numpy().astype(np.float64),
        new_err=fit.kp2d_err.numpy().astype(np.float64),
        betas_ok=np.abs(fit.betas.numpy()).max(axis=1) < config.max_abs_beta,
        passed_old=np.asarray(old["passed"].to_numpy(zero_copy_only=False), dtype=bool),
        passed_new=verdicts.passed,
        keep_passing=config.keep_passing,
    )
    replace = decision.replace
    rows = label_table.validate_rows(
        {
            "sample_id": [sample_id for sample_id, r in zip(ids, replace, strict=True) if r],
            "dataset": [dataset for dataset, r in zip(datasets, replace, strict=True) if r],
            "chunk_id": old["chunk_id"].filter(pa.array(replace)),
            "q": fit.q.numpy()[replace],
            "betas": fit.betas.numpy()[replace],
            "trans": fit.trans.numpy()[replace],
            "pve_mean": pve_mean[replace],
            "pve_max": pve_max[replace],
            "kp2d_err": decision.new_err[replace],
            "fit_iterations": fit.iterations.numpy()[replace],
            "fit_seconds": fit.seconds.numpy()[replace],
            "converged": fit.converged.numpy()[replace],
            **{name: values[replace] for name, values in verdicts.columns().items()},
        }
    )
    stored_err = np.asarray(old["kp2d_err"].to_numpy(zero_copy_only=False), dtype=np.float64)
    names = np.array(datasets)
    stats = {
        "round": number,
        "table_uri": config.table_uri,
        "predictions": selected.num_rows,
        **missing,
        "stored_err_mismatch": int(np.count_nonzero(~_same_error(stored_err, decision.old_err))),
        "device": str(refiner.device),
        "keypoint_path": config.skelify.keypoint_path,
        "skelify_seconds": round(seconds, 3),
        "samples_per_second": round(len(ids) / seconds, 3),
        "max_abs_beta": config.max_abs_beta,
        "better": config.better,
        "all": decision.summary(),
        "per_dataset": {name: decision.summary(names == name) for name in sorted(set(datasets))},
    }
    return rows, stats


def _same_error(stored: np.ndarray, recomputed: np.ndarray) -> np.ndarray:
    """Whether each stored kp2d_err is the recomputed one up to float noise (both unknown counts as the same)."""
    both_nan = np.isnan(stored) & np.isnan(recomputed)
    with np.errstate(invalid="ignore"):
        return both_nan | np.isclose(stored, recomputed, rtol=_ERR_RTOL, atol=_ERR_ATOL)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically (temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


# ---------------------------------------------------------------------------------------- training
class TableLabels:
    """The refined labels of the label table at the version the trainer announces: `LabelOverrides` for
    `TrainingBatches`, read where batches are built, so loader workers follow refinement rounds too.

    The announcement is a small JSON file ({"table_uri", "version"}) that the main training process
    rewrites atomically after each committed round. Every `current()` call checks it (one stat), and a
    changed announcement makes this process, whichever it is, read the table at the announced version.
    """

    def __init__(self, announcement: str | Path):
        self.announcement = Path(announcement)
        self._seen: tuple[int, int, int] | None = None
        self._version: int | None = None
        self._labels: dict[str, dict[str, np.ndarray]] = {}

    @staticmethod
    def announce(announcement: str | Path, table_uri: str, version: int) -> None:
        """Tell every reader of `announcement` to train on `table_uri`'s labels as of `version`."""
        path = Path(announcement)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"table_uri": table_uri, "version": version}))
        tmp.replace(path)

    def current(self) -> tuple[int | None, dict[str, dict[str, np.ndarray]]]:
        try:
            stat = self.announcement.stat()
        except FileNotFoundError:
            return self._version, self._labels
        seen = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if seen != self._seen:
            announced = json.loads(self.announcement.read_text())
            labels = label_table.read_labels(announced["table_uri"], version=announced["version"])
            self._labels, self._version, self._seen = refined_label_arrays(labels), announced["version"], seen
        return self._version, self._labels

    def __getstate__(self) -> dict[str, Any]:
        # A loader worker reads the table itself rather than receiving the parent's copy of the labels.
        return {"announcement": self.announcement}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["announcement"])


def refined_label_arrays(labels: pa.Table) -> dict[str, dict[str, np.ndarray]]:
    """Sample id → the npz label arrays an export would write for each refined row (round >= 1) of `labels`."""
    refined = labels.filter(pc.greater_equal(labels["round"], 1))
    if refined.num_rows == 0:
        return {}
    q, betas, trans = (_matrix(refined[name]) for name in ("q", "betas", "trans"))
    finite = np.isfinite(np.concatenate([q, betas, trans], axis=1)).all(axis=1)
    arrays = label_arrays(*(np.where(finite[:, None], a, 0.0) for a in (q, betas, trans)))
    has_label = (np.asarray(refined["passed"].to_numpy(zero_copy_only=False), dtype=bool) & finite).astype(np.float32)
    return {
        sample_id: {
            **{name: np.asarray(values[i], dtype=np.float32) for name, values in arrays.items()},
            "has_pose": np.float32(has_label[i]),
            "has_betas": np.float32(has_label[i]),
        }
        for i, sample_id in enumerate(refined["sample_id"].to_pylist())
    }


class RefineCallback:
    """`Trainer.run(on_step=...)`: a refinement round every `every` steps after `warmup` (rounds at steps
    warmup + every, warmup + 2·every, ...), on the latest `refiner.config.latest` predictions; the Trainer's
    batches then carry the labels the table holds (see the module docstring).

    Under DDP every rank calls it at the same step: the predictions of all ranks are gathered, the main
    process runs the round and commits it, announces the new table version, and every rank (and each of
    its loader workers) trains on the new labels from the next step.
    """

    ANNOUNCEMENT = "labels.json"  # in the run's out_dir

    def __init__(
        self,
        trainer,
        refiner: Refiner,
        warmup: int = 5000,
        every: int = 230,
        on_commit: Callable[[RoundResult], None] | None = None,
    ):
        """`on_commit(result)` runs in the main process after each committed round (e.g. a dashboard update)."""
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.refiner, self.warmup, self.every, self.on_commit = refiner, warmup, every, on_commit
        self.results: list[RoundResult] = []
        self.announcement = Path(trainer.out_dir) / self.ANNOUNCEMENT
        self.group = trainer.group
        trainer.batches.overrides = TableLabels(self.announcement)
        self.refresh()

    def refresh(self) -> None:
        """Announce the table's current version: batches built from now on carry its refined labels."""
        if self.group.is_main:
            uri = self.refiner.config.table_uri
            TableLabels.announce(self.announcement, uri, label_table.create_or_open(uri).version())
        self.group.barrier()

    def __call__(self, trainer, step: int) -> None:
        if step <= self.warmup or (step - self.warmup) % self.every:
            return
        trainer.collect_predictions()
        if self.group.is_main:
            self.results.append(refine_round(self.refiner, predictions_table(trainer.predictions)))
        committed = self.group.gather(self.group.is_main and self.results[-1].status == "committed")[0]
        if committed:
            self.refresh()
            if self.group.is_main and self.on_commit is not None:
                self.on_commit(self.results[-1])


# ------------------------------------------------------------------------------ the step's front door
@dataclass(frozen=True)
class RefineOptions:
    """One refinement round as the `hsmr refine` command and the refine-round flow take it (flat, JSON-able):
    HSMR's refiner, `steps` LBFGS steps of at most `max_iter` iterations (10 and 20 in the paper)."""

    predictions: str = field(default=layout.DEFAULT.run_predictions(), metadata={"help": "predictions.parquet"})
    table_uri: str = field(default=layout.DEFAULT.table(), metadata={"flag": "--table", "help": "label table URI"})
    dataset_dir: str = field(default=layout.DEFAULT.dataset(), metadata={"help": "the source dataset (shards/*.tar)"})
    dataset: str = field(default=layout.DEMO_DATASET, metadata={"help": "its name in the predictions and the table"})
    models_root: str = field(default=layout.DEFAULT.models, metadata={"flag": "--models", "help": "body models"})
    device: str = field(default=SkelifyConfig.device, metadata={"help": '"auto" (CUDA when present), "cpu", ...'})
    batch_size: int = field(default=SkelifyConfig.batch_size, metadata={"help": "samples per LBFGS problem"})
    latest: int = field(default=RefineConfig.latest, metadata={"help": "refine the latest M predictions"})
    max_abs_beta: float = field(default=RefineConfig.max_abs_beta, metadata={"help": "replace only below this"})
    keep_passing: bool = field(
        default=RefineConfig.keep_passing, metadata={"help": "never replace a passing label by a failing one"}
    )
    steps: int = field(default=REFINER_STAGES[0].steps, metadata={"help": "LBFGS steps of the refiner"})
    max_iter: int = field(default=SkelifyConfig.max_iter, metadata={"help": "iterations per LBFGS step"})
    round: int | None = field(default=None, metadata={"help": "the round to commit (default: the next one)"})

    def config(self) -> RefineConfig:
        skelify = SkelifyConfig(
            (replace(REFINER_STAGES[0], steps=self.steps),),
            self.max_iter,
            batch_size=self.batch_size,
            device=self.device,
        )
        return RefineConfig(
            self.table_uri, {self.dataset: self.dataset_dir}, self.models_root, latest=self.latest,
            max_abs_beta=self.max_abs_beta, keep_passing=self.keep_passing, skelify=skelify,
        )  # fmt: skip


def run(options: RefineOptions) -> RoundResult:
    """One round on `options.predictions`: the front door of `hsmr refine` and the refine-round flow."""
    if not Path(options.predictions).is_file():
        raise FileNotFoundError(
            f"no predictions at {options.predictions}: a training run writes predictions.parquet into its run "
            "folder at every checkpoint, `hsmr predict` writes them for other people"
        )
    return refine_round(Refiner(options.config()), read_predictions(options.predictions), options.round)
