"""The convert-sequences flow: in-process against Prefect's test harness (rows, resume), and as the
served deployment triggered from the CLI (`prefect deployment run convert-sequences/local`)."""

from __future__ import annotations

import json

import pytest

from flows.sequences import convert_sequences
from hsmr_data import label_table
from hsmr_data.sequences import SequenceOptions, SkelSequence, frame_sample_id
from hsmr_data.synthetic.motion import write_motion_sequences
from tests.test_deployment import run_served_deployment

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
    report = convert_sequences(SequenceOptions(**parameters))
    assert report["sequences"] == {"converted": 1, "skipped": 0, "quarantined": 0, "failed": 0}
    result = SkelSequence.read(tmp_path / "skel" / "sitting_down.npz")
    labels = label_table.read_labels(parameters["table_uri"]).to_pandas()
    assert list(labels["sample_id"]) == [frame_sample_id("sitting_down", t) for t in range(FRAMES)]
    assert set(labels["chunk_id"]) == {"motion/sitting_down"} and labels["passed"].sum() == result.passed.sum()
    again = convert_sequences(SequenceOptions(**parameters))
    assert again["sequences"]["skipped"] == 1 and again["sequences"]["converted"] == 0
    assert label_table.read_labels(parameters["table_uri"]).num_rows == FRAMES


@pytest.mark.slow
def test_deployment_run_from_the_cli_converts_sequences(model_paths, motion_dir, tmp_path):
    out_dir = tmp_path / "skel"
    config = {"input_path": str(motion_dir), "out_dir": str(out_dir), "device": "cpu"}
    parameters = {"config": json.dumps(config | {"models_root": str(model_paths.smpl.parent.parent)})}
    run_served_deployment(tmp_path, "flows.sequences:convert_sequences", "convert-sequences/local", lambda: parameters)
    assert SkelSequence.read(out_dir / "sitting_down.npz").frames == FRAMES
