"""The `label-dashboard` flow: the label-quality page of a label table, and its numbers as artifacts.

Thin wiring around `hsmr_data.dashboard.run` (the front door `hsmr dashboard` calls too): write the
self-contained HTML page (open it in any browser, no server needed), then a table artifact (one row per
dataset and round) and a markdown artifact with the same numbers and where the page is. The flow's
parameter is `hsmr_data.dashboard.DashboardConfig`; its default is the demo's paths, so

    make dashboard                 # = python -m flows.dashboard
    python -m flows.dashboard --table URI --dataset-dir DIR --out PAGE.html
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from flows.settings import artifact_key
from hsmr_data import dashboard
from hsmr_data.dashboard import DEMO, WRITER_FIELDS, DashboardConfig, LiveDashboard, page_next_to, summary_markdown
from hsmr_data.options import add_options, options_from_args

FLOW_NAME = "label-dashboard"


@flow(name=FLOW_NAME, persist_result=False)
def label_dashboard(config: DashboardConfig = DEMO) -> dict[str, Any]:
    """Write the dashboard of `config.table_uri` to `config.out_path`; `dataset_dir` (shards, truth) adds the
    gallery and the error against the truth, None or "" leaves them out. Returns the page's path and the
    summary."""
    page, summary = dashboard.run(config)
    get_run_logger().info("label dashboard of %s: %s", config.table_uri, page.resolve())
    publish(summary, page)
    return {"page": str(page.resolve()), **summary}


def publish(summary: dict[str, Any], page: Path) -> None:
    """A table artifact (a row per dataset and round) and a markdown one, keyed by the table's name."""
    key = artifact_key("label-dashboard", summary["table_uri"])
    rows = [
        {"dataset": dataset, "round": k, **stats, **data["replacements"].get(k, {})}
        for dataset, data in summary["datasets"].items()
        for k, stats in data["rounds"].items()
    ]
    create_table_artifact(rows, key=f"{key}-rounds", description=f"label quality per round of {summary['table_uri']}")
    markdown = summary_markdown(summary) + f"\nThe page (open it in a browser): `{page.resolve()}`\n"
    create_markdown_artifact(markdown, key=key, description="label-quality dashboard")
    link_page(page, summary["table_uri"])


def live_page(
    flow_name: str, table_uri: str, dataset_dir: str | None, models_root: str, page_path: str | None = None
) -> LiveDashboard | None:
    """The dashboard a flow keeps current while it commits to `table_uri`: at `page_path`, or next to a
    local table (`page_next_to`); None where there is nowhere to write (a remote table, no path given).
    The flow run links the page in the UI."""
    from prefect.runtime import flow_run

    page = Path(page_path) if page_path else page_next_to(table_uri)
    if page is None:
        return None
    config = DashboardConfig(table_uri, dataset_dir or None, models_root, run=f"{flow_name} run '{flow_run.name}'")
    link_page(page, table_uri)
    return LiveDashboard(config, page)


def link_page(page: Path, table_uri: str) -> None:
    """A link artifact to the dashboard page, from every flow run that writes or rewrites it."""
    create_link_artifact(
        page.resolve().as_uri(),
        link_text=f"label dashboard of {table_uri}",
        key=artifact_key("dashboard-link", table_uri),
        description="the label-quality page (a local file: open it from the machine that ran the flow)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.dashboard", description=__doc__.split("\n\n")[0])
    add_options(parser, DashboardConfig, skip=WRITER_FIELDS, defaults=DEMO)
    result = label_dashboard(options_from_args(DashboardConfig, parser.parse_args(argv), DEMO, WRITER_FIELDS))
    print(json.dumps({"page": result["page"], "rounds": result["rounds"]}))
    return 0


if __name__ == "__main__":
    from flows.settings import local_prefect_settings

    with local_prefect_settings():
        sys.exit(main())
