"""The lifting study's measures (`hsmr_data.lifting_study`): the spread ratio tells a network that follows
each person from one that answers the same place, unseen keypoints count nowhere, the lifter learns
poses from keypoints, and the study runs end to end on a trained network's held-out people."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch
import webdataset as wds

from hsmr_data import export
from hsmr_data import lifting_study as L
from hsmr_data.synthetic.world import SynthConfig, generate_dataset
from hsmr_data.train_data import ShardDataset
from hsmr_data.training import Trainer, make_config
from hsmr_model.network import decode_pose
from hsmr_model.pose_repr import bone_rotations
from tests.test_predict import truth_labels


def test_spread_ratio_is_one_for_a_follower_zero_for_a_constant_and_the_slope_between():
    rng = np.random.default_rng(0)
    detected = rng.normal(size=(50, 2))
    assert L.spread_ratio(detected + 3.0, detected) == pytest.approx(1.0)
    assert L.spread_ratio(np.zeros_like(detected) + 0.2, detected) == pytest.approx(0.0)
    assert L.spread_ratio(0.5 * detected, detected) == pytest.approx(0.5)


def test_keypoint_errors_count_only_detected_keypoints():
    detected = np.zeros((4, 3, 3))
    detected[..., 2] = 1.0
    detected[:, 0, :2] = np.arange(8).reshape(4, 2) / 100
    predicted = detected[..., :2].copy()
    predicted[:, 1, 0] += 10 / 256  # keypoint 1 is 10 px off
    predicted[:, 2] += 1.0  # keypoint 2 is far off but never detected
    detected[:, 2, 2] = 0.0
    errors = L.keypoint_errors(predicted, detected)
    assert errors["mean_px"] == pytest.approx(5.0) and errors["median_px"] == pytest.approx(5.0)
    assert [k["keypoint"] for k in errors["per_keypoint"]] == [0, 1]
    assert errors["per_keypoint"][1]["mean_px"] == pytest.approx(10.0)
    assert errors["per_keypoint"][0]["spread_ratio"] == pytest.approx(1.0)


def test_lifter_features_hide_the_position_of_an_unseen_keypoint():
    keypoints = torch.tensor([[[0.1, 0.2, 1.0], [0.3, -0.4, 0.0]]])
    assert L.lifter_features(keypoints)[0].tolist() == pytest.approx([0.1, 0.2, 1.0, 0.0, 0.0, 0.0])


def test_noise_has_the_mean_length_the_study_matches_to_the_network():
    keypoints = torch.zeros(2000, 44, 3)
    keypoints[..., 2] = 0.7
    noisy = L.with_noise(keypoints, torch.full((2000,), 0.05), torch.Generator().manual_seed(0))
    assert noisy[..., :2].norm(dim=-1).mean() == pytest.approx(0.05 * math.sqrt(math.pi / 2), rel=0.01)
    assert torch.equal(noisy[..., 2], keypoints[..., 2])


@pytest.fixture(scope="module")
def trained(model_paths, tmp_path_factory) -> dict:
    """A world of 12 training and 4 test people (true labels) and the cpu recipe's network after 2 steps."""
    root = tmp_path_factory.mktemp("lifting")
    generate_dataset(model_paths, root / "synth", SynthConfig(count=16, batch_size=16, test_fraction=0.25))
    truth_labels(root / "synth", str(root / "labels"))
    index = export.export_shards(str(root / "labels"), {"synth": str(root / "synth")}, root / "shards").index
    models = str(model_paths.smpl.parent.parent)
    config = make_config("cpu", indexes=(index,), out_dir=str(root / "run"), models_root=models, steps=2,
                         batch_size=4, loader_workers=0, device="cpu")  # fmt: skip
    Trainer(config).run()
    return {"run": str(root / "run"), "index": index, "test": str(root / "synth" / "test"), "models": models}


def test_the_lifter_learns_the_labels_from_their_keypoints(trained):
    exported = ShardDataset.from_index(trained["index"])
    data = L.labelled_training_set([exported.decoded(i) for i in range(len(exported))])
    assert data["keypoints_2d"].shape[0] == data["q"].shape[0] == 2 * 12  # each person and its mirror
    config = L.LiftingStudyConfig("", trained["index"], "", trained["models"], steps=300, batch_size=16, max_noise=0.0)
    lifter = L.train_lifter(data, config)
    with torch.no_grad():
        target88, _ = lifter(data["keypoints_2d"])
        _, _, rotations = decode_pose(target88, "88d")
        _, _, at_mean = decode_pose(lifter.mean_pose.expand(len(target88), -1), "88d")
    truth = bone_rotations(data["q"].double()).float()
    learned, constant = ((rotations - truth) ** 2).sum((1, 2, 3)).mean(), ((at_mean - truth) ** 2).sum((1, 2, 3)).mean()
    assert learned < 0.3 * constant, f"lifter {learned:.3f} vs mean pose {constant:.3f}"


def test_the_study_scores_every_source_on_the_held_out_people(trained, tmp_path):
    """A broken held-out sample is quarantined with its reason and the rest are scored."""
    heldout = tmp_path / "test"
    shutil.copytree(trained["test"], heldout)
    with wds.TarWriter(str(heldout / "shards" / "broken.tar"), encoder=False) as sink:
        sink.write({"__key__": "broken", "jpg": b"not an image"})
    config = L.LiftingStudyConfig(trained["run"], trained["index"], str(heldout), trained["models"], steps=20)
    result = L.run_lifting_study(config, log=lambda _: None)
    assert result.quarantine["quarantined"] == 1 and result.quarantine["entries"][0]["key"] == "broken"
    assert "missing entry 'data.pyd'" in result.quarantine["entries"][0]["reason"]
    assert result.heldout_people == 4
    expected = ["constant", "network"] + [f"lifter_on_{name}" for name in L.INPUTS]
    assert sorted(result.scores) == sorted(expected)
    assert all(math.isfinite(s["all"]["pa_mpjpe_mm"]) and s["all"]["samples"] == 4 for s in result.scores.values())
    assert result.grid_keypoints["mean_px"] > 0 and len(result.grid_keypoints["per_keypoint"]) > 0
    assert result.grid_keypoints["training_people"]["mean_px"] > 0
    markdown = L.to_markdown(result)
    assert "| lifter_on_network_grid |" in markdown and "spread ratio" in markdown
    assert "Held-out samples quarantined: 1." in markdown
