"""Kill a real `hsmr convert` process mid-run, run it again, and get the table of an uninterrupted run."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from hsmr_data import label_table
from tests.test_convert_flow import PEOPLE, PER_SHARD, synthetic_dataset

CHUNKS = PEOPLE // PER_SHARD  # commits seconds apart: the kill lands between two of them
STARTUP_LIMIT_S = 240


@pytest.fixture(scope="module")
def dataset_dir(model_paths, tmp_path_factory):
    return synthetic_dataset(model_paths, tmp_path_factory)


def convert_command(dataset_dir: Path, table: Path, models_root: Path) -> list[str]:
    return [sys.executable, "-m", "hsmr_data.cli", "convert",
            "--dataset-dir", str(dataset_dir), "--table", str(table), "--models", str(models_root)]  # fmt: skip


def committed_versions(table: Path) -> int:
    """Delta versions in the log (a version's JSON appears atomically; temp files are named otherwise)."""
    return len(list((table / "_delta_log").glob("[0-9]*.json")))


def without_timings(labels: pa.Table) -> pa.Table:
    return labels.drop_columns(["fit_seconds"]).sort_by("sample_id")


@pytest.mark.slow
def test_killed_conversion_resumes_to_the_uninterrupted_table(dataset_dir, model_paths, tmp_path):
    models_root = model_paths.smpl.parent.parent
    table = tmp_path / "resumed"
    command = convert_command(dataset_dir, table, models_root)

    # Version 0 creates the table, each chunk adds one: kill after the first chunk, before the last.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + STARTUP_LIMIT_S
    try:
        while committed_versions(table) < 2:
            if process.poll() is not None:
                out, err = process.communicate()
                pytest.fail(f"hsmr convert exited (rc {process.returncode}) before its first chunk:\n{out}\n{err}")
            if time.monotonic() > deadline:
                pytest.fail(f"no chunk committed within {STARTUP_LIMIT_S} s")
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.communicate()
    versions_at_kill = committed_versions(table)
    assert process.returncode == -signal.SIGKILL, f"the process was not killed: it ended with {process.returncode}"
    assert 2 <= versions_at_kill < 1 + CHUNKS, (
        f"the kill came too late to test resuming: {versions_at_kill - 1} of {CHUNKS} chunks were committed"
    )
    rows_at_kill = label_table.read_labels(str(table)).num_rows
    assert 0 < rows_at_kill < PEOPLE

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=STARTUP_LIMIT_S)
    assert rerun.returncode == 0, rerun.stderr
    assert f'"skipped": {versions_at_kill - 1}' in rerun.stdout, rerun.stdout

    # The reference run is a process too, right after: both then run the same code from disk.
    whole = tmp_path / "whole"
    uninterrupted = subprocess.run(
        convert_command(dataset_dir, whole, models_root), capture_output=True, text=True, timeout=STARTUP_LIMIT_S
    )
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    resumed, expected = label_table.read_labels(str(table)), label_table.read_labels(str(whole))

    assert expected.num_rows == PEOPLE
    assert resumed.column("sample_id").to_pylist() == expected.column("sample_id").to_pylist()  # none lost or doubled
    differing = [name for name in without_timings(expected).column_names if not resumed[name].equals(expected[name])]
    assert not differing, f"the resumed table differs from the uninterrupted one in {differing}"
    chunk_commits = [entry["app_id"] for entry in label_table.history(str(table)) if entry["app_id"]]
    assert sorted(chunk_commits) == sorted(set(chunk_commits)) and len(chunk_commits) == CHUNKS
