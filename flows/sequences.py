"""The `convert-sequences` flow: SMPL motion sequences (AMASS-style .npz) → SKEL sequences.

Thin wiring around `hsmr_data.sequences.run` (the front door `hsmr convert-seq` calls too), whose loop
takes this flow's runner: one task per sequence file, retried on failure. The library's progress helper
shows the files as a progress artifact; the flow adds a table of per-sequence quality at the end. The
flow's parameter is `hsmr_data.sequences.SequenceOptions`. Resuming needs no Prefect
caching: a sequence's SKEL .npz is written last and atomically (after its label-table rows, when a
table is given), and a file whose output exists is skipped, so a rerun does only what is missing.

    python -m flows.sequences --input storage/datasets/motion/sequences --out storage/skel_sequences
    prefect deployment run convert-sequences/local \
        -p config='{"input_path": "storage/datasets/motion/sequences", "out_dir": "storage/skel_sequences"}'
"""

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.runners import as_finished
from flows.settings import artifact_key
from hsmr_data import sequences
from hsmr_data.options import add_options, options_from_args
from hsmr_data.sequences import SequenceConverter, SequenceOptions, SequenceOutcome

FLOW_NAME = "convert-sequences"


@task(
    name="convert-sequence",
    task_run_name="convert-{path.stem}",
    retries=2,
    retry_delay_seconds=2,
    cache_policy=NO_CACHE,
    persist_result=False,
)
def convert_sequence(converter: SequenceConverter, path: Path, options: SequenceOptions) -> SequenceOutcome:
    return options.convert_file(converter, path)


def run_as_tasks(
    converter: SequenceConverter, files: list[Path], options: SequenceOptions
) -> Iterator[tuple[Path, SequenceOutcome | Exception]]:
    """The flow's runner: one task per sequence file, yielded as they finish."""
    return as_finished({convert_sequence.submit(converter, path, options): path for path in files})


@flow(name=FLOW_NAME, task_runner=ThreadPoolTaskRunner(max_workers=1), persist_result=False)
def convert_sequences(config: SequenceOptions) -> dict[str, Any]:
    """Convert every .npz under `config.input_path` (a file or a folder) into `config.out_dir`; with
    `table_uri`, each frame also becomes a label-table row. Returns the outcome per sequence and the counts
    by status."""
    report = asdict(sequences.run(config, run_files=run_as_tasks))
    publish_summary(config.dataset, report)
    if report["failed"]:
        raise RuntimeError(f"{len(report['failed'])} sequences failed after retries: {report['failed']}")
    return report


def publish_summary(dataset: str, report: dict[str, Any]) -> None:
    """A table artifact with one row per sequence, and a markdown summary."""
    key = artifact_key("sequences", dataset)
    create_table_artifact(report["outcomes"], key=f"{key}-quality", description="per-sequence conversion quality")
    counts = ", ".join(f"{count} {status}" for status, count in report["sequences"].items() if count)
    lines = [f"# {FLOW_NAME}: {dataset}", f"- output: `{report['out_dir']}`", f"- sequences: {counts or 'none'}"]
    create_markdown_artifact("\n".join(lines), key=f"{key}-summary", description="sequence conversion summary")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.sequences", description=__doc__.split("\n\n")[0])
    add_options(parser, SequenceOptions)
    print(json.dumps(convert_sequences(options_from_args(SequenceOptions, parser.parse_args(argv))), indent=2))
    return 0


if __name__ == "__main__":
    from flows.settings import local_prefect_settings

    with local_prefect_settings():
        sys.exit(main())
