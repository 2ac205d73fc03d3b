"""The `train-hsmr` flow: train the HSMR network on exported shards, resuming from the last checkpoint.

Thin wiring around `hsmr_data.train_run`: a progress artifact as steps go by, the loss curve and
throughput as a table artifact at the end. A run started again on the same out_dir continues from its
checkpoint (the Trainer's own resume), so retries and restarts never start over. With `nproc` > 1 the
flow launches a DDP run under torchrun (one process per GPU, gloo processes on a CPU) and follows its
metrics for the artifacts.

    python -m flows.train                        # the demo's export, a tiny network on the CPU
    python -m flows.train --index storage/shards/v1/index.json --out storage/runs/tiny --steps 300
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact

from flows.refine import refine_config
from flows.settings import artifact_key
from hsmr_data import train_run
from hsmr_data.cli import add_train_arguments
from hsmr_data.dashboard import page_next_to
from hsmr_data.layout import DEFAULT as STORAGE
from hsmr_data.train_run import InTrainingRefinement, TrainingRun
from hsmr_data.training import make_config

FLOW_NAME = "train-hsmr"
DEFAULT_SHARDS = STORAGE.shards
DEFAULT_OUT = STORAGE.run()


def latest_index(shards_dir: str | Path = DEFAULT_SHARDS) -> str:
    """The index.json of the newest export (highest label version) under `shards_dir`."""
    indexes = sorted(Path(shards_dir).glob("v*/index.json"), key=lambda path: int(path.parent.name[1:]))
    if not indexes:
        raise FileNotFoundError(f"no export under {shards_dir} (expected v<version>/index.json): run export-shards")
    return str(indexes[-1])


@flow(name=FLOW_NAME, persist_result=False)
def train_hsmr(
    indexes: list[str] | None = None,
    out_dir: str = DEFAULT_OUT,
    weights: list[float] | None = None,
    models_root: str = STORAGE.models,
    recipe: str | None = None,
    size: str | None = None,
    pose_target: str | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    checkpoint_every: int | None = None,
    device: str = "auto",
    seed: int = 0,
    loader_workers: int | None = None,
    nproc: int = 1,
    refine_every: int = 0,
    refine_warmup: int = 5000,
    refine_latest: int = 18_000,
    table_uri: str = STORAGE.table(),
    dataset_dir: str = STORAGE.dataset(),
    dashboard_path: str | None = None,
) -> dict[str, Any]:
    """Train on the datasets of `indexes` (default: the latest export) mixed by `weights`, with the
    settings of `recipe` ("paper", "cpu"; None: TrainConfig's defaults) where a parameter is None.

    With `refine_every` > 0, SKELify refines the labels of `table_uri` inside training (HSMR: after
    5000 steps, every 230 steps, on the latest 18,000 predictions) and training reads the new labels;
    each committed round rewrites the label dashboard (`dashboard_path`, default `{table_uri}-dashboard.html`).
    `nproc` > 1: DDP in that many processes; `batch_size` is the global batch, split evenly over them.
    """
    config = make_config(
        recipe,
        indexes=tuple(indexes or [latest_index()]),
        out_dir=out_dir,
        weights=tuple(weights) if weights else None,
        models_root=models_root,
        size=size,
        pose_target=pose_target,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        checkpoint_every=checkpoint_every,
        device=device,
        seed=seed,
        loader_workers=loader_workers,
    )
    refinement = None
    if refine_every > 0:
        refine = refine_config(table_uri, dataset_dir, models_root=models_root, device=device, latest=refine_latest)
        page = dashboard_path or page_next_to(table_uri)  # rewritten after each committed round
        refinement = InTrainingRefinement(
            refine, warmup=refine_warmup, every=refine_every, dashboard_path=str(page) if page else None
        )
    spec = TrainingRun(config, refinement)
    logger = get_run_logger()
    steps = config.steps
    logger.info("training a %s network on %s for %d steps in %d process(es)", config.size, config.indexes, steps, nproc)
    progress = create_progress_artifact(0.0, description=f"{FLOW_NAME} steps done of {steps}")
    curve: list[dict] = []

    def on_log(record: dict) -> None:
        curve.append(record)
        update_progress_artifact(progress, 100.0 * record["step"] / steps)
        logger.info("step %d loss %.4f (%.1f images/s)", record["step"], record["loss"], record["images_per_s"])

    result = train_run.train(spec, nproc, on_log=on_log)
    rows = [{k: round(v, 5) if isinstance(v, float) else v for k, v in record.items()} for record in curve]
    if rows:
        create_table_artifact(rows, key=artifact_key("train", out_dir), description=f"losses of {out_dir}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.train", description=__doc__.split("\n\n")[0])
    add_train_arguments(parser, index_required=False, default_out=DEFAULT_OUT)
    args = parser.parse_args(argv)
    report = train_hsmr(
        indexes=args.index,
        out_dir=args.out,
        weights=args.weight,
        models_root=args.models,
        recipe=args.recipe,
        size=args.size,
        pose_target=args.pose_target,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        checkpoint_every=args.checkpoint_every,
        device=args.device,
        loader_workers=args.loader_workers,
        nproc=args.nproc,
    )
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    from flows.settings import local_prefect_settings

    with local_prefect_settings():
        sys.exit(main())
