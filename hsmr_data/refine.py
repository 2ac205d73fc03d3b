"""One SKELify refinement round: the network's latest predictions → better labels in the label table.

A round takes the latest M predictions (`predictions.parquet` of a training run, one row per sample
with the step that made it), starts SKELify from each predicted (q, β) against the sample's dataset
keypoints, and commits round k with `label_table.commit_round`.

A refined label has its own verdict, not the conversion's (`Decision`): it replaces the stored label
only where it reprojects better by a margin (`min_improvement`, relative), keeps max|β| below
`max_abs_beta` (2, HSMR's public configuration), the sample has at least `filters.min_keypoints`
keypoints with confidence > 0, and its pelvis-aligned joints stay within `max_joint_shift_mm` of the
prediction it started from (our 3D-safe rule; None turns it off). maxPVE to the SMPL pseudo-GT is a
verdict on the conversion, not on a refined label, which may move away from a wrong SMPL fit: it is
measured and stored (`pve_max`), but not a rule. So a committed refined row passes (`passed`, and
the rule columns `pve_ok`, `betas_ok`, `keypoints_ok`, are all true), and a sample the conversion
filtered out regains a pose label in the next export (which trains on rows whose `passed` holds) and
in training's label overlays (`refine_training`).

Where the keypoints come from: the source dataset shards (`hmr2_format.read_shards`), not the exported
training shards, because the new label's PVE to the SMPL pseudo-GT needs the SMPL parameters, which
only the source holds; the keypoints are normalised exactly as conversion does (`camera.to_crop_coordinates`,
box side max(scale)·200, `filters.clean_confidences`). The predictions' own 2D keypoints and camera
belong to the augmented crop and are not used.

Old and new labels are scored by one procedure (`Skelify.score`, which is conversion's: the camera
translation of `camera.fit_translation`, the error of `camera.reprojection_error`, same confidence
floor). The decision uses the old label's error recomputed now; the commit's SQL predicate
(`label_table.KP2D_ERR_IMPROVED`: "s.kp2d_err < t.kp2d_err") checks the stored row again,
so a row whose stored error disagrees with the recomputed one can only be kept, never made worse.
Disagreements are counted (`stored_err_mismatch`; 0 on tables converted with the current camera fit).

New rows carry every label-table column: PVE to the SMPL mesh after the least-squares translation (the
mean vertex offset; conversion optimises the translation with the pose, which for a fixed pose ends
at the same minimiser up to its joint term), the refinement's verdicts, LBFGS iterations, seconds
and convergence. The row keeps the sample's `chunk_id` (its input shard).

Resuming: round k's statistics, with a fingerprint of the predictions it used, are written next to the
table before the commit; the commit is one idempotent Delta transaction (app id "hsmr-refine",
version k). A round picked automatically is the last committed round + 1, unless that last round
used the same predictions, in which case there is nothing to do. So a round killed before its commit
reruns as the same k, one killed after it is recognised as done, and k is committed exactly once.

The in-training side (a round every K steps and batches that read the new labels) is
`hsmr_data.refine_training`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from hsmr_data import label_table, layout
from hsmr_data.datasets import DatasetSpec
from hsmr_data.filters import FilterConfig, clean_confidences, count_keypoints
from hsmr_data.geometry import crop_side
from hsmr_data.hmr2_format import read_shards
from hsmr_data.progress import Progress
from hsmr_data.quarantine import Quarantine
from hsmr_model import camera
from hsmr_model.body_models import SKEL_SEX, BodyModels
from hsmr_model.model_files import BodyModelPaths
from hsmr_model.skel_layer import SKELLayer
from hsmr_model.skelify import REFINER_STAGES, Skelify, SkelifyConfig, SkelifyResult

# The refiner's objective of a round: HSMR's stage (with SkelifyConfig's hard limits), 3 LBFGS steps rather than
# 10: with the 2D margin, the lowest 3D label error in `hsmr study refine` from good predictions and from the
# labels themselves (fewer steps fit less of the keypoint noise), and a third of the time.
DEFAULT_STAGES = (replace(REFINER_STAGES[0], steps=3),)
PREDICTION_COLUMNS = ("sample_id", "dataset", "step", "q", "betas")
# Stored and recomputed errors of one label differ by float noise at most when both used this procedure.
_ERR_RTOL, _ERR_ATOL = 1e-4, 1e-7


@dataclass(frozen=True)
class RefineConfig:
    """Where the inputs are and the knobs of a round. Paper defaults: M = 18,000, max|β| < 2, HSMR's refiner
    objective; ours: hard joint limits, 3 LBFGS steps and the 2D margin (the 3D-safe rule), chosen on the
    synthetic world by `hsmr study refine` (README, "Refinement that helps in 3D")."""

    table_uri: str
    dataset_dirs: Mapping[str, str]  # dataset name (the predictions' `dataset`) → folder holding shards/*.tar
    models_root: str = layout.DEFAULT.models
    skel_sex: str = SKEL_SEX
    latest: int = 18_000  # M: how many of the most recent predictions a round refines
    max_abs_beta: float = 2.0
    # Relative 2D margin: replace where new kp2d_err < (1 − this) · old kp2d_err, i.e. only labels the refined
    # one reprojects 5× better; chosen by `hsmr study refine`: HSMR's rule (no margin) raised the 3D error of
    # the labels when refining from them, 50 % left it unchanged, 80 % lowered it from every source.
    min_improvement: float = 0.8
    # 3D-safe rule: mean pelvis-aligned joint distance (mm) of the refined label to its starting prediction.
    max_joint_shift_mm: float | None = None
    skelify: SkelifyConfig = field(default_factory=lambda: SkelifyConfig(stages=DEFAULT_STAGES))
    filters: FilterConfig = field(default_factory=FilterConfig)  # keypoint floor and minimum count


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
        side = torch.as_tensor([crop_side(person.scale)])
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
        digest.update(column_matrix(predictions[name]).astype(np.float64).tobytes())
    return digest.hexdigest()


def column_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
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


@torch.no_grad()
def pelvis_aligned_joints(skel: SKELLayer, q: torch.Tensor, betas: torch.Tensor) -> torch.Tensor:
    """SKEL joints with the pelvis at the origin: (B, 46), (B, 10) → (B, 24, 3) metres."""
    joints, _ = skel.joints(q, betas, torch.zeros(q.shape[0], 3, device=q.device))
    return joints - joints[:, :1]


def joint_distance_mm(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Mean distance of corresponding points, millimetres: (B, J, 3), (B, J, 3) → (B,)."""
    return (first - second).norm(dim=-1).mean(-1) * 1000


