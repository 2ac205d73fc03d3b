"""The convert-sequences flow: in-process against Prefect's test harness (rows, resume), and as the
served deployment triggered from the CLI (`prefect deployment run convert-sequences/local`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flows.sequences import convert_sequences
from hsmr_data import label_table
from hsmr_data.sequences import SkelSequence, frame_sample_id
from hsmr_data.synthetic.motion import write_motion_sequences
from tests.test_deployment import (
    PREFECT,
    REPO_ROOT,
    RUNNER_SCRIPT,
    flow_run_state,
    free_port,
    is_healthy,
    stop,
    wait_for,
)

FRAMES = 12


@pytest.fixture(scope="module")
def motion_dir(model_paths, tmp_path_factory):
    out = tmp_path_factory.mktemp("motion")
    write_motion_sequences(model_paths, out, frames=FRAMES, names=("sitting_down",), smpl_iterations=4)
    return out / "sequences"


@pytest.mark.slow
def test_flow_writes_sequences_and_rows_and_resumes(prefect_api, model_paths, motion_dir, tmp_path):
    parameters = {
        "input_path": str(motion_dir),
        "out_dir": str(tmp_path / "skel"),
        "models_root": str(model_paths.smpl.parent.parent),
        "table_uri": str(tmp_path / "labels"),
        "device": "cpu",
    }
    report = convert_sequences(**parameters)
    assert report["sequences"] == {"converted": 1, "skipped": 0, "quarantined": 0, "failed": 0}
    result = SkelSequence.read(tmp_path / "skel" / "sitting_down.npz")
    labels = label_table.read_labels(parameters["table_uri"]).to_pandas()
    assert list(labels["sample_id"]) == [frame_sample_id("sitting_down", t) for t in range(FRAMES)]
    assert set(labels["chunk_id"]) == {"motion/sitting_down"} and labels["passed"].sum() == result.passed.sum()
    again = convert_sequences(**parameters)
    assert again["sequences"]["skipped"] == 1 and again["sequences"]["converted"] == 0
    assert label_table.read_labels(parameters["table_uri"]).num_rows == FRAMES


@pytest.mark.slow
def test_deployment_run_from_the_cli_converts_sequences(model_paths, motion_dir, tmp_path):
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
    }
    script = RUNNER_SCRIPT.replace(
        "from flows.convert import convert_smpl_to_skel", "from flows.sequences import convert_sequences"
    )
    (tmp_path / "runner.py").write_text(script.replace("add_flow(convert_smpl_to_skel", "add_flow(convert_sequences"))
    registered, out_dir = tmp_path / "registered", tmp_path / "skel"
    server_log, runner_log = (tmp_path / "server.log").open("w+"), (tmp_path / "runner.log").open("w+")
    server = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=server_log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    runner = None
    try:
        runner = subprocess.Popen(
            [sys.executable, str(tmp_path / "runner.py"), api_url, str(registered)],
            cwd=REPO_ROOT, env=env, text=True, start_new_session=True,
            stdin=subprocess.PIPE, stdout=runner_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_for(lambda: is_healthy(api_url), server, "prefect server health", limit_s=120)
        wait_for(registered.exists, runner, "deployment registration", limit_s=120)
        trigger = subprocess.run(
            [PREFECT, "deployment", "run", "convert-sequences/local",
             "-p", f"input_path={motion_dir}", "-p", f"out_dir={out_dir}",
             "-p", f"models_root={model_paths.smpl.parent.parent}", "-p", "device=cpu"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert trigger.returncode == 0, trigger.stdout + trigger.stderr
        created = re.search(r"UUID:\s*([0-9a-f-]{36})", trigger.stdout)
        assert created, f"no flow run id in the CLI's output:\n{trigger.stdout}"
        runner.communicate("go\n", timeout=400)
        runner_output = Path(runner_log.name).read_text()
        assert runner.returncode == 0, runner_output[-4000:]
        state = flow_run_state(api_url, created.group(1))
        assert state.is_completed(), f"{state}\n{runner_output[-4000:]}"
        assert SkelSequence.read(out_dir / "sitting_down.npz").frames == FRAMES
    finally:
        if runner is not None:
            stop(runner)
        stop(server)
        server_log.close()
        runner_log.close()
