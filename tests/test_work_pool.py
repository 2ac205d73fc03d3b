"""Prefect beyond `serve`: deployments on a `process` work pool, run by `prefect worker start`."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from flows.deploy import entrypoint
from flows.serve import FLOWS
from hsmr_data import label_table
from tests.test_convert_flow import PEOPLE, synthetic_dataset
from tests.test_deployment import PREFECT, REPO_ROOT, flow_run_state, free_port, is_healthy, stop, wait_for


def test_every_flow_has_an_entrypoint_a_worker_can_import():
    for pipeline_flow in FLOWS:
        path, function = entrypoint(pipeline_flow).split(":")
        assert (REPO_ROOT / path).is_file(), path
        assert f"def {function}(" in (REPO_ROOT / path).read_text()


@pytest.mark.slow
def test_a_worker_on_a_process_pool_runs_the_conversion_deployment(model_paths, tmp_path, tmp_path_factory):
    table = tmp_path / "labels"
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
    }
    server_log, worker_log = (tmp_path / "server.log").open("w+"), (tmp_path / "worker.log").open("w+")
    server = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=server_log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    worker = None
    try:
        dataset_dir = synthetic_dataset(model_paths, tmp_path_factory)  # while the server migrates its database
        wait_for(lambda: is_healthy(api_url), server, "prefect server health", limit_s=120)

        deployed = subprocess.run(
            [sys.executable, "-m", "flows.deploy", "--pool", "test-pool"],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        assert {f"{f.name}/test-pool" for f in FLOWS} <= set(deployed.stdout.split())  # Prefect prints tables too

        trigger = subprocess.run(
            [PREFECT, "deployment", "run", "convert-smpl-to-skel/test-pool",
             "-p", f"dataset_dir={dataset_dir}", "-p", f"table_uri={table}",
             "-p", f"models_root={model_paths.smpl.parent.parent}"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert trigger.returncode == 0, trigger.stdout + trigger.stderr
        created = re.search(r"UUID:\s*([0-9a-f-]{36})", trigger.stdout)
        assert created, f"no flow run id in the CLI's output:\n{trigger.stdout}"

        # Started from elsewhere on purpose: the deployment, not the worker's folder, says where the code is.
        worker = subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", "test-pool", "--run-once"],
            cwd=tmp_path, env=env, stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        worker.wait(timeout=400)
        worker_output = (tmp_path / "worker.log").read_text()
        state = flow_run_state(api_url, created.group(1))
        assert state.is_completed(), f"{state}\n{worker_output[-4000:]}"
        assert label_table.read_labels(str(table)).num_rows == PEOPLE
    finally:
        if worker is not None:
            stop(worker)
        stop(server)
        server_log.close()
        worker_log.close()