@dataclass
class Decision:
    """Old against new label for N samples: the refined label's own verdict, rule by rule."""

    old_err: np.ndarray  # (N,) kp2d_err of the stored label, recomputed
    new_err: np.ndarray  # (N,)
    betas_ok: np.ndarray  # (N,) bool: max|β| of the new label < max_abs_beta
    keypoints_ok: np.ndarray  # (N,) bool: enough confident keypoints
    safe_3d: np.ndarray  # (N,) bool: the 3D-safe rule (joint shift from the prediction)
    passed_old: np.ndarray  # (N,) bool: the stored label's verdict
    min_improvement: float = 0.0

    @property
    def improved(self) -> np.ndarray:
        """kp2d_err lower by the margin (NaN on either side never is, as null in the SQL predicate)."""
        with np.errstate(invalid="ignore"):
            return self.new_err < (1 - self.min_improvement) * self.old_err

    @property
    def replace(self) -> np.ndarray:
        """The refined label's verdict: the rows a round commits."""
        return self.improved & self.betas_ok & self.keypoints_ok & self.safe_3d

    def summary(self, rows: np.ndarray | slice = slice(None)) -> dict[str, Any]:
        """How many improved and were replaced, why the others were not, and by how much (normalised units)."""
        old, new, replace, improved = self.old_err[rows], self.new_err[rows], self.replace[rows], self.improved[rows]
        relative = (old[replace] - new[replace]) / old[replace]
        return {
            "samples": int(old.size),
            "improved": int(improved.sum()),
            "replaced": int(replace.sum()),
            "rejected_betas": int((improved & ~self.betas_ok[rows]).sum()),
            "rejected_keypoints": int((improved & ~self.keypoints_ok[rows]).sum()),
            "rejected_3d": int((improved & ~self.safe_3d[rows]).sum()),
            "kp2d_err_mean_before": _mean(old),
            "kp2d_err_mean_after": _mean(np.where(replace, new, old)),
            "replaced_kp2d_err_mean_before": _mean(old[replace]),
            "replaced_kp2d_err_mean_after": _mean(new[replace]),
            "replaced_relative_improvement_median": float(np.median(relative)) if relative.size else None,
            "passed_before": int(self.passed_old[rows].sum()),
            "passed_after": int((replace | self.passed_old[rows]).sum()),
            "regained": int((replace & ~self.passed_old[rows]).sum()),  # filtered before, a label now
        }


def _mean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


