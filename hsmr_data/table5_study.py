"""HSMR's Table 5 direction at a CPU's scale: 88-D pose target vs Euler angles, refinement in training on vs off.

On a synthetic world with held-out test people, the round-0 labels of the training people (the real
conversion) are exported once; then four short training runs of the `cpu` recipe's network, one per
(pose target, in-training refinement), each from the same seed and the same export. A run with
refinement gets its own copy of the round-0 table (the rounds commit to it), and SKELify rounds with the
default refiner after `refine_warmup` steps, every `refine_every` steps, on the latest predictions. Each
network then predicts the test people's un-augmented crops and `hsmr_data.evaluate` scores them against
the truth (PA-MPJPE, MPJPE, MPVPE, PCK, per split normal/hard), next to the constant mean pose.

One seed and a few hundred steps: differences of a few mm are within run-to-run noise.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hsmr_data import train_run
from hsmr_data.conversion import ConvertConfig, convert_dataset
from hsmr_data.evaluate import EvalConfig, evaluate
from hsmr_data.export import export_shards
from hsmr_data.predict import PredictConfig, Predictor, predict_dataset
from hsmr_data.refine import RefineConfig
from hsmr_data.synthetic.world import SynthConfig, generate_dataset
from hsmr_data.training import make_config
from hsmr_model.model_files import BodyModelPaths
from hsmr_model.network import POSE_TARGETS

DATASET = "synth"
METRICS = ("pa_mpjpe_mm", "mpjpe_mm", "mpvpe_mm", "pa_mpvpe_mm", "pck@0.1")


@dataclass(frozen=True)
class Table5Config:
    models_root: str
    work_dir: str  # the world, its export, one folder per run (reused: a finished run is not trained again)
    people: int = 400
    test_fraction: float = 0.2
    seed: int = 0
    steps: int = 240  # per run, batch 32 (the `cpu` recipe); the README's second table
    refine_warmup: int = 90
    refine_every: int = 50
    device: str = "cpu"
    pose_targets: tuple[str, ...] = POSE_TARGETS
    refinement: tuple[bool, ...] = (False, True)


@dataclass
class Table5Result:
    config: dict[str, Any]
    world_seconds: float
    test_people: int
    constant: dict[str, dict[str, Any]]  # split → the constant mean pose's scores
    runs: list[dict[str, Any]] = field(default_factory=list)  # one per (pose target, refinement)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def run_name(pose_target: str, refine: bool) -> str:
    return f"{pose_target}-{'refine' if refine else 'plain'}"


def build_world(config: Table5Config) -> tuple[str, str, str, float]:
    """The dataset (training people, test/ held out), its round-0 table and export; reused when present.

    Returns:
        dataset folder, round-0 table URI, the export's index.json, seconds spent.
    """
    started = time.perf_counter()
    root = Path(config.work_dir)
    dataset_dir, table = root / DATASET, root / "round0"
    if not (dataset_dir / "manifest.json").is_file():
        paths = BodyModelPaths.from_root(config.models_root)
        synth = SynthConfig(count=config.people, seed=config.seed, test_fraction=config.test_fraction)
        generate_dataset(paths, dataset_dir, synth)
    if not (table / "_delta_log").is_dir():
        convert_dataset(ConvertConfig(str(dataset_dir), str(table), models_root=config.models_root))
    exported = export_shards(str(table), {DATASET: str(dataset_dir)}, root / "shards")
    return str(dataset_dir), str(table), exported.index, time.perf_counter() - started


def train_one(config: Table5Config, index: str, dataset_dir: str, table: str, pose_target: str, refine: bool):
    """One run (trained unless its folder holds a finished one): its folder, result and training seconds."""
    run_dir = Path(config.work_dir) / "runs" / run_name(pose_target, refine)
    train = make_config("cpu", indexes=(index,), out_dir=str(run_dir), steps=config.steps, pose_target=pose_target,
                        models_root=config.models_root, device=config.device, seed=config.seed)  # fmt: skip
    refinement = None
    if refine:
        labels = run_dir / "labels"  # the rounds commit here, never to the shared round-0 table
        if not labels.exists():
            shutil.copytree(table, labels)
        refine_config = RefineConfig(str(labels), {DATASET: dataset_dir}, models_root=config.models_root)
        refinement = train_run.InTrainingRefinement(refine_config, config.refine_warmup, config.refine_every)
    result, seconds = train_run.train_or_reuse(train_run.TrainingRun(train, refinement))
    return run_dir, result, seconds


def run_table5(config: Table5Config, log=print) -> Table5Result:
    """Every (pose target, refinement) run, scored on the held-out test people."""
    dataset_dir, table, index, world_seconds = build_world(config)
    test_dir = str(Path(dataset_dir) / "test")
    result: Table5Result | None = None
    for pose_target in config.pose_targets:
        for refine in config.refinement:
            run_dir, trained, seconds = train_one(config, index, dataset_dir, table, pose_target, refine)
            predictor = Predictor(PredictConfig(str(run_dir), models_root=config.models_root, device=config.device))
            predicted = predict_dataset(predictor, [f"{DATASET}={test_dir}"], run_dir / "test_predictions.parquet")
            report = evaluate(EvalConfig(test_dir, None, config.models_root, predicted.predictions))
            if result is None:
                constant = report["sources"]["constant"]["splits"]
                result = Table5Result(asdict(config), world_seconds, predicted.count, split_scores(constant))
            rounds = [r for r in trained.get("refinement_rounds", []) if r["status"] == "committed"]
            replaced = [json.loads(Path(r["stats"]).read_text())["all"]["replaced"] for r in rounds]
            scores = split_scores(report["sources"]["network"]["splits"])
            result.runs.append(
                {
                    "pose_target": pose_target,
                    "refinement": refine,
                    "steps": trained["step"],
                    "rounds_committed": len(rounds),
                    "replaced_per_round": replaced,
                    "train_seconds": seconds,
                    "images_per_second": trained["images_per_second"],  # over the run, its rounds included
                    "scores": scores,
                }
            )
            log(f"{run_name(pose_target, refine):14s} PA-MPJPE {scores['all']['pa_mpjpe_mm']:.1f} mm, "
                f"MPJPE {scores['all']['mpjpe_mm']:.1f} mm, rounds {len(rounds)}")  # fmt: skip
    return result


def split_scores(splits: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The METRICS of each split and of all test people (the splits' means weighted by their sizes)."""
    out = {name: {"samples": s["samples"], **{m: s[m] for m in METRICS}} for name, s in splits.items() if s["samples"]}
    total = sum(s["samples"] for s in out.values())
    out["all"] = {"samples": total, **{m: sum(s[m] * s["samples"] for s in out.values()) / total for m in METRICS}}
    return out


