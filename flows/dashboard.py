"""The `label-dashboard` flow: the label-quality page of a label table, and its numbers as artifacts.

Thin wiring around `hsmr_data.dashboard`: write the self-contained HTML page (open it in any browser,
no server needed), then a table artifact (one row per dataset and round) and a markdown artifact with
the same numbers and where the page is. Defaults are the demo's storage paths, so

    make dashboard                 # = python -m flows.dashboard
    python -m flows.dashboard --table URI --dataset-dir DIR --out PAGE.html
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from flows.settings import artifact_key
from hsmr_data.dashboard import DashboardConfig, LiveDashboard, page_next_to, summary_markdown, write_dashboard
from hsmr_data.layout import DEFAULT as STORAGE

FLOW_NAME = "label-dashboard"
DEFAULT_TABLE = STORAGE.table()
DEFAULT_DATASET_DIR = STORAGE.dataset()
DEFAULT_MODELS = STORAGE.models
DEFAULT_OUT = STORAGE.dashboard


@flow(name=FLOW_NAME, persist_result=False)
def label_dashboard(
    table_uri: str = DEFAULT_TABLE,
    dataset_dir: str | None = DEFAULT_DATASET_DIR,
    models_root: str = DEFAULT_MODELS,
    out_path: str = DEFAULT_OUT,
    gallery_size: int = 8,
) -> dict[str, Any]:
    """Write the dashboard of `table_uri` to `out_path`; `dataset_dir` (shards, truth) adds the gallery and
    the error against the truth, None leaves them out. Returns the page's path and the summary."""
    config = DashboardConfig(table_uri, dataset_dir or None, models_root, gallery_size=gallery_size)
    page, summary = write_dashboard(config, out_path)
    get_run_logger().info("label dashboard of %s: %s", table_uri, page.resolve())
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
    parser.add_argument("--table", default=DEFAULT_TABLE, help="label table URI")
    parser.add_argument("--dataset-dir", default=DEFAULT_DATASET_DIR, help='shards and truth; "" for none')
    parser.add_argument("--models", default=DEFAULT_MODELS, help="body models in the standard layout")
    parser.add_argument("--out", default=DEFAULT_OUT, help="the HTML page to write")
    parser.add_argument("--gallery-size", type=int, default=8)
    args = parser.parse_args(argv)
    result = label_dashboard(args.table, args.dataset_dir or None, args.models, args.out, args.gallery_size)
    print(json.dumps({"page": result["page"], "rounds": result["rounds"]}))
    return 0


if __name__ == "__main__":
    from flows.settings import local_prefect_settings

    with local_prefect_settings():
        sys.exit(main())
