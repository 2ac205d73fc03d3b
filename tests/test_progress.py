"""The one progress helper: a tqdm bar alone in plain Python (Prefect not even imported), and the same
numbers in a Prefect progress artifact inside a flow or task run."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_plain_python_counts_on_the_bar_and_never_imports_prefect():
    script = (
        "import sys\n"
        "from hsmr_data.progress import Progress\n"
        "with Progress('work', total=5, unit='item') as progress:\n"
        "    for _ in range(5):\n"
        "        progress.update(1)\n"
        "    progress.update_to(5, loss=0.5)\n"
        "assert progress.n == 5 and progress.percent == 100.0, progress.n\n"
        "assert 'prefect' not in sys.modules, 'the helper imported prefect'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "work: 100%" in done.stderr and "5/5" in done.stderr  # tqdm writes to stderr


def test_outside_a_run_no_artifact_even_with_prefect_imported():
    import prefect  # noqa: F401

    from hsmr_data.progress import Progress

    with Progress("work", total=3, disable=True) as progress:
        progress.update(3)
    assert progress._artifact_id is None


def _progress_artifacts(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return [artifact for artifact in artifacts if artifact.type == "progress"]


def test_inside_a_flow_and_a_task_the_artifact_shows_the_bars_numbers(prefect_api):
    from prefect import flow, task

    from hsmr_data.progress import Progress

    seen = {}

    @task
    def in_task(total: int) -> None:
        with Progress("task work", total=total, unit="batch", disable=True) as progress:
            progress.update(total)

    @flow
    def counting(total: int, stop_at: int) -> None:
        with Progress("flow work", total=total, unit="chunk", disable=True) as progress:
            for _ in range(stop_at):
                progress.update(1)
            seen["n"] = progress.n
        in_task(4)

    state = counting(8, 6, return_state=True)
    assert state.is_completed()
    artifacts = {artifact.description.split(":")[0]: artifact for artifact in _progress_artifacts(
        state.state_details.flow_run_id)}  # fmt: skip
    assert seen["n"] == 6
    # 6 of 8 done when the loop ended: the artifact says 75 %, and the count the bar showed.
    assert artifacts["flow work"].data == pytest.approx(75.0)
    assert artifacts["flow work"].description == "flow work: 6/8 chunk"
    assert artifacts["task work"].data == pytest.approx(100.0)
    assert artifacts["task work"].description == "task work: 4/4 batch"


def test_unknown_total_reaches_100_percent_at_the_end_only(prefect_api):
    from prefect import flow

    from hsmr_data.progress import Progress

    @flow
    def open_ended() -> float:
        with Progress("people", unit="person", disable=True) as progress:
            progress.update(10)
            during = progress.percent
        return during

    state = open_ended(return_state=True)
    assert state.result() == 0.0
    (artifact,) = _progress_artifacts(state.state_details.flow_run_id)
    assert artifact.data == pytest.approx(100.0) and artifact.description == "people: 10 person"


def test_gather_keeps_outcomes_in_finishing_order_and_errors_by_name():
    from hsmr_data.progress import Progress, gather

    done = []
    results = [("a", 1), ("b", OSError("disk went away")), ("c", 3)]
    with Progress("units", total=3, disable=True) as progress:
        outcomes, failed = gather(iter(results), progress, done.append, name=str.upper)
    assert outcomes == [1, 3] and done == [1, 3]
    assert failed == {"B": "OSError('disk went away')"} and progress.n == 3