# ------------------------------------------------------------------------------------------- round
class Refiner:
    """Body models, SKELify and the source samples, loaded once and reused by every round."""

    def __init__(self, config: RefineConfig):
        self.config = config
        models = BodyModels.load(BodyModelPaths.from_root(config.models_root), config.skel_sex, config.skelify.device)
        self.skelify = Skelify(models.skel, models.keypoints, config.skelify)
        self.device = self.skelify.device
        self.smpl = models.smpl
        self._sources: dict[str, SourceSamples] = {}

    def reconfigured(self, config: RefineConfig) -> Refiner:
        """A refiner with other knobs (same table, datasets and models) sharing these body models and sources."""
        other = copy.copy(self)
        other.config = config
        other.skelify = Skelify(self.skelify.skel, self.skelify.regressor, config.skelify)
        return other

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
    commit = label_table.commit_round(config.table_uri, rows, round)
    stats["commit"] = asdict(commit)
    _write_json(path, stats)
    return RoundResult(round, "skipped" if commit.skipped else "committed", stats, str(path), asdict(commit))


@dataclass
class RoundEvaluation:
    """A round before its commit: the N samples with a label and a source, their fits and the verdicts."""

    ids: list[str]
    datasets: list[str]
    old: pa.Table  # the stored label rows of `ids`
    fit: SkelifyResult
    decision: Decision
    pve_mean: np.ndarray  # (N,) metres, the new labels to their SMPL pseudo-GT
    pve_max: np.ndarray  # (N,)
    num_keypoints: np.ndarray  # (N,) int32
    joint_shift_mm: np.ndarray  # (N,) the new labels' pelvis-aligned joints to the predictions'
    seconds: float  # SKELify wall time
    missing: dict[str, int]  # predictions left out: "no_label", "no_source"


def evaluate_round(refiner: Refiner, selected: pa.Table) -> RoundEvaluation:
    """SKELify the selected predictions and judge each new label against the stored one (nothing committed)."""
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

    old_q, old_betas = (torch.as_tensor(column_matrix(old[name]), dtype=torch.float32) for name in ("q", "betas"))
    _, old_err = refiner.skelify.score(old_q, old_betas, floored_t)
    start_q, start_betas = (
        torch.as_tensor(column_matrix(selected[name].take(keep)), dtype=torch.float32) for name in ("q", "betas")
    )
    started = time.perf_counter()
    with Progress("refine", total=len(start_q), unit="sample") as progress:
        fit = refiner.skelify.fit(start_q, start_betas, floored_t, on_batch=progress.update)
    seconds = time.perf_counter() - started
    pve_mean, pve_max = refiner.pve(fit.q, fit.betas, smpl)
    skel, device = refiner.skelify.skel, refiner.device
    shift = (
        joint_distance_mm(
            pelvis_aligned_joints(skel, fit.q.to(device), fit.betas.to(device)),
            pelvis_aligned_joints(skel, start_q.to(device), start_betas.to(device)),
        )
        .cpu()
        .numpy()
    )
    num_keypoints = count_keypoints(floored[..., 2])
    limit = np.inf if config.max_joint_shift_mm is None else config.max_joint_shift_mm
    decision = Decision(
        old_err=old_err.numpy().astype(np.float64),
        new_err=fit.kp2d_err.numpy().astype(np.float64),
        betas_ok=np.abs(fit.betas.numpy()).max(axis=1) < config.max_abs_beta,
        keypoints_ok=num_keypoints >= config.filters.min_keypoints,
        safe_3d=shift <= limit,
        passed_old=np.asarray(old["passed"].to_numpy(zero_copy_only=False), dtype=bool),
        min_improvement=config.min_improvement,
    )
    return RoundEvaluation(
        ids=ids,
        datasets=datasets,
        old=old,
        fit=fit,
        decision=decision,
        pve_mean=pve_mean,
        pve_max=pve_max,
        num_keypoints=num_keypoints,
        joint_shift_mm=shift,
        seconds=seconds,
        missing=missing,
    )


