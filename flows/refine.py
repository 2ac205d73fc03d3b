"""The `refine-round` flow: one SKELify refinement round of the label table on a training run's latest predictions.

Thin wiring around `hsmr_data.refine`: the round runs as one retried task (retrying is safe: the commit
is one idempotent Delta transaction, and a round that already committed these predictions is
recognised and skipped), then a table and a markdown artifact of the round's statistics.

    python -m flows.refine      # the demo's paths: storage/runs/hsmr-tiny/predictions.parquet, storage/labels/synth
    python -m flows.refine --predictions RUN/predictions.parquet --table URI --dataset-dir DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.dashboard import live_page
from flows.settings import artifact_key
from hsmr_data import refine
from hsmr_data.layout import DEFAULT as STORAGE
from hsmr_data.refine import RefineConfig, Refiner, RoundResult
from hsmr_model.skelify import REFINER_STAGES, SkelifyConfig

FLOW_NAME = "refine-round"
DEFAULT_PREDICTIONS = STORAGE.run_predictions()  # the train-hsmr flow's default run
DEFAULT_TABLE = STORAGE.table()
DEFAULT_DATASET_DIR = STORAGE.dataset()


def refine_config(
    table_uri: str = DEFAULT_TABLE,
    dataset_dir: str = DEFAULT_DATASET_DIR,
    dataset: str = "synth",
    models_root: str = STORAGE.models,
    device: str = "auto",
    batch_size: int = 256,
    latest: int = RefineConfig.latest,
    max_abs_beta: float = RefineConfig.max_abs_beta,
    keep_passing: bool = RefineConfig.keep_passing,
    steps: int = REFINER_STAGES[0].steps,
    max_iter: int = SkelifyConfig.max_iter,
) -> RefineConfig:
    """The library's configuration from plain (JSON-able) parameters: HSMR's refiner, `steps` LBFGS steps of
    at most `max_iter` iterations (10 and 20 in the paper; fewer for a quick look on a CPU)."""
    return RefineConfig(
        table_uri=str(table_uri),
        dataset_dirs={dataset: str(dataset_dir)},
        models_root=str(models_root),
        latest=latest,
        max_abs_beta=max_abs_beta,
        keep_passing=keep_passing,
        skelify=SkelifyConfig(
            stages=(replace(REFINER_STAGES[0], steps=steps),), max_iter=max_iter, batch_size=batch_size, device=device
        ),
    )


def load_predictions(path: str):
    """A training run's predictions, or a FileNotFoundError that says where they come from."""
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"no predictions at {path}: a training run (hsmr_data.training.Trainer) writes predictions.parquet "
            "into its out_dir at every checkpoint"
        )
    return refine.read_predictions(path)


# NO_CACHE: the table and the round's statistics file, not Prefect's result store, say what is done.
@task(name="skelify-round", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE, persist_result=False)
def run_round(refiner: Refiner, predictions: str, round: int | None) -> RoundResult:
    return refine.refine_round(refiner, load_predictions(predictions), round)


@flow(name=FLOW_NAME, persist_result=False)
def refine_round_flow(
    predictions: str = DEFAULT_PREDICTIONS,
    table_uri: str = DEFAULT_TABLE,
    dataset_dir: str = DEFAULT_DATASET_DIR,
    dataset: str = "synth",
    models_root: str = STORAGE.models,
    device: str = "auto",
    batch_size: int = 256,
    latest: int = RefineConfig.latest,
    max_abs_beta: float = RefineConfig.max_abs_beta,
    keep_passing: bool = RefineConfig.keep_passing,
    steps: int = REFINER_STAGES[0].steps,
    max_iter: int = SkelifyConfig.max_iter,
    round: int | None = None,
    dashboard: bool = True,
    dashboard_path: str | None = None,
) -> dict[str, Any]:
    """Refine the labels of `table_uri` with SKELify from the latest `latest` predictions; `round` None: the next.

    With `dashboard`, a committed round rewrites the label dashboard (`dashboard_path`, by default
    `{table_uri}-dashboard.html`). Returns the round, its status ("committed" or "skipped"), where its
    statistics are, and the statistics.
    """
    config = refine_config(
        table_uri,
        dataset_dir,
        dataset,
        models_root,
        device,
        batch_size,
        latest,
        max_abs_beta,
        keep_passing,
        steps,
        max_iter,
    )
    logger = get_run_logger()
    refiner = Refiner(config)  # the body models, loaded once
    logger.info("refining %s from %s on %s", config.table_uri, predictions, refiner.device)
    result = run_round(refiner, predictions, round)
    report = {"round": result.round, "status": result.status, "stats_path": result.stats_path, "stats": result.stats}
    publish_round(config, report)
    page = live_page(FLOW_NAME, table_uri, dataset_dir, models_root, dashboard_path) if dashboard else None
    if page is not None and result.status == "committed":
        page.finish()
    return report


