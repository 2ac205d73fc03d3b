"""The `convert-sequences` flow: SMPL motion sequences (AMASS-style .npz) → SKEL sequences.

Thin wiring around `hsmr_data.sequences`: one task per sequence file, retried on failure; a progress
artifact as files finish and a table of per-sequence quality at the end. Resuming needs no Prefect
caching: a sequence's SKEL .npz is written last and atomically (after its label-table rows, when a
table is given), and a file whose output exists is skipped, so a rerun does only what is missing.

    python -m flows.sequences --input storage/datasets/motion/sequences --out storage/skel_sequences
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import asdict
from pathlib import Path
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

from flows.settings import artifact_key
from hsmr_data import label_table, sequences
from hsmr_data.layout import DEFAULT as STORAGE
from hsmr_data.sequences import SequenceConfig, SequenceConverter, SequenceOutcome
from hsmr_model.model_files import BodyModelPaths
from hsmr_model.skel_fit import SkelFitConfig

FLOW_NAME = "convert-sequences"


@task(
    name="convert-sequence",
    task_run_name="convert-{path.stem}",
    retries=2,
    retry_delay_seconds=2,
    cache_policy=NO_CACHE,
    persist_result=False,
)
def convert_sequence(
    converter: SequenceConverter, path: Path, input_path: str, out_dir: str, table_uri: str | None, dataset: str
) -> SequenceOutcome:
    return sequences.convert_sequence_file(converter, path, input_path, out_dir, table_uri, dataset)


@flow(name=FLOW_NAME, task_runner=ThreadPoolTaskRunner(max_workers=1), persist_result=False)
def convert_sequences(
    input_path: str,
    out_dir: str,
    models_root: str = STORAGE.models,
    table_uri: str | None = None,
    dataset: str = "motion",
    device: str = "auto",
    batch_size: int = SequenceConfig.batch_size,
    overlap: int = SequenceConfig.overlap,
    smoothness: float = SequenceConfig.smoothness,
) -> dict[str, Any]:
    """Convert every .npz under `input_path` (a file or a folder) into `out_dir`; with `table_uri`, each
    frame also becomes a label-table row. Returns the outcome per sequence and the counts by status."""
    config = SequenceConfig(
        batch_size=batch_size, overlap=overlap, smoothness=smoothness, fit=SkelFitConfig(device=device)
    )
    converter = SequenceConverter(BodyModelPaths.from_root(models_root), config)
    files = sequences.list_sequence_files(input_path)
    if table_uri is not None:
        label_table.create_or_open(table_uri)  # once, before the tasks race to create it
    get_run_logger().info("%s → %s on %s, sequences: %d", input_path, out_dir, converter.device, len(files))

    progress = create_progress_artifact(0.0, description=f"sequences of {input_path} converted")
    futures = {
        convert_sequence.submit(converter, path, input_path, out_dir, table_uri, dataset): path for path in files
    }
    outcomes: list[SequenceOutcome] = []
    failed: dict[str, str] = {}
    for done, future in enumerate(as_completed(list(futures)), start=1):
        try:
            outcomes.append(future.result())
        except Exception as error:  # every sequence gets its chance before the run fails
            failed[str(futures[future])] = repr(error)
        update_progress_artifact(progress, 100.0 * done / len(files))
    sequences.write_quarantine(outcomes, out_dir)

    statuses = Counter(outcome.status for outcome in outcomes)
    report = {
        "out_dir": out_dir,
        "sequences": {s: statuses[s] for s in ("converted", "skipped", "quarantined")} | {"failed": len(failed)},
        "outcomes": [asdict(outcome) for outcome in sorted(outcomes, key=lambda o: o.sequence_id)],
    }
    publish_summary(dataset, report)
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(files)} sequences failed after retries: {failed}")
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
    parser.add_argument("--input", required=True, help="a sequence .npz or a folder of them (recursive)")
    parser.add_argument("--out", required=True, help="folder for one SKEL .npz per sequence")
    parser.add_argument("--models", default=STORAGE.models, help="body models in the standard layout")
    parser.add_argument("--table", help="also commit one row per frame to this label table")
    parser.add_argument("--dataset", default="motion", help="dataset name of the table rows")
    parser.add_argument("--device", default="auto", help='"auto", "cpu", "cuda", "cuda:1", ...')
    parser.add_argument("--batch-size", type=int, default=SequenceConfig.batch_size)
    parser.add_argument("--overlap", type=int, default=SequenceConfig.overlap)
    parser.add_argument("--smoothness", type=float, default=SequenceConfig.smoothness)
    args = parser.parse_args(argv)
    report = convert_sequences(
        input_path=args.input,
        out_dir=args.out,
        models_root=args.models,
        table_uri=args.table,
        dataset=args.dataset,
        device=args.device,
        batch_size=args.batch_size,
        overlap=args.overlap,
        smoothness=args.smoothness,
    )
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    from flows.settings import local_prefect_settings

    with local_prefect_settings():
        sys.exit(main())
