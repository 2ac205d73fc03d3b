"""One training run, with SKELify refining labels inside it if asked: in this process, or in N under torchrun.

`run(spec)` trains in the calling process (or in each torchrun rank that calls it). `launch(spec, nproc)`
writes the spec to `{out_dir}/run.json`, starts `torchrun -m hsmr_data.train_run {out_dir}/run.json`
(one process per GPU, or gloo processes on the CPU) and follows `metrics.jsonl` while it trains; the main
rank writes the result to `{out_dir}/result.json`. `hsmr train --nproc N` and the train-hsmr flow's
`nproc` parameter both launch this way, so every front door trains through the same code.

`run_step(TrainOptions)` is the step's front door (`hsmr train` and the train-hsmr flow): the flat,
JSON-able options become the run spec, and the steps go by on a progress bar (a Prefect progress
artifact inside a flow).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from hsmr_data import distributed, layout
from hsmr_data.dashboard import DashboardConfig, LiveDashboard, page_next_to
from hsmr_data.progress import Progress
from hsmr_data.refine import RefineConfig, RefineOptions, Refiner
from hsmr_data.refine_training import RefineCallback
from hsmr_data.training import RECIPES, TrainConfig, Trainer, make_config
from hsmr_model.network import network_config

RUN_FILE = "run.json"
RESULT_FILE = "result.json"


@dataclass(frozen=True)
class InTrainingRefinement:
    """HSMR's schedule: a round on the latest `config.latest` predictions every `every` steps after `warmup`."""

    config: RefineConfig
    warmup: int = 5000
    every: int = 230
    dashboard_path: str | None = None  # the label dashboard, rewritten after each committed round


@dataclass(frozen=True)
class TrainingRun:
    train: TrainConfig
    refinement: InTrainingRefinement | None = None