def publish_round(config: RefineConfig, report: dict[str, Any]) -> None:
    """A table artifact (one row per dataset and one for all) and a markdown summary of the round."""
    stats = report["stats"]
    groups = {"all": stats["all"], **stats["per_dataset"]}
    rows = [{"dataset": name, **values} for name, values in groups.items()]
    key = artifact_key("refine", config.table_uri)
    create_table_artifact(rows, key=f"{key}-round-stats", description=f"refinement round {report['round']}")
    overall = stats["all"]
    lines = [
        f"# {FLOW_NAME} {report['round']}: `{config.table_uri}` ({report['status']})",
        f"- predictions refined: {overall['samples']} of {stats['predictions']} "
        f"(no label row: {stats['no_label']}, no source sample: {stats['no_source']})",
        f"- improved: {overall['improved']}, replaced: {overall['replaced']} "
        f"(rejected for |beta| >= {stats['max_abs_beta']:g}: {overall['rejected_betas']}, "
        f"for failing the filters: {overall['rejected_filters']})",
        f"- mean kp2d_err: {overall['kp2d_err_mean_before']} before, {overall['kp2d_err_mean_after']} after",
        f"- passing the filters: {overall['passed_before']} before, {overall['passed_after']} after",
        f"- SKELify: {stats['samples_per_second']} samples/s on {stats['device']}",
        f"- statistics: `{report['stats_path']}`",
    ]
    create_markdown_artifact("\n".join(lines), key=f"{key}-round-summary", description="refinement round summary")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.refine", description=__doc__.split("\n\n")[0])
    parser.add_argument("--predictions", default=DEFAULT_PREDICTIONS, help="a training run's predictions.parquet")
    parser.add_argument("--table", default=DEFAULT_TABLE, help="label table URI")
    parser.add_argument("--dataset-dir", default=DEFAULT_DATASET_DIR, help="the source dataset (shards/*.tar)")
    parser.add_argument("--dataset", default="synth", help="the dataset name in the predictions and the table")
    parser.add_argument("--models", default=STORAGE.models, help="body models in the standard layout")
    parser.add_argument("--device", default="auto", help='"auto" (CUDA when present), "cpu", "cuda:1", ...')
    parser.add_argument("--batch-size", type=int, default=256, help="samples per LBFGS problem")
    parser.add_argument("--latest", type=int, default=RefineConfig.latest, help="refine the latest M predictions")
    parser.add_argument("--max-abs-beta", type=float, default=RefineConfig.max_abs_beta)
    parser.add_argument(
        "--keep-passing",
        action=argparse.BooleanOptionalAction,
        default=RefineConfig.keep_passing,
        help="never replace a label that passes the filters by one that fails them",
    )
    parser.add_argument("--steps", type=int, default=REFINER_STAGES[0].steps, help="LBFGS steps (the paper's 10)")
    parser.add_argument("--max-iter", type=int, default=SkelifyConfig.max_iter, help="iterations per LBFGS step")
    parser.add_argument("--round", type=int, help="the round to commit (default: the next one)")
    args = parser.parse_args(argv)
    report = refine_round_flow(
        predictions=args.predictions,
        table_uri=args.table,
        dataset_dir=args.dataset_dir,
        dataset=args.dataset,
        models_root=args.models,
        device=args.device,
        batch_size=args.batch_size,
        latest=args.latest,
        max_abs_beta=args.max_abs_beta,
        keep_passing=args.keep_passing,
        steps=args.steps,
        max_iter=args.max_iter,
        round=args.round,
    )
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    from flows.settings import local_prefect_settings

    with local_prefect_settings():
        sys.exit(main())
