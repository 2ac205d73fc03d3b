"""The `export-shards` flow: training shards from one version of the label table.

Thin wiring around `hsmr_data.export.run` (the front door `hsmr export` calls too; resumable per shard,
the wids index written last), plus a table artifact of what went in and what was left out, per dataset.
The flow's parameter is `hsmr_data.export.ExportConfig`:

    python -m flows.export                       # the demo's table and dataset
    python -m flows.export --table URI --dataset synth=DIR --out storage/shards
"""

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.settings import artifact_key
from hsmr_data import export
from hsmr_data.export import ExportConfig
from hsmr_data.options import add_options, options_from_args

FLOW_NAME = "export-shards"
DEMO = ExportConfig()  # the demo's table and dataset into storage/shards


@flow(name=FLOW_NAME, persist_result=False)
def export_shards(config: ExportConfig = DEMO) -> dict[str, Any]:
    """Export the labels of `config.table_uri` (its latest version unless `version`) with the datasets'
    images. Returns the export summary: the index path (what training reads), the shards, counts per dataset.
    """
    summary = export.run(config)
    report = json.loads(json.dumps(asdict(summary), default=str))
    get_run_logger().info(
        "label version %s → %s (%d shards)", summary.label_version, summary.index, len(summary.shards)
    )
    rows = [{"dataset": name, **counts} for name, counts in report["counts"].items()]
    key = artifact_key("export", config.table_uri)
    create_table_artifact(rows, key=key, description=f"shards in {summary.index}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.export", description=__doc__.split("\n\n")[0])
    add_options(parser, ExportConfig)
    print(json.dumps(export_shards(options_from_args(ExportConfig, parser.parse_args(argv))), indent=2))
    return 0


if __name__ == "__main__":
    from flows.settings import local_prefect_settings

    with local_prefect_settings():
        sys.exit(main())
