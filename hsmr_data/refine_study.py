"""`hsmr study refine`: which refiner makes labels better in 3D, measured where the truth is known.

On a synthetic world (people with their true SKEL bodies, SMPL pseudo-GT some of which is corrupted,
and the round-0 label table of the real conversion), one refinement round is evaluated, without a
commit, for every variant (objective and acceptance rule) and every source of the predictions it
starts from:

- `truth_noise`: the true (q, β) plus Gaussian noise (a good network);
- `network`: the predictions of a small network trained briefly (the `cpu` recipe, `network_steps`) on
  the world's people and their round-0 labels, run on their un-augmented crops (`hsmr_data.predict`);
  its checkpoint is kept in the work folder, so a rerun does not train again;
- `constant`: every prediction is the circular mean of the round-0 labels that pass (q) and their
  mean β: a network no better than the constant pose (a cheap stand-in for a barely trained one);
- `labels`: the round-0 labels themselves, corrupted ones included (refining the labels in place).

For each (case, variant) the figures are: the mean 3D joint error (pelvis-aligned SKEL joints) and
MPVPE (pelvis-aligned skin) of all labels and of the replaced ones against the truth, before and
after the round; the share replaced; how many samples the conversion filtered out regain a label
(per corruption kind, with their joint error); Table 4's joint-limit violations of the labels after
the round; and SKELify's seconds. A variant qualifies as a default when it lowers the joint error of
all labels in every case and leaves no label past its limits.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from hsmr_data import label_table, train_run
from hsmr_data.conversion import ConvertConfig, convert_dataset
from hsmr_data.export import export_shards
from hsmr_data.predict import PredictConfig, Predictor, predict_dataset
from hsmr_data.refine import (
    RefineConfig,
    Refiner,
    RoundEvaluation,
    column_matrix,
    evaluate_round,
    joint_distance_mm,
)
from hsmr_data.synthetic.world import SynthConfig, generate_dataset
from hsmr_data.training import make_config
from hsmr_model import metrics as M
from hsmr_model.model_files import BodyModelPaths
from hsmr_model.skel_layer import SKELLayer
from hsmr_model.skelify import ANCHORED_REFINER_STAGES, REFINER_STAGES, SkelifyConfig, Stage

CASES = ("truth_noise", "network", "constant", "labels")
DATASET = "synth"


@dataclass(frozen=True)
class Variant:
    """One refiner: its SKELify stages and limits, and the acceptance rule's knobs (RefineConfig's)."""

    name: str
    stages: tuple[Stage, ...]
    hard_limits: bool = True
    min_improvement: float = 0.0
    max_joint_shift_mm: float | None = None


def _paper_stage(**changes: Any) -> tuple[Stage, ...]:
    return (replace(REFINER_STAGES[0], **changes),)


VARIANTS = (
    Variant("paper (soft limits)", REFINER_STAGES, hard_limits=False),
    Variant("hard limits", REFINER_STAGES),
    Variant("hard, 2D margin 50%", REFINER_STAGES, min_improvement=0.5),
    Variant("hard, 2D margin 80%", REFINER_STAGES, min_improvement=0.8),
    Variant("hard, 3 steps", _paper_stage(steps=3)),
    Variant("hard, 3 steps, 2D margin 80%", _paper_stage(steps=3), min_improvement=0.8),
    Variant("hard, β prior to prediction", _paper_stage(shape_to_start=True)),
    Variant("hard, joint shift ≤ 80 mm", REFINER_STAGES, max_joint_shift_mm=80.0),
    Variant("anchored (3D anchor 10, β to prediction)", ANCHORED_REFINER_STAGES),
    Variant("anchored, 2D margin 50%", ANCHORED_REFINER_STAGES, min_improvement=0.5),
)


def default_variant() -> Variant:
    """The refiner a round runs by default (RefineConfig's defaults), as a study variant."""
    defaults = RefineConfig(table_uri="", dataset_dirs={})
    return Variant(
        "default",
        defaults.skelify.stages,
        hard_limits=defaults.skelify.hard_limits,
        min_improvement=defaults.min_improvement,
        max_joint_shift_mm=defaults.max_joint_shift_mm,
    )


@dataclass(frozen=True)
class StudyConfig:
    models_root: str  # body models in the standard layout (the synthetic ones: `hsmr models` / `make models`)
    work_dir: str  # the world, its round-0 table
    people: int = 256
    seed: int = 0
    q_noise: float = 0.05  # radians, the truth_noise case
    betas_noise: float = 0.2
    max_iter: int = SkelifyConfig.max_iter
    batch_size: int = 256
    device: str = "cpu"
    network_steps: int = 300  # training steps of the `network` case's network (batch 32)
    cases: tuple[str, ...] = CASES
    variants: tuple[Variant, ...] = VARIANTS


@dataclass
class World:
    dataset_dir: str
    table_uri: str
    truth: dict[str, dict[str, Any]]  # sample id → truth row (q, betas, corruption, ...)
    seconds: float


def build_world(config: StudyConfig) -> World:
    """The synthetic dataset and its round-0 table (reused when the work folder already holds them)."""
    started = time.perf_counter()
    root = Path(config.work_dir)
    dataset_dir, table = root / DATASET, root / "round0"
    truth_path = dataset_dir / "truth" / "ground_truth.parquet"
    if not truth_path.is_file():
        paths = BodyModelPaths.from_root(config.models_root)
        generate_dataset(paths, dataset_dir, SynthConfig(count=config.people, seed=config.seed))
    if not (table / "_delta_log").is_dir():
        convert_dataset(ConvertConfig(str(dataset_dir), str(table), models_root=config.models_root))
    truth = {row["sample_id"]: row for row in pq.read_table(truth_path).to_pylist()}
    return World(str(dataset_dir), str(table), truth, time.perf_counter() - started)


# ------------------------------------------------------------------------------------ predictions
def predictions(case: str, world: World, config: StudyConfig) -> pa.Table:
    """The predictions a round of `case` starts from (one per labelled sample; the columns of a training run's)."""
    labels = label_table.read_labels(world.table_uri)
    ids = labels["sample_id"].to_pylist()
    q_label, betas_label = column_matrix(labels["q"]), column_matrix(labels["betas"])
    if case == "truth_noise":
        rng = np.random.default_rng(config.seed)
        q = np.array([world.truth[i]["q"] for i in ids]) + rng.normal(0, config.q_noise, q_label.shape)
        betas = np.array([world.truth[i]["betas"] for i in ids]) + rng.normal(0, config.betas_noise, betas_label.shape)
    elif case == "constant":
        passed = np.asarray(labels["passed"].to_numpy(zero_copy_only=False), dtype=bool)
        mean_q = np.arctan2(np.sin(q_label[passed]).mean(0), np.cos(q_label[passed]).mean(0))
        q, betas = np.tile(mean_q, (len(ids), 1)), np.tile(betas_label[passed].mean(0), (len(ids), 1))
    elif case == "labels":
        q, betas = q_label, betas_label
    elif case == "network":
        return network_predictions(world, config)
    else:
        raise ValueError(f"unknown case {case!r}; the cases are {CASES}")
    return pa.table(
        {
            "sample_id": ids,
            "dataset": [DATASET] * len(ids),
            "step": [0] * len(ids),
            "q": q.astype(np.float32).tolist(),
            "betas": betas.astype(np.float32).tolist(),
        }
    )


def network_predictions(world: World, config: StudyConfig) -> pa.Table:
    """The `network` case: a `cpu`-recipe network trained on the world's exported round-0 labels for
    `network_steps` steps (in `work_dir/network`, reused when a finished run of as many steps is there),
    then its predictions on every person's un-augmented crop."""
    run_dir = Path(config.work_dir) / "network"
    # The export is resumable: on a rerun it finds its shards complete and writes nothing.
    exported = export_shards(world.table_uri, {DATASET: world.dataset_dir}, Path(config.work_dir) / "shards")
    train = make_config("cpu", indexes=(exported.index,), out_dir=str(run_dir), steps=config.network_steps,
                        models_root=config.models_root, device=config.device, seed=config.seed)  # fmt: skip
    train_run.train_or_reuse(train_run.TrainingRun(train))
    predictor = Predictor(PredictConfig(str(run_dir), models_root=config.models_root, device=config.device))
    predicted = predict_dataset(predictor, [f"{DATASET}={world.dataset_dir}"], run_dir / "study_predictions.parquet")
    return pq.read_table(predicted.predictions)


# ------------------------------------------------------------------------------------------ errors
@torch.no_grad()
def errors_to_truth(
    skel: SKELLayer, q: torch.Tensor, betas: torch.Tensor, q_true: torch.Tensor, betas_true: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Mean joint error and MPVPE (mm) of SKEL bodies against the true ones, both pelvis-aligned.

    Args:
        q, q_true: (N, 46); betas, betas_true: (N, 10).
    Returns:
        joint error (N,), MPVPE (N,).
    """
    joint_mm, vertex_mm = [], []
    for part in range(0, q.shape[0], 256):
        rows = slice(part, part + 256)
        ours, true = skel(q[rows], betas[rows]), skel(q_true[rows], betas_true[rows])
        ours_root, true_root = ours.joints[:, :1], true.joints[:, :1]
        joint_mm.append(joint_distance_mm(ours.joints - ours_root, true.joints - true_root))
        vertex_mm.append(joint_distance_mm(ours.skin_verts - ours_root, true.skin_verts - true_root))
    return torch.cat(joint_mm).numpy(), torch.cat(vertex_mm).numpy()


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else math.nan


def _violation_shares(q: np.ndarray) -> dict[str, float]:
    """Share of labels with any Table-4 part past its limits by more than each tolerance (degrees); 0 of none."""
    if not len(q):
        return {"0": 0.0, "10": 0.0}
    return {f"{t:g}": float(np.any(np.stack(list(M.skel_violations(q, t).values())) > 0, 0).mean()) for t in (0, 10)}


def round_figures(evaluation: RoundEvaluation, world: World, skel: SKELLayer) -> dict[str, Any]:
    """The study's figures of one evaluated round (see the module docstring)."""
    replace_rows = evaluation.decision.replace
    old_q, old_betas = (torch.as_tensor(column_matrix(evaluation.old[n]), dtype=torch.float32) for n in ("q", "betas"))
    mask = torch.as_tensor(replace_rows)[:, None]
    new_q, new_betas = torch.where(mask, evaluation.fit.q, old_q), torch.where(mask, evaluation.fit.betas, old_betas)
    true_q, true_betas = (
        torch.as_tensor(np.array([world.truth[i][n] for i in evaluation.ids]), dtype=torch.float32)
        for n in ("q", "betas")
    )
    joint_before, vertex_before = errors_to_truth(skel, old_q, old_betas, true_q, true_betas)
    joint_after, vertex_after = errors_to_truth(skel, new_q, new_betas, true_q, true_betas)
    regained = replace_rows & ~evaluation.decision.passed_old
    corruption = np.array([world.truth[i]["corruption"] for i in evaluation.ids])
    return {
        "samples": len(evaluation.ids),
        "share_replaced": float(replace_rows.mean()),
        "joint_mm_all": [_mean(joint_before), _mean(joint_after)],
        "mpvpe_mm_all": [_mean(vertex_before), _mean(vertex_after)],
        "joint_mm_replaced": [_mean(joint_before[replace_rows]), _mean(joint_after[replace_rows])],
        "mpvpe_mm_replaced": [_mean(vertex_before[replace_rows]), _mean(vertex_after[replace_rows])],
        "regained": {
            kind: {
                "filtered": int(((corruption == kind) & ~evaluation.decision.passed_old).sum()),
                "regained": int((regained & (corruption == kind)).sum()),
                "joint_mm_after": _mean(joint_after[regained & (corruption == kind)]),
            }
            for kind in sorted(set(corruption.tolist()))
        },  # fmt: skip
        "violations_after": _violation_shares(new_q.numpy()),
        "violations_replaced": _violation_shares(evaluation.fit.q.numpy()[replace_rows]),
        "kp2d_err_all": [
            _mean(evaluation.decision.old_err),
            _mean(np.where(replace_rows, evaluation.decision.new_err, evaluation.decision.old_err)),
        ],
        "seconds": evaluation.seconds,
    }


# ------------------------------------------------------------------------------------------- study
@dataclass
class StudyResult:
    config: dict[str, Any]
    world_seconds: float
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per (case, variant)
    # Variants lowering the joint error of all labels in every case whose refined labels are all inside the limits.
    qualifying: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def refine_config(variant: Variant, world: World, config: StudyConfig) -> RefineConfig:
    skelify = SkelifyConfig(
        stages=variant.stages,
        hard_limits=variant.hard_limits,
        max_iter=config.max_iter,
        batch_size=config.batch_size,
        device=config.device,
    )
    return RefineConfig(
        table_uri=world.table_uri,
        dataset_dirs={DATASET: world.dataset_dir},
        models_root=config.models_root,
        min_improvement=variant.min_improvement,
        max_joint_shift_mm=variant.max_joint_shift_mm,
        skelify=skelify,
    )


def run_study(config: StudyConfig, log=print) -> StudyResult:
    """Every case × variant; fits are shared by variants that differ only in their acceptance rule."""
    world = build_world(config)
    result = StudyResult(config=asdict(config), world_seconds=world.seconds)
    base = Refiner(refine_config(config.variants[0], world, config))  # loads the models and sources once
    skel = copy.deepcopy(base.skelify.skel).cpu()
    for case in config.cases:
        starts = predictions(case, world, config)
        fits: dict[tuple, RoundEvaluation] = {}
        for variant in config.variants:
            refine = refine_config(variant, world, config)
            key = (variant.stages, variant.hard_limits)
            refiner = base.reconfigured(refine)
            if key in fits:
                evaluation = rejudge(fits[key], refiner)
            else:
                evaluation = fits[key] = evaluate_round(refiner, starts)
            figures = round_figures(evaluation, world, skel)
            result.rows.append({"case": case, "variant": variant.name, **figures})
            log(f"{case:12s} {variant.name:45s} joints {figures['joint_mm_all'][0]:.1f} -> "
                f"{figures['joint_mm_all'][1]:.1f} mm, replaced {figures['share_replaced']:.1%}, "
                f"past limits {figures['violations_after']['0']:.1%}")  # fmt: skip
    result.qualifying = [variant.name for variant in config.variants if _qualifies(result.rows, variant.name)]
    return result


def rejudge(evaluation: RoundEvaluation, refiner: Refiner) -> RoundEvaluation:
    """The same fits judged by another acceptance rule (the refiner's config)."""
    config = refiner.config
    limit = np.inf if config.max_joint_shift_mm is None else config.max_joint_shift_mm
    decision = replace(
        evaluation.decision, min_improvement=config.min_improvement, safe_3d=evaluation.joint_shift_mm <= limit
    )
    return replace(evaluation, decision=decision)


def _qualifies(rows: Sequence[dict[str, Any]], variant: str) -> bool:
    mine = [row for row in rows if row["variant"] == variant]
    return all(row["joint_mm_all"][1] < row["joint_mm_all"][0] and row["violations_replaced"]["0"] == 0 for row in mine)


def to_markdown(result: StudyResult) -> str:
    """The study's table: one line per case and variant, and which variants qualify."""
    head = (
        "| case | variant | joint err all (mm) | MPVPE all (mm) | joint err replaced (mm) | MPVPE replaced (mm) "
        "| replaced | regained | replaced past limits (>0°) | all past limits (>0° / >10°) | s |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )

    def pair(values: list[float]) -> str:
        return " → ".join("–" if math.isnan(v) else f"{v:.1f}" for v in values)

    lines = []
    for row in result.rows:
        regained = sum(kind["regained"] for kind in row["regained"].values())
        filtered = sum(kind["filtered"] for kind in row["regained"].values())
        lines.append(
            f"| {row['case']} | {row['variant']} | {pair(row['joint_mm_all'])} | {pair(row['mpvpe_mm_all'])} "
            f"| {pair(row['joint_mm_replaced'])} | {pair(row['mpvpe_mm_replaced'])} | {row['share_replaced']:.1%} "
            f"| {regained}/{filtered} | {row['violations_replaced']['0']:.1%} "
            f"| {row['violations_after']['0']:.1%} / {row['violations_after']['10']:.1%} "
            f"| {row['seconds']:.1f} |"
        )
    qualifying = ", ".join(result.qualifying) or "none"
    verdict = f"Lower the joint error of all labels in every case, refined labels 0 % past the limits: {qualifying}"
    return head + "\n".join(lines) + f"\n\n{verdict}\n" + _regained_markdown(result)


def _regained_markdown(result: StudyResult) -> str:
    """Per corruption kind of the pseudo-GT, for the qualifying variants: filtered samples that regained a label
    and those labels' mean joint error to the truth."""
    rows = [row for row in result.rows if row["variant"] in result.qualifying]
    if not rows:
        return ""
    kinds = sorted({kind for row in rows for kind in row["regained"]})
    head = "\n| case | variant | " + " | ".join(kinds) + " |\n|---|---|" + "---|" * len(kinds) + "\n"

    def cell(figures: dict[str, Any] | None) -> str:
        if not figures or not figures["filtered"]:
            return "–"
        error = "" if math.isnan(figures["joint_mm_after"]) else f", {figures['joint_mm_after']:.0f} mm"
        return f"{figures['regained']}/{figures['filtered']}{error}"

    lines = [f"| {row['case']} | {row['variant']} | " + " | ".join(cell(row["regained"].get(k)) for k in kinds) + " |"
             for row in rows]  # fmt: skip
    intro = "\nFiltered samples that regained a label (regained/filtered, their mean joint error to the truth):\n"
    return intro + head + "\n".join(lines) + "\n"


def write_study(config: StudyConfig, out_json: str | Path, log=print) -> StudyResult:
    """Run the study; write its figures as JSON to `out_json` and the table as markdown next to it (.md)."""
    result = run_study(config, log=log)
    out = Path(out_json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    out.with_suffix(".md").write_text(to_markdown(result))
    return result
