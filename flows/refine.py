"""The `refine-round` flow: one SKELify refinement round of the label table on a training run's latest predictions.

Thin wiring around `hsmr_data.refine.run` (the front door `hsmr refine` calls too): the round runs as one
retried task (retrying is safe: the commit is one idempotent Delta transaction, and a round that already
committed these predictions is recognised and skipped), then a table and a markdown artifact of the
round's statistics. The flow's one parameter is `hsmr_data.refine.RefineOptions`:

    python -m flows.refine      # the demo's paths: storage/runs/hsmr-demo/predictions.parquet, storage/labels/synth
    python -m flows.refine --predictions RUN/predictions.parquet --table URI --dataset-dir DIR
    prefect deployment run refine-round/local -p config='{"predictions": "RUN/predictions.parquet"}'
"""

import argparse
import json
import sys
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.dashboard import live_page
from flows.settings import artifact_key
from hsmr_data import refine
from hsmr_data.options import add_options, options_from_args
from hsmr_data.refine import RefineOptions, RoundResult

FLOW_NAME = "refine-round"
DEMO = RefineOptions()  # the demo's paths and the paper's refiner


# NO_CACHE: the table and the round's statistics file, not Prefect's result store, say what is done.
@task(name="skelify-round", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE, persist_result=False)
def run_round(config: RefineOptions) -> RoundResult:
    return refine.run(config)


@flow(name=FLOW_NAME, persist_result=False)
def refine_round_flow(
    config: RefineOptions = DEMO, dashboard: bool = True, dashboard_path: str | None = None
) -> dict[str, Any]:
    """Refine the labels of `config.table_uri` with SKELify from the latest `config.latest` predictions.

    With `dashboard`, a committed round rewrites the label dashboard (`dashboard_path`, by default
    `{table_uri}-dashboard.html`). Returns the round, its status ("committed" or "skipped"), where its
    statistics are, and the statistics.
    """
    get_run_logger().info("refining %s from %s", config.table_uri, config.predictions)
    result = run_round(config)
    report = {"round": result.round, "status": result.status, "stats_path": result.stats_path, "stats": result.stats}
    publish_round(config.table_uri, report)
    if dashboard:
        page = live_page(FLOW_NAME, config.table_uri, config.dataset_dir, config.models_root, dashboard_path)
        if page is not None and result.status == "committed":
            page.finish()
    return report


def publish_round(table_uri: str, report: dict[str, Any]) -> None:
    """A table artifact (one row per dataset and one for all) and a markdown summary of the round."""
    stats = report["stats"]
    groups = {"all": stats["all"], **stats["per_dataset"]}
    rows = [{"dataset": name, **values} for name, values in groups.items()]
    key = artifact_key("refine", table_uri)
    create_table_artifact(rows, key=f"{key}-round-stats", description=f"refinement round {report['round']}")
    overall = stats["all"]
    lines = [
        f"# {FLOW_NAME} {report['round']}: `{table_uri}` ({report['status']})",
        f"- predictions refined: {overall['samples']} of {stats['predictions']} "
        f"(no label row: {stats['no_label']}, no source sample: {stats['no_source']})",
        f"- improved by the margin ({stats['min_improvement']:.0%}): {overall['improved']}, replaced: "
        f"{overall['replaced']} (rejected for |beta| >= {stats['max_abs_beta']:g}: {overall['rejected_betas']}, "
        f"too few keypoints: {overall['rejected_keypoints']}, 3D rule: {overall['rejected_3d']})",
        f"- mean kp2d_err: {overall['kp2d_err_mean_before']} before, {overall['kp2d_err_mean_after']} after",
        f"- labels that pass: {overall['passed_before']} before, {overall['passed_after']} after "
        f"({overall['regained']} filtered samples regained one)",
        f"- SKELify: {stats['samples_per_second']} samples/s on {stats['device']}",
        f"- statistics: `{report['stats_path']}`",
    ]
    create_markdown_artifact("\n".join(lines), key=f"{key}-round-summary", description="refinement round summary")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.refine", description=__doc__.split("\n\n")[0])
    add_options(parser, RefineOptions)
    report = refine_round_flow(options_from_args(RefineOptions, parser.parse_args(argv)))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    from flows.settings import local_prefect_settings

    with local_prefect_settings():
        sys.exit(main())