def to_markdown(result: Table5Result) -> str:
    """One line per run and the constant pose: each metric on all test people, PA-MPJPE per split."""
    head = (
        "| pose target | refinement in training | PA-MPJPE all | normal | hard | MPJPE | MPVPE | PA-MPVPE "
        "| PCK@0.1 | labels replaced per round | images/s |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
    )

    def cells(scores: dict[str, dict[str, Any]]) -> str:
        everyone = scores["all"]
        per_split = " | ".join(f"{scores[s]['pa_mpjpe_mm']:.1f}" if s in scores else "–" for s in ("normal", "hard"))
        return (
            f"{everyone['pa_mpjpe_mm']:.1f} | {per_split} | {everyone['mpjpe_mm']:.1f} | {everyone['mpvpe_mm']:.1f} "
            f"| {everyone['pa_mpvpe_mm']:.1f} | {everyone['pck@0.1']:.2f}"
        )

    lines = [f"| constant mean pose | – | {cells(result.constant)} | – | – |"]
    for run in result.runs:
        replaced = ", ".join(map(str, run["replaced_per_round"])) or "–"
        lines.append(f"| {run['pose_target']} | {'on' if run['refinement'] else 'off'} | {cells(run['scores'])} "
                     f"| {replaced} | {run['images_per_second']:.1f} |")  # fmt: skip
    note = f"\n\n{result.test_people} held-out test people; one seed: differences of a few mm are noise.\n"
    return head + "\n".join(lines) + note
