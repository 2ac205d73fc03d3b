"""The `convert-smpl-to-skel` flow: SMPL pseudo-GT → SKEL labels (round 0) in the label table.

Thin wiring around `hsmr_data.conversion.run` (the front door `hsmr convert` calls too), whose loop
takes this flow's chunk runner: one task per shard URL (chunk) of every dataset, retried on failure,
on threads or Dask workers. The library's progress helper shows the chunks as a progress artifact;
the flow adds a table and markdown summary of label quality at the end. The flow's parameter is
`hsmr_data.conversion.ConvertOptions`. Resuming needs no Prefect caching: each chunk is committed to the Delta table in
one transaction named after its dataset and URL, and `convert_chunk` skips chunks the table already
records, so a rerun after a crash does only the missing chunks and can never serve a stale label.

    python -m flows.convert --dataset-dir storage/datasets/synth --table storage/labels/synth
    python -m flows.convert --dataset 'coco=/data/coco-train-2014-pruned/{000000..000017}.tar' \
        --dataset 'mpii=pipe:cat /data/mpii/{000000..000009}.tar' --table storage/labels/hmr2
    prefect deployment run convert-smpl-to-skel/local \
        -p config='{"dataset_dir": "storage/datasets/synth", "table_uri": "storage/labels/synth"}'
"""

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import asdict, replace
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.dashboard import live_page
from flows.runners import as_finished
from flows.settings import artifact_key
from hsmr_data import conversion
from hsmr_data.conversion import Chunk, ChunkOutcome, ConvertConfig, Converter, ConvertOptions, ConvertReport
from hsmr_data.layout import DEFAULT as STORAGE
from hsmr_data.options import add_options, options_from_args

FLOW_NAME = "convert-smpl-to-skel"
DEMO = ConvertOptions(dataset_dir=STORAGE.dataset())  # the demo's dataset and table


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


def run_as_tasks(converter: Converter, chunks: list[Chunk]) -> Iterator[tuple[Chunk, ChunkOutcome | Exception]]:
    """The flow's chunk runner: one task per chunk on the flow's task runner, yielded as they finish."""
    return as_finished({convert_chunk.submit(converter, chunk): chunk for chunk in chunks})


@flow(name=FLOW_NAME, task_runner=ThreadPoolTaskRunner(max_workers=1), persist_result=False)
def convert_smpl_to_skel(
    config: ConvertOptions = DEMO, dashboard: bool = True, dashboard_path: str | None = None
) -> dict[str, Any]:
    """Convert every shard of the datasets of `config` into round-0 labels in the table at `config.table_uri`.

    With `dashboard`, the label dashboard (`dashboard_path`, by default `{table_uri}-dashboard.html`)
    is rewritten as chunks commit (a live page that reloads itself) and once more at the end.
    Returns the run report (`hsmr_data.conversion.ConvertReport`): the table's URI and version, chunk
    counts by outcome, samples quarantined (in all and per dataset) and the label-quality summary of the
    whole table (`conversion.summarize`).
    """
    library = config.config()
    get_run_logger().info("%s → %s", ", ".join(str(spec) for spec in library.specs), library.table_uri)
    page = None
    if dashboard:
        page = live_page(FLOW_NAME, library.table_uri, config.dataset_dir, config.models_root, dashboard_path)

    def on_chunk(outcome: ChunkOutcome) -> None:
        if page is not None and outcome.status == "committed":
            page.update()

    report = conversion.run(config, run_chunks=run_as_tasks, on_chunk=on_chunk)
    publish_summary(library, report)
    if page is not None and report.summary["samples"]:
        page.finish()
    if report.failed:
        total = sum(report.chunks.values())
        raise RuntimeError(f"{len(report.failed)} of {total} chunks failed after retries: {report.failed}")
    return asdict(report)


def publish_summary(config: ConvertConfig, report: ConvertReport) -> None:
    """A table artifact (counts per rule, PVE percentiles) and a markdown one, keyed by dataset."""
    summary, filters = report.summary, config.filters
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

    chunks = ", ".join(f"{count} {status}" for status, count in report.chunks.items() if count)
    by_dataset = ", ".join(f"{name}: {count}" for name, count in report.quarantined_by_dataset.items())
    lines = [
        f"# {FLOW_NAME}: {', '.join(spec.name for spec in config.specs)}",
        f"- table: `{config.table_uri}` (Delta version {report.table_version})",
        f"- chunks this run: {chunks or 'none'}; samples quarantined: {report.quarantined} ({by_dataset or 'none'})",
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
    add_options(parser, ConvertOptions)
    parser.add_argument("--runner", choices=("threads", "dask"), default="threads")
    parser.add_argument("--max-workers", type=int, default=1, help="threads, or local Dask workers")
    parser.add_argument("--dask-address", help="a running Dask scheduler, e.g. tcp://head:8786")
    parser.add_argument("--dask-cluster-class", help='e.g. "dask_jobqueue.SLURMCluster"')
    parser.add_argument("--dask-cluster-kwargs", type=json.loads, help="JSON object for the cluster class")
    args = parser.parse_args(argv)

    task_runner = build_task_runner(
        args.runner, args.max_workers, args.dask_address, args.dask_cluster_class, args.dask_cluster_kwargs
    )
    options = options_from_args(ConvertOptions, args)
    if not options.dataset_dir and not options.datasets:  # no dataset named: the demo's, as the flow's default
        options = replace(options, dataset_dir=DEMO.dataset_dir)
    report = convert_smpl_to_skel.with_options(task_runner=task_runner)(options)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    from flows.settings import local_prefect_settings

    with local_prefect_settings():
        sys.exit(main())
