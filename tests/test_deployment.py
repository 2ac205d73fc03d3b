"""The served deployment end to end: a real Prefect server, a runner process, a run triggered from the CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from hsmr_data import label_table
from tests.test_convert_flow import PEOPLE, synthetic_dataset

REPO_ROOT = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).with_name("prefect"))

# Registers the deployment, waits for the test to trigger a run, then runs what is scheduled and exits.
RUNNER_SCRIPT = """
import asyncio
import json
import sys
import time
import urllib.request
from pathlib import Path

from prefect.runner import Runner

from FLOW_MODULE import FLOW_FUNCTION


def wait_for_api(api_url):
    # Started alongside the server, so that its imports overlap the server's start.
    while True:
        try:
            with urllib.request.urlopen(api_url + "/health", timeout=2) as response:
                if json.loads(response.read()) is True:
                    return
        except OSError:
            time.sleep(0.5)


if __name__ == "__main__":  # the runner starts flow runs in subprocesses
    api_url, registered = sys.argv[1], Path(sys.argv[2])
    wait_for_api(api_url)
    runner = Runner(query_seconds=1)
    runner.add_flow(FLOW_FUNCTION, name="local")
    registered.touch()
    sys.stdin.readline()
    asyncio.run(runner.start(run_once=True))
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(done, process: subprocess.Popen, what: str, limit_s: float) -> None:
    """Poll `done()` until it holds; fail if `process` exits first or time runs out."""
    deadline = time.monotonic() + limit_s
    while not done():
        if process.poll() is not None:
            pytest.fail(f"{what}: the process exited with {process.returncode} first")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {limit_s} s")
        time.sleep(0.5)


def is_healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return json.loads(response.read()) is True
    except OSError:
        return False


def stop(process: subprocess.Popen) -> None:
    """End a process started with start_new_session=True and everything it started (the server's uvicorn)."""
    for sig, grace_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=grace_s)
            break
        except subprocess.TimeoutExpired:
            continue


@dataclass
class PrefectServer:
    """A real Prefect server of one test: its API, the environment that points a process at it."""

    api_url: str
    env: dict[str, str]
    process: subprocess.Popen

    def wait_healthy(self) -> None:
        # The first start (database migrations) takes 15-30 s: callers prepare their data meanwhile.
        wait_for(lambda: is_healthy(self.api_url), self.process, "prefect server health", limit_s=120)

    def trigger(self, deployment: str, parameters: dict) -> str:
        """`prefect deployment run` from the CLI; the id of the flow run it created."""
        options = [arg for name, value in parameters.items() for arg in ("-p", f"{name}={value}")]
        trigger = subprocess.run(
            [PREFECT, "deployment", "run", deployment, *options],
            env=self.env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert trigger.returncode == 0, trigger.stdout + trigger.stderr
        created = re.search(r"UUID:\s*([0-9a-f-]{36})", trigger.stdout)
        assert created, f"no flow run id in the CLI's output:\n{trigger.stdout}"
        return created.group(1)


@contextmanager
def prefect_server(tmp_path: Path) -> Iterator[PrefectServer]:
    """Start a Prefect server on a free loopback port (its home under tmp_path); stop it afterwards."""
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
    }
    with (tmp_path / "server.log").open("w+") as server_log:
        process = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=server_log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            yield PrefectServer(api_url, env, process)
        finally:
            stop(process)


def run_served_deployment(tmp_path: Path, flow: str, deployment: str, prepare) -> None:
    """Serve `flow` ("module:function") from a runner against a fresh Prefect server, trigger `deployment`
    from the CLI with the parameters `prepare()` returns (it runs while the server starts), run it,
    and assert that the flow run completed."""
    module, function = flow.split(":")
    (tmp_path / "runner.py").write_text(RUNNER_SCRIPT.replace("FLOW_MODULE", module).replace("FLOW_FUNCTION", function))
    registered = tmp_path / "registered"
    with prefect_server(tmp_path) as server, (tmp_path / "runner.log").open("w+") as runner_log:
        runner = subprocess.Popen(
            [sys.executable, str(tmp_path / "runner.py"), server.api_url, str(registered)],
            cwd=REPO_ROOT, env=server.env, text=True, start_new_session=True,
            stdin=subprocess.PIPE, stdout=runner_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            parameters = prepare()
            server.wait_healthy()
            wait_for(registered.exists, runner, "deployment registration", limit_s=120)
            flow_run_id = server.trigger(deployment, parameters)
            runner.communicate("go\n", timeout=400)
            runner_output = Path(runner_log.name).read_text()
            assert runner.returncode == 0, runner_output[-4000:]
            state = flow_run_state(server.api_url, flow_run_id)
            assert state.is_completed(), f"{state}\n{runner_output[-4000:]}"
        finally:
            stop(runner)


@pytest.mark.slow
def test_deployment_run_from_the_cli_converts_the_dataset(model_paths, tmp_path, tmp_path_factory):
    table = tmp_path / "labels"

    def prepare() -> dict[str, str]:
        dataset_dir = synthetic_dataset(model_paths, tmp_path_factory)
        config = {"dataset_dir": str(dataset_dir), "table_uri": str(table)}
        return {"config": json.dumps(config | {"models_root": str(model_paths.smpl.parent.parent)})}

    run_served_deployment(tmp_path, "flows.convert:convert_smpl_to_skel", "convert-smpl-to-skel/local", prepare)
    assert label_table.read_labels(str(table)).num_rows == PEOPLE


def flow_run_state(api_url: str, flow_run_id: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        with get_client(sync_client=True) as client:
            return client.read_flow_run(flow_run_id).state