def _round_rows(refiner: Refiner, selected: pa.Table, number: int) -> tuple[pa.Table, dict[str, Any]]:
    """The rows round `number` commits (the accepted refined labels) and its statistics."""
    config = refiner.config
    evaluation = evaluate_round(refiner, selected)
    decision, fit, replace = evaluation.decision, evaluation.fit, evaluation.decision.replace
    accepted = np.ones(int(replace.sum()), dtype=bool)  # a committed refined row passes its own verdict
    rows = label_table.validate_rows(
        {
            "sample_id": [sample_id for sample_id, r in zip(evaluation.ids, replace, strict=True) if r],
            "dataset": [dataset for dataset, r in zip(evaluation.datasets, replace, strict=True) if r],
            "chunk_id": evaluation.old["chunk_id"].filter(pa.array(replace)),
            "q": fit.q.numpy()[replace],
            "betas": fit.betas.numpy()[replace],
            "trans": fit.trans.numpy()[replace],
            "pve_mean": evaluation.pve_mean[replace],
            "pve_max": evaluation.pve_max[replace],
            "kp2d_err": decision.new_err[replace],
            "num_keypoints": evaluation.num_keypoints[replace],
            "pve_ok": accepted,  # maxPVE is not a rule for refined labels (module docstring)
            "betas_ok": accepted,
            "keypoints_ok": accepted,
            "passed": accepted,
            "fit_iterations": fit.iterations.numpy()[replace],
            "fit_seconds": fit.seconds.numpy()[replace],
            "converged": fit.converged.numpy()[replace],
        }
    )
    stored_err = np.asarray(evaluation.old["kp2d_err"].to_numpy(zero_copy_only=False), dtype=np.float64)
    names = np.array(evaluation.datasets)
    count = len(evaluation.ids)
    stats = {
        "round": number,
        "table_uri": config.table_uri,
        "predictions": selected.num_rows,
        **evaluation.missing,
        "stored_err_mismatch": int(np.count_nonzero(~_same_error(stored_err, decision.old_err))),
        "device": str(refiner.device),
        "keypoint_path": config.skelify.keypoint_path,
        "hard_limits": config.skelify.hard_limits,
        "skelify_seconds": round(evaluation.seconds, 3),
        "samples_per_second": round(count / evaluation.seconds, 3),
        "max_abs_beta": config.max_abs_beta,
        "min_improvement": config.min_improvement,
        "max_joint_shift_mm": config.max_joint_shift_mm,
        "all": decision.summary(),
        "per_dataset": {name: decision.summary(names == name) for name in sorted(set(evaluation.datasets))},
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


# ------------------------------------------------------------------------------ the step's front door
@dataclass(frozen=True)
class RefineOptions:
    """One refinement round as the `hsmr refine` command and the refine-round flow take it (flat, JSON-able):
    the default refiner (HSMR's objective with hard joint limits), `steps` LBFGS steps of at most `max_iter`
    iterations (10 and 20 in the paper)."""

    predictions: str = field(default=layout.DEFAULT.run_predictions(), metadata={"help": "predictions.parquet"})
    table_uri: str = field(default=layout.DEFAULT.table(), metadata={"flag": "--table", "help": "label table URI"})
    dataset_dir: str = field(default=layout.DEFAULT.dataset(), metadata={"help": "the source dataset (shards/*.tar)"})
    dataset: str = field(default=layout.DEMO_DATASET, metadata={"help": "its name in the predictions and the table"})
    models_root: str = field(default=layout.DEFAULT.models, metadata={"flag": "--models", "help": "body models"})
    device: str = field(default=SkelifyConfig.device, metadata={"help": '"auto" (CUDA when present), "cpu", ...'})
    batch_size: int = field(default=SkelifyConfig.batch_size, metadata={"help": "samples per LBFGS problem"})
    latest: int = field(default=RefineConfig.latest, metadata={"help": "refine the latest M predictions"})
    max_abs_beta: float = field(default=RefineConfig.max_abs_beta, metadata={"help": "replace only below this"})
    min_improvement: float = field(
        default=RefineConfig.min_improvement,
        metadata={"help": "replace only where the new 2D error is below (1 - this) times the stored one"},
    )
    max_joint_shift_mm: float | None = field(
        default=RefineConfig.max_joint_shift_mm,
        metadata={"help": "3D rule: reject refined labels whose joints moved more than this from the prediction"},
    )
    steps: int = field(default=DEFAULT_STAGES[0].steps, metadata={"help": "LBFGS steps of the refiner"})
    max_iter: int = field(default=SkelifyConfig.max_iter, metadata={"help": "iterations per LBFGS step"})
    round: int | None = field(default=None, metadata={"help": "the round to commit (default: the next one)"})

    def config(self) -> RefineConfig:
        skelify = SkelifyConfig(
            (replace(DEFAULT_STAGES[0], steps=self.steps),),
            self.max_iter,
            batch_size=self.batch_size,
            device=self.device,
        )
        return RefineConfig(
            self.table_uri, {self.dataset: self.dataset_dir}, self.models_root, latest=self.latest,
            max_abs_beta=self.max_abs_beta, min_improvement=self.min_improvement,
            max_joint_shift_mm=self.max_joint_shift_mm, skelify=skelify,
        )  # fmt: skip


def run(options: RefineOptions) -> RoundResult:
    """One round on `options.predictions`: the front door of `hsmr refine` and the refine-round flow."""
    if not Path(options.predictions).is_file():
        raise FileNotFoundError(
            f"no predictions at {options.predictions}: a training run writes predictions.parquet into its run "
            "folder at every checkpoint, `hsmr predict` writes them for other people"
        )
    return refine_round(Refiner(options.config()), read_predictions(options.predictions), options.round)
