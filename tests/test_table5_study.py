"""The Table-5 study's pieces: the Euler pose target (the ablation's switch) trains through HSMR's rotation
loss like the 88-D one, and the study's scores of all test people weight each split by its size. The
whole study (four training runs) is bench/study_table5.py, not a test."""

from __future__ import annotations

import pytest
import torch

from hsmr_data.table5_study import METRICS, split_scores
from hsmr_data.training import make_config
from hsmr_model.losses import rotation_losses
from hsmr_model.network import decode_pose, mean_pose, network_config
from hsmr_model.pose_repr import bone_rotations, q_to_target88, target88_to_q


@pytest.mark.parametrize("pose_target", ["88d", "euler"])
def test_each_pose_target_learns_a_pose_through_the_rotation_loss(pose_target):
    """The head's pose output decoded as its target (decode_pose) and scored by HSMR's rotation loss: Adam on
    the raw output from the mean pose reaches a pose with bent knees and elbows."""
    q = torch.zeros(2, 46)
    q[:, 0] = torch.pi
    q[:, 6], q[:, 9], q[:, 32], q[:, 42] = 0.8, -0.6, 1.0, 1.2  # knees, elbows (limited 1-DoF joints)
    target = bone_rotations(q)
    pose = mean_pose(pose_target).expand(2, -1).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([pose], lr=0.02)
    losses = []
    for _ in range(150):
        _, _, rotations = decode_pose(pose, pose_target)
        orientation, body = rotation_losses(rotations, target, torch.ones(2))
        loss = (orientation + body).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.05 * losses[0], f"{pose_target}: rotation loss {losses[0]:.3f} -> {losses[-1]:.4f}"
    target88, decoded_q, rotations = decode_pose(pose.detach(), pose_target)
    assert target88.shape == (2, 88) and decoded_q.shape == (2, 46) and rotations.shape == (2, 24, 3, 3)
    # The decoded q and rotations are one pose (a raw 88-D output need not be normalised, so compare rotations).
    assert torch.allclose(bone_rotations(decoded_q), rotations, atol=1e-4)
    assert torch.allclose(bone_rotations(target88_to_q(q_to_target88(decoded_q))), rotations, atol=1e-4)
    assert torch.allclose(decoded_q[:, [6, 9, 32, 42]], q[:, [6, 9, 32, 42]], atol=0.05)


def test_the_study_trains_with_the_pose_target_it_asks_for(tmp_path):
    config = make_config("cpu", indexes=("i.json",), out_dir=str(tmp_path), pose_target="euler")
    assert config.pose_target == "euler" and config.size == "small"
    with pytest.raises(ValueError, match="pose_target"):
        network_config("small", "quaternion")


def test_scores_of_all_test_people_weight_each_split_by_its_size():
    normal = {"samples": 3, **{m: 10.0 for m in METRICS}}
    hard = {"samples": 1, **{m: 50.0 for m in METRICS}}
    scores = split_scores({"normal": normal, "hard": hard, "empty": {"samples": 0}})
    assert set(scores) == {"normal", "hard", "all"}
    assert scores["all"]["samples"] == 4
    assert scores["all"]["pa_mpjpe_mm"] == pytest.approx(20.0)
