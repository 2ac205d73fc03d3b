"""Prefect beyond `serve`: deployments on a `process` work pool, run by `prefect worker start`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from flows.deploy import entrypoint
from flows.serve import FLOWS
from hsmr_data import label_table
from tests.test_convert_flow import PEOPLE, synthetic_dataset
from tests.test_deployment import PREFECT, REPO_ROOT, flow_run_state, prefect_server, stop


def test_every_flow_has_an_entrypoint_a_worker_can_import():
    for pipeline_flow in FLOWS:
        path, function = entrypoint(pipeline_flow).split(":")
        assert (REPO_ROOT / path).is_file(), path
        assert f"def {function}(" in (REPO_ROOT / path).read_text()


@pytest.mark.slow
def test_a_worker_on_a_process_pool_runs_the_conversion_deployment(model_paths, tmp_path, tmp_path_factory):
    table = tmp_path / "labels"
    with prefect_server(tmp_path) as server, (tmp_path / "worker.log").open("w+") as worker_log:
        dataset_dir = synthetic_dataset(model_paths, tmp_path_factory)  # while the server migrates its database
        server.wait_healthy()
        deployed = subprocess.run(
            [sys.executable, "-m", "flows.deploy", "--pool", "test-pool"],
            cwd=REPO_ROOT, env=server.env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        assert {f"{f.name}/test-pool" for f in FLOWS} <= set(deployed.stdout.split())  # Prefect prints tables too

        config = {"dataset_dir": str(dataset_dir), "table_uri": str(table)}
        parameters = {"config": json.dumps(config | {"models_root": str(model_paths.smpl.parent.parent)})}
        flow_run_id = server.trigger("convert-smpl-to-skel/test-pool", parameters)
        # Started from elsewhere on purpose: the deployment, not the worker's folder, says where the code is.
        worker = subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", "test-pool", "--run-once"],
            cwd=tmp_path, env=server.env, stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            worker.wait(timeout=400)
        finally:
            stop(worker)
        state = flow_run_state(server.api_url, flow_run_id)
        assert state.is_completed(), f"{state}\n{(tmp_path / 'worker.log').read_text()[-4000:]}"
    assert label_table.read_labels(str(table)).num_rows == PEOPLE
