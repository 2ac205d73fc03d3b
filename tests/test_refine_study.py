"""The refiner study at test size: its table has every figure, and the default refiner does not make the
labels worse in 3D when it starts from good predictions, with no refined label past its joint limits.
The refiner test runs the truth-plus-noise case only (the trained network's case trains first); the
network case's own test checks its predictions and that a rerun reuses the trained checkpoint."""

from __future__ import annotations

import math

import pytest
import torch

from hsmr_data import cli, label_table
from hsmr_data.refine_study import (
    StudyConfig,
    build_world,
    default_variant,
    network_predictions,
    run_study,
    to_markdown,
)


@pytest.mark.slow
def test_the_default_refiner_does_not_raise_the_3d_error_from_good_predictions(model_paths, tmp_path):
    models = str(model_paths.smpl.parent.parent)
    config = StudyConfig(models, str(tmp_path / "study"), people=24, cases=("truth_noise",),
                         variants=(default_variant(),))  # fmt: skip
    result = run_study(config, log=lambda line: None)
    (row,) = result.rows
    assert row["samples"] == 24 and 0 < row["share_replaced"] <= 1
    before, after = row["joint_mm_all"]
    assert after <= before, f"the default refiner raised the mean joint error {before:.1f} -> {after:.1f} mm"
    assert row["mpvpe_mm_all"][1] <= row["mpvpe_mm_all"][0]
    assert row["violations_replaced"] == {"0": 0.0, "10": 0.0}
    assert all(math.isfinite(v) for v in row["joint_mm_replaced"])
    table = to_markdown(result)
    assert "| truth_noise | default |" in table and result.qualifying == ["default"]


@pytest.mark.slow
def test_the_network_case_predicts_every_labelled_person_and_trains_once(model_paths, tmp_path):
    models = str(model_paths.smpl.parent.parent)
    config = StudyConfig(models, str(tmp_path / "study"), people=12, network_steps=2)
    world = build_world(config)
    threads = torch.get_num_threads()
    predicted = network_predictions(world, config)
    assert torch.get_num_threads() == threads  # the recipe's one training thread does not stay set
    labelled = label_table.read_labels(world.table_uri)["sample_id"].to_pylist()
    assert sorted(predicted["sample_id"].to_pylist()) == sorted(labelled)
    assert set(predicted["step"].to_pylist()) == {2}  # the trained network's, not a stand-in's
    q = predicted["q"].to_pylist()
    assert len(q[0]) == 46 and q[0] != q[1]  # a network sees each crop: not one constant pose
    checkpoint = tmp_path / "study" / "network" / "checkpoint.pt"
    written = checkpoint.stat().st_mtime_ns
    again = network_predictions(world, config)
    assert checkpoint.stat().st_mtime_ns == written  # reused, not trained again
    assert again["q"].to_pylist() == q


def test_cli_has_the_study():
    line = ["study", "refine", "--people", "8", "--work", "w", "--out", "o.json", "--network-steps", "5"]
    args = cli.build_parser().parse_args(line)
    assert args.people == 8 and args.network_steps == 5 and args.run.__name__ == "_study_refine"