def train(spec: TrainingRun, nproc: int = 1, on_log: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """The front doors' entry: `nproc` > 1 launches torchrun, unless this process already is one of its ranks
    (`torchrun ... -m hsmr_data.cli train`), which then trains as its rank."""
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        return launch(spec, nproc, on_log=on_log)
    return run(spec, on_log=on_log)


def run(spec: TrainingRun, on_log: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Train (resuming from the run folder's checkpoint) and return the result with the refinement rounds."""
    trainer = Trainer(spec.train)
    callback, page = None, None
    if spec.refinement is not None:
        refinement = spec.refinement
        if refinement.dashboard_path and trainer.group.is_main:
            page = LiveDashboard(dashboard_config(refinement.config), refinement.dashboard_path)
        callback = RefineCallback(
            trainer,
            Refiner(refinement.config),
            warmup=refinement.warmup,
            every=refinement.every,
            on_commit=None if page is None else lambda _: page.update(force=True),
        )
    result = trainer.run(on_log=on_log, on_step=callback)
    if page is not None and callback.results:
        page.finish()
    rounds = [
        {"round": r.round, "status": r.status, "stats": r.stats_path} for r in (callback.results if callback else [])
    ]
    report = json.loads(json.dumps({**asdict(result), "refinement_rounds": rounds}))
    if trainer.group.is_main:
        write_json(Path(spec.train.out_dir) / RESULT_FILE, report)
    return report


_RECIPE_HELP = "named settings (hsmr_data.training.RECIPES): " + ", ".join(RECIPES) + "; the options below override it"


@dataclass(frozen=True)
class TrainOptions:
    """A training run as the `hsmr train` command and the train-hsmr flow take it (flat, JSON-able). A None
    network or optimiser field takes the recipe's value, else TrainConfig's."""

    indexes: tuple[str, ...] = field(
        default=(), metadata={"flag": "--index", "help": "index.json of an export; default: the latest export"}
    )
    weights: tuple[float, ...] = field(default=(), metadata={"flag": "--weight", "help": "mixing weight per index"})
    out_dir: str = field(default=layout.DEFAULT.run(), metadata={"flag": "--out", "help": "run folder (resumes)"})
    models_root: str = field(default=layout.DEFAULT.models, metadata={"flag": "--models", "help": "body models"})
    recipe: Literal["paper", "cpu"] | None = field(default=None, metadata={"help": _RECIPE_HELP})
    size: Literal["tiny", "small", "B", "H"] | None = field(default=None, metadata={"help": "default tiny"})
    pose_target: Literal["88d", "euler"] | None = field(default=None, metadata={"help": "default 88d"})
    steps: int | None = None
    batch_size: int | None = field(default=None, metadata={"help": "the global batch (split over processes)"})
    lr: float | None = None
    checkpoint_every: int | None = None
    device: str = field(default="auto", metadata={"help": '"auto" (CUDA when present), "cpu", "cuda:1", ...'})
    seed: int | None = None
    loader_workers: int | None = field(default=None, metadata={"help": "data-loading processes per process"})
    nproc: int = field(default=1, metadata={"help": "DDP processes under torchrun (one per GPU); 1: no DDP"})
    refine_every: int = field(default=0, metadata={"help": "SKELify inside training every N steps; 0: off"})
    refine_warmup: int = field(default=InTrainingRefinement.warmup, metadata={"help": "steps before the first"})
    refine_latest: int = field(default=RefineConfig.latest, metadata={"help": "predictions each round refines"})
    table_uri: str = field(default=layout.DEFAULT.table(), metadata={"flag": "--table", "help": "refined table"})
    dataset_dir: str = field(default=layout.DEFAULT.dataset(), metadata={"help": "its source dataset"})
    dashboard_path: str | None = field(default=None, metadata={"help": "default: next to the table"})

    def spec(self) -> TrainingRun:
        config = make_config(
            self.recipe,
            indexes=self.indexes or (latest_index(),),
            out_dir=self.out_dir,
            weights=self.weights or None,
            models_root=self.models_root,
            size=self.size,
            pose_target=self.pose_target,
            steps=self.steps,
            batch_size=self.batch_size,
            lr=self.lr,
            checkpoint_every=self.checkpoint_every,
            device=self.device,
            seed=self.seed,
            loader_workers=self.loader_workers,
        )
        if self.refine_every <= 0:
            return TrainingRun(config)
        refine = RefineOptions(
            table_uri=self.table_uri,
            dataset_dir=self.dataset_dir,
            models_root=self.models_root,
            device=self.device,
            latest=self.refine_latest,
        ).config()
        page = self.dashboard_path or page_next_to(self.table_uri)  # rewritten after each committed round
        refinement = InTrainingRefinement(
            refine, warmup=self.refine_warmup, every=self.refine_every, dashboard_path=str(page) if page else None
        )
        return TrainingRun(config, refinement)


def latest_index(shards_dir: str | Path = layout.DEFAULT.shards) -> str:
    """The index.json of the newest export (highest label version) under `shards_dir`."""
    indexes = sorted(Path(shards_dir).glob("v*/index.json"), key=lambda path: int(path.parent.name[1:]))
    if not indexes:
        raise FileNotFoundError(f"no export under {shards_dir} (expected v<version>/index.json): run export-shards")
    return str(indexes[-1])


def run_step(options: TrainOptions, on_log: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Train as `options` say (in `nproc` processes), the steps on a progress bar; `on_log` sees each metrics
    record. The result: TrainResult's fields and the refinement rounds."""
    spec = options.spec()
    with Progress("train", total=spec.train.steps, unit="step") as progress:

        def follow(record: dict) -> None:
            progress.update_to(record["step"], loss=f"{record['loss']:.4f}")
            if on_log is not None:
                on_log(record)

        return train(spec, options.nproc, on_log=follow)


def train_or_reuse(spec: TrainingRun) -> tuple[dict[str, Any], float | None]:
    """`run(spec)` unless its folder holds a finished run of as many steps of the network the spec names
    (a study's cached network; one of an older definition of the size is trained again).

    Keeps the caller's torch thread count (a recipe may train on one thread; what runs after it should not).
    Returns:
        the run's result, and the seconds it trained (None: reused).
    """
    result_path = Path(spec.train.out_dir) / RESULT_FILE
    if result_path.is_file():
        result = json.loads(result_path.read_text())
        state = torch.load(result["checkpoint"], map_location="cpu", weights_only=True)
        current = network_config(spec.train.size, spec.train.pose_target)
        if result["step"] >= spec.train.steps and state.get("network") == current.to_dict():
            return result, None
    threads, started = torch.get_num_threads(), time.perf_counter()
    try:
        result = run(spec)
    finally:
        torch.set_num_threads(threads)
    return result, time.perf_counter() - started


def dashboard_config(refine: RefineConfig) -> DashboardConfig:
    """The dashboard of the refined table; its gallery and truth from the first refined dataset's folder."""
    name, folder = next(iter(refine.dataset_dirs.items()), (None, None))
    return DashboardConfig(refine.table_uri, folder, refine.models_root, dataset=name or "synth", run="training")


def launch(
    spec: TrainingRun, nproc: int, on_log: Callable[[dict], None] | None = None, poll_s: float = 1.0
) -> dict[str, Any]:
    """Train in `nproc` processes under torchrun; `on_log` sees each new metrics record as it is written.

    Raises RuntimeError with the tail of the processes' log if the run fails.
    """
    out_dir = Path(spec.train.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_file, result_file, log_file = out_dir / RUN_FILE, out_dir / RESULT_FILE, out_dir / "torchrun.log"
    write_json(run_file, to_dict(spec))
    result_file.unlink(missing_ok=True)
    metrics = MetricsFollower(out_dir / "metrics.jsonl")
    with log_file.open("a") as log:
        process = distributed.launch(nproc, __name__, [str(run_file)], stdout=log, stderr=subprocess.STDOUT)
        while process.poll() is None:
            time.sleep(poll_s)
            metrics.follow(on_log)
    metrics.follow(on_log)
    if process.returncode != 0 or not result_file.exists():
        tail = log_file.read_text()[-4000:]
        raise RuntimeError(f"torchrun with {nproc} processes exited with {process.returncode}; its log ends:\n{tail}")
    return json.loads(result_file.read_text())


class MetricsFollower:
    """Reads the records appended to a metrics.jsonl since the last call (complete lines only)."""

    def __init__(self, path: Path):
        self.path, self.offset = path, path.stat().st_size if path.exists() else 0

    def follow(self, on_record: Callable[[dict], None] | None) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.splitlines():
            if on_record is not None and line.strip():
                on_record(json.loads(line))


# ------------------------------------------------------------------------------ the run file (JSON)
def to_dict(spec: Any) -> Any:
    """A dataclass (nested dataclasses, tuples, mappings) as JSON-able data; `from_dict` reads it back."""
    return json.loads(json.dumps(asdict(spec)))


def from_dict(cls: Any, data: Any) -> Any:
    """`data` (as `to_dict` wrote it) as an instance of the type `cls`, recursing through its fields' types."""
    origin, arguments = typing.get_origin(cls), typing.get_args(cls)
    if dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        return cls(**{f.name: from_dict(hints[f.name], data[f.name]) for f in dataclasses.fields(cls) if f.init})
    if origin in (typing.Union, types.UnionType):
        if data is None:
            return None
        return from_dict(next(a for a in arguments if a is not type(None)), data)
    if origin is tuple:
        item = arguments[0]
        return tuple(from_dict(item, value) for value in data)
    if origin in (dict, Mapping):
        return {key: from_dict(arguments[1], value) for key, value in data.items()}
    return data


def write_json(path: Path, data: Any) -> None:
    """Write atomically: readers polling the file never see half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """torchrun's entry point: `python -m hsmr_data.train_run RUN_DIR/run.json` in every rank."""
    run_file = Path((argv if argv is not None else sys.argv[1:])[0])
    spec = from_dict(TrainingRun, json.loads(run_file.read_text()))
    try:
        run(spec)
    finally:
        distributed.leave()
    return 0


if __name__ == "__main__":
    sys.exit(main())
