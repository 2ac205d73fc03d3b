"""The `export-shards` flow: training shards from one version of the label table.

Thin wiring around `hsmr_data.export.export_shards` (which is resumable per shard and writes the
wids index last), plus a table artifact of what went in and what was left out, per dataset.

    python -m flows.export                       # the demo's table and dataset
    python -m flows.export --table URI --dataset synth=DIR --out storage/shards
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.settings import artifact_key
from hsmr_data.datasets import parse_datasets
from hsmr_data.export import export_hsmr_tars
from hsmr_data.export import export_shards as export_library
from hsmr_data.layout import DEFAULT as STORAGE
from hsmr_data.layout import DEMO_DATASET

FLOW_NAME = "export-shards"
DEFAULT_TABLE = STORAGE.table()
DEFAULT_DATASETS = {DEMO_DATASET: STORAGE.dataset()}
DEFAULT_OUT = STORAGE.shards


@flow(name=FLOW_NAME, persist_result=False)
def export_shards(
    table_uri: str = DEFAULT_TABLE,
    dataset_dirs: dict[str, str] | None = None,
    out_dir: str = DEFAULT_OUT,
    version: int | None = None,
    maxcount: int = 1000,
    maxsize: float = 3e8,
    format: str = "pipeline",
) -> dict[str, Any]:
    """Export the labels of `table_uri` (its latest version unless `version`) with the datasets' images.

    `dataset_dirs`: dataset name → SPEC (a folder holding shards/*.tar, a brace pattern, any URL;
    see `hsmr_data.datasets`). `format`: "pipeline" (this project's training shards) or "hsmr"
    (HMR2.0's tars with HSMR's orig_*/flip_* SKEL labels, what HSMR's own training code reads).
    Returns the export summary: the index path (what training reads), the shards, counts per dataset.
    """
    exporters = {"pipeline": export_library, "hsmr": export_hsmr_tars}
    if format not in exporters:
        raise ValueError(f"format must be one of {sorted(exporters)}, got {format!r}")
    summary = exporters[format](table_uri, dataset_dirs or DEFAULT_DATASETS, out_dir, version, maxcount, maxsize)
    report = json.loads(json.dumps(asdict(summary), default=str))
    get_run_logger().info(
        "label version %s → %s (%d shards)", summary.label_version, summary.index, len(summary.shards)
    )
    rows = [{"dataset": name, **counts} for name, counts in report["counts"].items()]
    create_table_artifact(rows, key=artifact_key("export", table_uri), description=f"shards in {summary.index}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", default=DEFAULT_TABLE, help="label table URI")
    parser.add_argument("--dataset", action="append", help="NAME=SPEC of a source dataset (repeatable)")
    parser.add_argument("--format", choices=("pipeline", "hsmr"), default="pipeline", help="see export_shards")
    parser.add_argument("--out", default=DEFAULT_OUT, help="folder for v{version}/index.json and the shards")
    parser.add_argument("--version", type=int, help="label-table version (default: the latest)")
    parser.add_argument("--maxcount", type=int, default=1000, help="samples per shard at most")
    args = parser.parse_args(argv)
    datasets = {spec.name: spec.spec for spec in parse_datasets(args.dataset)} if args.dataset else None
    report = export_shards(args.table, datasets, args.out, args.version, args.maxcount, format=args.format)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    from flows.settings import local_prefect_settings

    with local_prefect_settings():
        sys.exit(main())
