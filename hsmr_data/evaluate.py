"""Evaluation on the synthetic world, reported in the form of the HSMR paper's Tables 1–4.

The synthetic world knows every person's true SKEL body, so each source of bodies is measured against
it, on the normal split and on the hard one (the MOYO-like poses and views):

- "SMPL pseudo-GT": the SMPL fits the dataset ships (the keypoint regressor works on the SMPL mesh and
  the SKEL skin alike, since they share a topology); the paper's SMPL-output rows (HMR2.0);
- "SMPL + SKEL fit": round 0 of the label table, SKEL fitted to that SMPL (Table 3's baseline);
- "refined labels": the label table as it stands, after the SKELify rounds;
- "network": a training run's predictions or `hsmr predict`'s, when given (the paper's HSMR row);
- "constant mean pose": one body for everyone, the mean true pose (pelvis rotation averaged as a
  rotation) and mean β of the people scored: the best a network that ignores the image could do, so
  a network row means "learned" only below it.

The label rows need the label table; without one (people held out of training have no labels) the
report has the pseudo-GT, the constant and the network.

Metrics (hsmr_model.metrics): PCK@0.05/0.1 of the OpenPose body keypoints against the true ones
projected in the crop camera, over the keypoints the dataset marks visible (confidence > 0);
MPJPE / PA-MPJPE (14 LSP joints, pelvis-centred) and MPVPE / PA-MPVPE (pelvis-centred skin) in mm;
Table 4's joint-limit violation shares of the knees and elbows. Every source is scored on the same
samples (those all of them cover), so their numbers compare.

Crop cameras: labels carry their own (`trans`); the SMPL pseudo-GT has none in the data, and a
network's `cam_t` belongs to the augmented crop it saw, so both are placed by the same fit to the
dataset's 2D keypoints that placed the labels (hsmr_model.camera.fit_translation).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from hsmr_data import label_table, layout
from hsmr_data.datasets import DatasetSpec
from hsmr_data.filters import FilterConfig, clean_confidences
from hsmr_data.geometry import box_sides
from hsmr_data.hmr2_format import read_shards
from hsmr_data.progress import Progress
from hsmr_data.quarantine import Quarantine
from hsmr_data.records import PersonSample
from hsmr_model import camera
from hsmr_model import metrics as M
from hsmr_model.body_models import BodyModels
from hsmr_model.model_files import BodyModelPaths
from hsmr_model.pose_repr import bone_rotations, rotation_to_bone_dofs

SPLITS = ("normal", "hard")


@dataclass(frozen=True)
class EvalConfig:
    dataset_dir: str  # holds shards/*.tar and, by default, truth/ground_truth.parquet
    table_uri: str | None = None  # the label table; None: no label rows (e.g. a held-out split)
    models_root: str = layout.DEFAULT.models
    predictions_path: str | None = None  # a training run's predictions.parquet
    truth_path: str | None = None
    dataset: str = "synth"
    batch_size: int = 128
    out_dir: str = layout.DEFAULT.report("eval")  # where `run` writes evaluation.json and evaluation.md

    @property
    def truth(self) -> str:
        return self.truth_path or str(Path(self.dataset_dir) / "truth" / "ground_truth.parquet")


@dataclass
class Bodies:
    """What one source says about N samples: model-frame 3D, crop-camera 2D, and its joint-limit check."""

    keypoints: np.ndarray  # (N, 44, 3) metres, model frame (translation irrelevant: everything is centred)
    vertices: np.ndarray  # (N, 6890, 3)
    keypoints_2d: np.ndarray  # (N, 44, 2) normalised crop coordinates
    violations_at: Callable[[float], dict[str, np.ndarray]]  # tolerance (deg) → part → (N,) degrees


def load_samples(dataset_dir: str, dataset: str) -> dict[str, PersonSample]:
    """Every valid person of the dataset's shards by sample id (refused ones are simply absent).

    `dataset_dir`: a folder holding shards/*.tar, or any dataset SPEC (`hsmr_data.datasets`)."""
    urls = DatasetSpec(dataset, dataset_dir).shard_urls()
    return {s.sample_id: s for s in read_shards(urls, dataset, Quarantine())}


def observed_keypoints(samples: list[PersonSample]) -> np.ndarray:
    """The dataset's 2D keypoints in normalised crop coordinates, confidences after the loader's floor: (N, 44, 3)."""
    keypoints = torch.as_tensor(np.stack([s.keypoints_2d for s in samples]), dtype=torch.float64)
    center = torch.as_tensor(np.stack([s.center for s in samples]), dtype=torch.float64)
    side = box_sides(torch.as_tensor(np.stack([s.scale for s in samples]))).double()  # float32 sides, as conversion's
    crop = camera.to_crop_coordinates(keypoints, center, side).numpy()
    crop[..., 2] = clean_confidences(crop[..., 2], FilterConfig.keypoint_conf_floor)
    return crop


def _batches(count: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, count)) for start in range(0, count, size)]


def _place(keypoints: np.ndarray, trans: np.ndarray | None, observed: np.ndarray) -> np.ndarray:
    """2D keypoints in the crop camera; a missing translation is fitted to the observed keypoints."""
    points = torch.as_tensor(keypoints)
    if trans is None:
        trans_t = camera.fit_translation(points, torch.as_tensor(observed))
    else:
        trans_t = torch.as_tensor(np.asarray(trans, np.float64))
    return camera.project(points, trans_t).numpy()


def skel_bodies(
    models: BodyModels,
    q: np.ndarray,
    betas: np.ndarray,
    trans: np.ndarray | None,
    observed: np.ndarray,
    batch_size: int = 128,
) -> Bodies:
    """SKEL bodies of (N, 46) q and (N, 10) β; `trans` (N, 3) is the crop camera, or None to fit it."""
    vertices = []
    for part in _batches(len(q), batch_size):
        with torch.no_grad():
            out = models.skel(torch.as_tensor(q[part], dtype=torch.float32), torch.as_tensor(betas[part]).float())
        vertices.append(out.skin_verts.double().numpy())
    skin = np.concatenate(vertices)
    keypoints = models.keypoints(torch.as_tensor(skin)).numpy()
    q64 = np.asarray(q, np.float64)
    return Bodies(keypoints, skin, _place(keypoints, trans, observed), lambda t: M.skel_violations(q64, t))


def smpl_bodies(
    models: BodyModels,
    global_orient: np.ndarray,
    body_pose: np.ndarray,
    betas: np.ndarray,
    observed: np.ndarray,
    batch_size: int = 128,
) -> Bodies:
    """SMPL bodies of axis-angle (N, 3) and (N, 69) and (N, 10) β, placed by a fit to the observed keypoints."""
    vertices = []
    for part in _batches(len(body_pose), batch_size):
        with torch.no_grad():
            out = models.smpl(
                global_orient=torch.as_tensor(global_orient[part]).float(),
                body_pose=torch.as_tensor(body_pose[part]).float(),
                betas=torch.as_tensor(betas[part]).float(),
            )
        vertices.append(out.vertices.double().numpy())
    skin = np.concatenate(vertices)
    keypoints = models.keypoints(torch.as_tensor(skin)).numpy()
    pose = np.asarray(body_pose, np.float64)
    return Bodies(keypoints, skin, _place(keypoints, None, observed), lambda t: M.smpl_violations(pose, t))


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def scores(predicted: Bodies, truth: Bodies, visible: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """Every metric of the samples in `mask`, as means (PCK, mm) and Table 4 shares."""
    if not mask.any():
        return {"samples": 0}
    root_p, root_t = predicted.keypoints[mask, M.PELVIS], truth.keypoints[mask, M.PELVIS]
    out: dict[str, Any] = {"samples": int(mask.sum())}
    for threshold in M.PCK_THRESHOLDS:
        pck = M.pck(predicted.keypoints_2d[mask], truth.keypoints_2d[mask], visible[mask], threshold)
        out[f"pck@{threshold:g}"] = _nanmean(pck)
    out["mpjpe_mm"] = float(M.mpjpe(predicted.keypoints[mask], truth.keypoints[mask]).mean())
    out["pa_mpjpe_mm"] = float(M.pa_mpjpe(predicted.keypoints[mask], truth.keypoints[mask]).mean())
    out["mpvpe_mm"] = float(M.mpvpe(predicted.vertices[mask], truth.vertices[mask], root_p, root_t).mean())
    out["pa_mpvpe_mm"] = float(M.pa_mpvpe(predicted.vertices[mask], truth.vertices[mask]).mean())
    shares = M.violation_shares(lambda t: {k: v[mask] for k, v in predicted.violations_at(t).items()})
    out["violations"] = {part: {f"{t:g}": share for t, share in by_tol.items()} for part, by_tol in shares.items()}
    return out


@dataclass(frozen=True)
class Source:
    """One row of the report: a name, how the paper's tables call its kind, and its bodies."""

    key: str
    label: str
    output: str  # "SMPL" or "SKEL"
    bodies: Bodies


def _label_arrays(labels, ids: list[str]) -> dict[str, np.ndarray]:
    rows = {row["sample_id"]: row for row in labels.select(["sample_id", "q", "betas", "trans"]).to_pylist()}
    return {name: np.array([rows[i][name] for i in ids], np.float64) for name in ("q", "betas", "trans")}


def constant_pose(q: np.ndarray, betas: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The mean of (N, 46) q and (N, 10) β, repeated `count` times: ((count, 46), (count, 10)).

    The pelvis DoFs (unlimited, wrapping at ±π) are averaged as rotations: the mean of the
    rotation matrices projected back onto a rotation; every other DoF has limits inside ±π and
    is averaged as a number.
    """
    pelvis = bone_rotations(torch.as_tensor(q, dtype=torch.float64))[:, 0].mean(0)
    u, _, vt = torch.linalg.svd(pelvis)
    nearest = u @ torch.diag(torch.tensor([1.0, 1.0, torch.det(u @ vt)], dtype=torch.float64)) @ vt
    mean_q = np.asarray(q, np.float64).mean(0)
    mean_q[0:3] = rotation_to_bone_dofs(nearest[None], bone=0)[0].numpy()
    return np.tile(mean_q, (count, 1)), np.tile(np.asarray(betas, np.float64).mean(0), (count, 1))


def evaluate(config: EvalConfig, models: BodyModels | None = None) -> dict[str, Any]:
    """Score every source against the truth per split: the report as a JSON-able dict."""
    models = models or BodyModels.load(BodyModelPaths.from_root(config.models_root))
    truth = {row["sample_id"]: row for row in pq.read_table(config.truth).to_pylist()}
    samples = load_samples(config.dataset_dir, config.dataset)
    tables = {}
    if config.table_uri is not None:
        tables[0] = label_table.read_labels(config.table_uri, round=0)
        latest_round = max(label_table.round_versions(config.table_uri))
        tables[latest_round] = label_table.read_labels(config.table_uri)
    predictions = pq.read_table(config.predictions_path).to_pylist() if config.predictions_path else None

    common = set(truth) & set(samples)
    for table in tables.values():
        common &= set(table["sample_id"].to_pylist())
    if predictions is not None:
        common &= {row["sample_id"] for row in predictions}
    ids = sorted(common)
    if not ids:
        raise ValueError("no sample is in the truth, the shards, the label table and the predictions at once")

    people = [samples[i] for i in ids]
    observed = observed_keypoints(people)
    visible = np.stack([s.keypoints_2d[:, 2] > 0 for s in people])
    split = np.array([truth[i]["split"] for i in ids])
    true_q, true_betas = np.array([truth[i]["q"] for i in ids]), np.array([truth[i]["betas"] for i in ids])
    true_trans = np.array([truth[i]["trans"] for i in ids])
    # The bodies to pose: the truth, the pseudo-GT, two label rounds, the constant pose, the network.
    progress = Progress("eval", total=3 + 2 * bool(tables) + (predictions is not None), unit="source")
    true_bodies = skel_bodies(models, true_q, true_betas, true_trans, observed, config.batch_size)
    progress.update(1)

    def labels_source(key: str, label: str, table) -> Source:
        arrays = _label_arrays(table, ids)
        bodies = skel_bodies(models, arrays["q"], arrays["betas"], arrays["trans"], observed, config.batch_size)
        progress.update(1)
        return Source(key, label, "SKEL", bodies)

    pseudo_gt = smpl_bodies(
        models,
        np.stack([s.global_orient for s in people]),
        np.stack([s.body_pose for s in people]),
        np.stack([s.betas for s in people]),
        observed,
        config.batch_size,
    )
    progress.update(1)
    sources = [Source("smpl_pseudo_gt", "SMPL pseudo-GT", "SMPL", pseudo_gt)]
    if tables:
        sources.append(labels_source("smpl_skel_fit", "SMPL + SKEL fit (round 0)", tables[0]))
        sources.append(labels_source("refined_labels", f"refined labels (round {latest_round})", tables[latest_round]))
    constant_q, constant_betas = constant_pose(true_q, true_betas, len(ids))
    constant = skel_bodies(models, constant_q, constant_betas, None, observed, config.batch_size)
    progress.update(1)
    sources.append(Source("constant", "constant mean pose", "SKEL", constant))
    if predictions is not None:
        by_id = {row["sample_id"]: row for row in predictions}
        q = np.array([by_id[i]["q"] for i in ids], np.float64)
        betas = np.array([by_id[i]["betas"] for i in ids], np.float64)
        step = max(int(row.get("step", 0)) for row in predictions)
        bodies = skel_bodies(models, q, betas, None, observed, config.batch_size)
        sources.append(Source("network", f"network (step {step})", "SKEL", bodies))
        progress.update(1)
    progress.close()

    return {
        "dataset_dir": config.dataset_dir,
        "table_uri": config.table_uri,
        "predictions": config.predictions_path,
        "latest_round": max(tables) if tables else None,
        "samples": {name: int((split == name).sum()) for name in SPLITS},
        "sources": {
            source.key: {
                "label": source.label,
                "output": source.output,
                "splits": {name: scores(source.bodies, true_bodies, visible, split == name) for name in SPLITS},
            }
            for source in sources
        },
    }


# ---------------------------------------------------------------------------------- the report
def _number(value: float | None, digits: int) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _percent(share: float | None) -> str:
    return "–" if share is None or not math.isfinite(share) else f"{100 * share:.1f}%"


def _accuracy_table(report: dict[str, Any], keys: list[str]) -> list[str]:
    header = "| method | " + " | ".join(f"{split} PCK@0.05 | @0.1 | MPJPE | PA-MPJPE" for split in SPLITS) + " |"
    lines = [header, "| --- |" + " --- |" * 4 * len(SPLITS)]
    for key in keys:
        source = report["sources"][key]
        cells = []
        for split in SPLITS:
            s = source["splits"][split]
            cells += [_number(s.get("pck@0.05"), 2), _number(s.get("pck@0.1"), 2)]
            cells += [_number(s.get("mpjpe_mm"), 1), _number(s.get("pa_mpjpe_mm"), 1)]
        lines.append(f"| {source['label']} | " + " | ".join(cells) + " |")
    return lines


def to_markdown(report: dict[str, Any]) -> str:
    """The report as the paper's tables: 1 (SMPL output and the network), 2 (mesh), 3 (SKEL fits), 4 (limits)."""
    sources = report["sources"]
    smpl_and_network = [k for k in ("smpl_pseudo_gt", "constant", "network") if k in sources]
    skel_fits = [k for k in ("smpl_skel_fit", "refined_labels") if k in sources]
    counts = ", ".join(f"{n} {split}" for split, n in report["samples"].items())
    tables = (
        f"Label table `{report['table_uri']}`, latest round {report['latest_round']}."
        if skel_fits
        else "No label table."
    )
    lines = [
        "# Evaluation against the synthetic world's true bodies",
        "",
        f"Samples: {counts} (every method on the same ones). {tables} PCK: share of visible OpenPose keypoints "
        "within t × crop size; MPJPE and PA-MPJPE in mm on the 14 LSP joints, pelvis-centred. The constant mean "
        "pose is one body for all (the mean true pose and β of these people): a network has learned where it "
        "scores below it.",
        "",
        "## Table 1: SMPL pseudo-GT (the paper's SMPL-output rows) and the network",
        "",
        *_accuracy_table(report, smpl_and_network),
        "",
        "## Table 2: mesh error (mm), pelvis-centred",
        "",
        "| method | " + " | ".join(f"{split} MPVPE | PA-MPVPE" for split in SPLITS) + " |",
        "| --- |" + " --- |" * 2 * len(SPLITS),
        *(
            f"| {sources[k]['label']} | "
            + " | ".join(
                f"{_number(sources[k]['splits'][s].get('mpvpe_mm'), 1)} | "
                f"{_number(sources[k]['splits'][s].get('pa_mpvpe_mm'), 1)}"
                for s in SPLITS
            )
            + " |"
            for k in sources
        ),
        "",
        *(
            ["## Table 3: SKEL recovered by fitting (SMPL + SKEL fit) and after refinement", ""]
            + _accuracy_table(report, skel_fits)
            + [""]
            if skel_fits
            else []
        ),
        "## Table 4: share of samples whose elbow or knee rotation exceeds the natural range",
        "",
        "| method | split | "
        + " | ".join(f">{t}°: L elbow | R elbow | L knee | R knee" for t in ("10", "20", "30"))
        + " |",
        "| --- | --- |" + " --- |" * 12,
    ]
    for source in sources.values():
        for split in SPLITS:
            violations = source["splits"][split].get("violations", {})
            cells = [_percent(violations.get(part, {}).get(t)) for t in ("10", "20", "30") for part in M.LIMB_PARTS]
            lines.append(f"| {source['label']} | {split} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _without_nan(value: Any) -> Any:
    """NaN (a split with no visible keypoint, say) as null: strict JSON readers reject NaN."""
    if isinstance(value, dict):
        return {k: _without_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nan(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def write_report(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """evaluation.json and evaluation.md under `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "evaluation.json", out / "evaluation.md"
    json_path.write_text(json.dumps(_without_nan(report), indent=2, allow_nan=False))
    md_path.write_text(to_markdown(report))
    return json_path, md_path


@dataclass
class EvalResult:
    report: dict[str, Any]
    json_path: str
    markdown_path: str


def run(config: EvalConfig) -> EvalResult:
    """Evaluate and write the report to `config.out_dir`: the front door of `hsmr eval` and the pipeline."""
    report = evaluate(config)
    json_path, md_path = write_report(report, config.out_dir)
    return EvalResult(report, str(json_path), str(md_path))
