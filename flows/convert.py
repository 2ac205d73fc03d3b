"""The `convert-smpl-to-skel` flow: SMPL pseudo-GT → SKEL labels (round 0) in the label table.

Thin wiring around `hsmr_data.conversion`: one task per shard URL (chunk) of every dataset, retried on
failure, a progress artifact updated as chunks finish, and a table and markdown summary of label
quality at the end. Resuming needs no Prefect caching: each chunk is committed to the Delta table in
one transaction named after its dataset and URL, and `convert_chunk` skips chunks the table already
records, so a rerun after a crash does only the missing chunks and can never serve a stale label.

    python -m flows.convert --dataset-dir storage/datasets/synth --table storage/labels/synth
    python -m flows.convert --dataset 'coco=/data/coco-train-2014-pruned/{000000..000017}.tar' \
        --dataset 'mpii=pipe:cat /data/mpii/{000000..000009}.tar' --table storage/labels/hmr2
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from tqdm import tqdm

from flows.dashboard import live_page
from flows.settings import artifact_key
from hsmr_data import conversion, label_table
from hsmr_data.cli import add_dataset_arguments, dataset_arguments
from hsmr_data.conversion import Chunk, ChunkOutcome, ConvertConfig, Converter
from hsmr_data.datasets import parse_datasets
from hsmr_data.filters import FilterConfig
from hsmr_data.layout import DEFAULT as STORAGE
from hsmr_model.skel_fit import SkelFitConfig

FLOW_NAME = "convert-smpl-to-skel"


def convert_config(
    dataset_dir: str | None,
    table_uri: str,
    models_root: str = STORAGE.models,
    dataset: str = "synth",
    device: str = "auto",
    batch_size: int | None = None,
    max_pve_max: float = FilterConfig.max_pve_max,
    max_abs_beta: float = FilterConfig.max_abs_beta,
    min_keypoints: int = FilterConfig.min_keypoints,
    keypoint_conf_floor: float = FilterConfig.keypoint_conf_floor,
    datasets: list[str] | None = None,
    quarantine_root: str | None = None,
) -> ConvertConfig:
    """The library's configuration from the flow's plain (JSON-able) parameters."""
    return ConvertConfig(
        dataset_dir=str(dataset_dir) if dataset_dir else None,
        table_uri=str(table_uri),
        models_root=str(models_root),
        dataset=dataset,
        fit=SkelFitConfig(device=device, batch_size=batch_size),
        filters=FilterConfig(
            max_pve_max=max_pve_max,
            max_abs_beta=max_abs_beta,
            min_keypoints=min_keypoints,
            keypoint_conf_floor=keypoint_conf_floor,
        ),
        datasets=tuple(parse_datasets(datasets or [])),
        quarantine_root=quarantine_root,
    )


# Retrying is safe because a chunk commits in one idempotent transaction: a retry after a commit
# that did land is a skip. NO_CACHE: the table, not Prefect's result store, says what is done.
@task(
    name="convert-chunk",
    task_run_name="convert-{chunk.label}",
    retries=2,
    retry_delay_seconds=2,
    cache_policy=NO_CACHE,
    persist_result=False,
)
def convert_chunk(converter: Converter, chunk: Chunk) -> ChunkOutcome:
    return conversion.convert_chunk(converter, chunk)


@flow(name=FLOW_NAME, task_runner=ThreadPoolTaskRunner(max_workers=1), persist_result=False)
def convert_smpl_to_skel(
    dataset_dir: str | None = None,
    table_uri: str = STORAGE.table(),
    models_root: str = STORAGE.models,
    dataset: str = "synth",
    device: str = "auto",
    batch_size: int | None = None,
    max_pve_max: float = FilterConfig.max_pve_max,
    max_abs_beta: float = FilterConfig.max_abs_beta,
    min_keypoints: int = FilterConfig.min_keypoints,
    keypoint_conf_floor: float = FilterConfig.keypoint_conf_floor,
    datasets: list[str] | None = None,
    quarantine_root: str | None = None,
    dashboard: bool = True,
    dashboard_path: str | None = None,
) -> dict[str, Any]:
    """Convert every shard of the datasets into round-0 labels in the table at `table_uri`.

    With `dashboard`, the label dashboard (`dashboard_path`, by default `{table_uri}-dashboard.html`)
    is rewritten as chunks commit (a live page that reloads itself) and once more at the end.

    The datasets: `dataset_dir` (a folder holding shards/*.tar, or any SPEC) named `dataset`, and
    `datasets`, a list of `NAME=SPEC` (brace patterns, directories, file:, pipe:, http(s), fsspec
    URLs; see `hsmr_data.datasets`). Returns the run report: the table's URI and version, chunk
    counts by outcome, samples quarantined (in all and per dataset) and the label-quality summary
    of the whole table (`conversion.summarize`).
    """
    config = convert_config(
        dataset_dir=dataset_dir,
        table_uri=table_uri,
        models_root=models_root,
        dataset=dataset,
        device=device,
        batch_size=batch_size,
        max_pve_max=max_pve_max,
        max_abs_beta=max_abs_beta,
        min_keypoints=min_keypoints,
        keypoint_conf_floor=keypoint_conf_floor,
        datasets=datasets,
        quarantine_root=quarantine_root,
    )
    logger = get_run_logger()
    chunks = conversion.list_chunks(config)
    names = ", ".join(str(spec) for spec in config.specs)
    label_table.create_or_open(config.table_uri)  # once, before the tasks race to create it
    converter = Converter(config)  # the body models, loaded once and shared by every task
    logger.info("%s → %s on %s, chunks: %d", names, config.table_uri, converter.device, len(chunks))

    page = live_page(FLOW_NAME, config.table_uri, dataset_dir, models_root, dashboard_path) if dashboard else None
    progress = create_progress_artifact(0.0, description=f"chunks of {names} converted")
    futures = {convert_chunk.submit(converter, chunk): chunk for chunk in chunks}
    outcomes: list[ChunkOutcome] = []
    failed: dict[str, str] = {}
    with tqdm(total=len(chunks), unit="chunk", desc=FLOW_NAME) as bar:
        for future in as_completed(list(futures)):
            try:
                outcomes.append(future.result())
            except Exception as error:  # every chunk gets its chance before the run fails
                failed[futures[future].id] = repr(error)
            else:
                if page is not None and outcomes[-1].status == "committed":
                    page.update()
            bar.update(1)
            update_progress_artifact(progress, 100.0 * bar.n / len(chunks))

    report = run_report(config, outcomes, failed)
    publish_summary(config, report)
    if page is not None and report["summary"]["samples"]:
        page.finish()
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(chunks)} chunks failed after retries: {failed}")
    return report


def run_report(config: ConvertConfig, outcomes: list[ChunkOutcome], failed: dict[str, str]) -> dict[str, Any]:
    """What a run did and the quality of the whole table after it."""
    labels = label_table.read_labels(config.table_uri)
    statuses = Counter(outcome.status for outcome in outcomes)
    return {
        "table_uri": config.table_uri,
        "table_version": label_table.history(config.table_uri)[-1]["version"],
        "chunks": {status: statuses[status] for status in ("committed", "skipped", "empty")} | {"failed": len(failed)},
        "quarantined": sum(outcome.quarantined for outcome in outcomes),
        "quarantined_by_dataset": conversion.quarantined_by_dataset(outcomes),
        "summary": conversion.summarize(labels),
    }


def publish_summary(config: ConvertConfig, report: dict[str, Any]) -> None:
    """A table artifact (counts per rule, PVE percentiles) and a markdown one, keyed by dataset."""
    summary, filters = report["summary"], config.filters
    # The summary's keys, as a reader of the UI wants them; PVE percentiles keep their names.
    rule_names = {
        "rejected_pve_max": f"rejected: maxPVE > {filters.max_pve_max * 100:g} cm",
        "rejected_betas": f"rejected: any |beta| > {filters.max_abs_beta:g}",
        "rejected_keypoints": f"rejected: < {filters.min_keypoints} keypoints, conf >= {filters.keypoint_conf_floor:g}",
    }
    rows = [
        {"measure": rule_names.get(name, name.replace("_", " ")), "value": value} for name, value in summary.items()
    ]
    key = artifact_key("convert", "+".join(spec.name for spec in config.specs))
    create_table_artifact(rows, key=f"{key}-label-quality", description=f"label quality of {config.table_uri}")

    chunks = ", ".join(f"{count} {status}" for status, count in report["chunks"].items() if count)
    lines = [
        f"# {FLOW_NAME}: {', '.join(spec.name for spec in config.specs)}",
        f"- table: `{config.table_uri}` (Delta version {report['table_version']})",
        f"- chunks this run: {chunks or 'none'}; samples quarantined: {report['quarantined']} "
        f"({', '.join(f'{name}: {count}' for name, count in report['quarantined_by_dataset'].items()) or 'none'})",
        f"- labels: {summary['samples']}, passed every filter: {summary['passed']}",
        "",
        "| measure | value |",
        "| --- | --- |",
        *(f"| {row['measure']} | {row['value']} |" for row in rows),
        "",
        f"Read it without project code: `deltalake.DeltaTable('{config.table_uri}').to_pandas()`.",
    ]
    create_markdown_artifact("\n".join(lines), key=f"{key}-conversion", description="conversion summary")


def build_task_runner(
    runner: str = "threads",
    max_workers: int = 1,
    dask_address: str | None = None,
    dask_cluster_class: str | None = None,
    dask_cluster_kwargs: dict[str, Any] | None = None,
):
    """Threads (the default; 1 worker, since torch already uses every core), or Dask.

    Dask: `dask_address` of a running scheduler, or a cluster started for the run: a local one, or
    `dask_cluster_class` such as "dask_jobqueue.SLURMCluster" with its `dask_cluster_kwargs`. A task
    carries the conversion's configuration only; each worker process loads the body models once.
    """
    if runner == "threads":
        return ThreadPoolTaskRunner(max_workers=max_workers)
    if runner != "dask":
        raise ValueError(f"runner must be 'threads' or 'dask', got {runner!r}")
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as error:
        raise RuntimeError(
            "runner='dask' needs the prefect-dask package: pip install prefect-dask "
            "(plus dask-jobqueue for a SLURM cluster class)"
        ) from error
    if dask_address:
        return DaskTaskRunner(address=dask_address)
    if dask_cluster_class is None and dask_cluster_kwargs is None:
        dask_cluster_kwargs = {"n_workers": max_workers, "threads_per_worker": 1}
    return DaskTaskRunner(cluster_class=dask_cluster_class, cluster_kwargs=dask_cluster_kwargs or {})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.convert", description=__doc__.split("\n\n")[0])
    add_dataset_arguments(parser)
    parser.add_argument("--table", required=True, help="label table URI (a folder or any URI deltalake opens)")
    parser.add_argument("--models", default=STORAGE.models, help="body models in the standard layout")
    parser.add_argument("--device", default="auto", help='"auto", "cpu", "cuda", "cuda:1", ...')
    parser.add_argument("--batch-size", type=int, help="fitting batch (default: 256 on the CPU, by memory on CUDA)")
    parser.add_argument("--runner", choices=("threads", "dask"), default="threads")
    parser.add_argument("--max-workers", type=int, default=1, help="threads, or local Dask workers")
    parser.add_argument("--dask-address", help="a running Dask scheduler, e.g. tcp://head:8786")
    parser.add_argument("--dask-cluster-class", help='e.g. "dask_jobqueue.SLURMCluster"')
    parser.add_argument("--dask-cluster-kwargs", type=json.loads, help="JSON object for the cluster class")
    args = parser.parse_args(argv)

    task_runner = build_task_runner(
        args.runner, args.max_workers, args.dask_address, args.dask_cluster_class, args.dask_cluster_kwargs
    )
    dataset_dir, datasets = dataset_arguments(args)
    report = convert_smpl_to_skel.with_options(task_runner=task_runner)(
        dataset_dir=dataset_dir,
        table_uri=args.table,
        models_root=args.models,
        dataset=args.dataset_name,
        device=args.device,
        batch_size=args.batch_size,
        datasets=datasets,
        quarantine_root=args.quarantine,
    )
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    from flows.settings import local_prefect_settings

    with local_prefect_settings():
        sys.exit(main())
