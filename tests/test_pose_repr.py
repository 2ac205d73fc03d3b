"""Pose representations: q ↔ 88-D target ↔ per-bone rotations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hsmr_model import skel_constants as C
from hsmr_model.pose_repr import (
    TARGET_LAYOUT,
    TARGET_SIZE,
    bone_rotations,
    euler_conventions,
    q_to_target88,
    target88_to_bone_rotations,
    target88_to_q,
)
from hsmr_model.rotations import matrix_to_euler, rotation_about_axis
from tests.conftest import random_poses_in_limits


def _poses(count: int, seed: int = 0) -> torch.Tensor:
    """q inside the limits; the unlimited pelvis kept on the Euler decomposition's principal branch."""
    q = torch.as_tensor(random_poses_in_limits(np.random.default_rng(seed), count))
    q[:, [0, 2]] = q[:, [0, 2]].clamp(-np.pi + 0.05, np.pi - 0.05)
    q[:, 1] = q[:, 1].clamp(-np.pi / 2 + 0.05, np.pi / 2 - 0.05)
    return q


def test_layout_partitions_88_values_bone_by_bone():
    assert TARGET_SIZE == 88
    assert [b.bone for b in TARGET_LAYOUT] == list(range(C.NUM_BONES))
    assert all(a.stop == b.start for a, b in zip(TARGET_LAYOUT, TARGET_LAYOUT[1:], strict=False))
    assert [b.bone for b in TARGET_LAYOUT if b.kind == "6d"] == [0, 1, 6, 11, 12, 13, 14, 15, 19, 20]
    assert [b.bone for b in TARGET_LAYOUT if b.kind == "euler"] == [18, 23]
    assert sum(b.stop - b.start for b in TARGET_LAYOUT if b.kind == "cos_sin") == 24


def test_conventions_match_the_published_ones():
    conventions = euler_conventions()
    orders = {bone: order for bone, (order, _) in conventions.items()}
    assert orders == {
        0: "YXZ",
        1: "YXZ",
        6: "YXZ",
        11: "YZX",
        12: "YZX",
        13: "YZX",
        14: "XZY",
        19: "XZY",
        15: "ZYX",
        20: "ZYX",
    }
    flipped = {bone for bone, (_, signs) in conventions.items() if (signs < 0).any()}
    assert flipped == {6, 14}  # femur_l and scapula_r
    assert list(conventions[6][1]) == [1, -1, -1]


@pytest.mark.parametrize("order", ["XYZ", "XZY", "YXZ", "YZX", "ZXY", "ZYX"])
def test_matrix_to_euler_inverts_the_composition(order):
    angles = torch.as_tensor(np.random.default_rng(1).uniform(-1.4, 1.4, size=(200, 3)))
    unit = {axis: torch.eye(3, dtype=torch.float64)[i] for i, axis in enumerate("XYZ")}
    rotations = [rotation_about_axis(angles[:, n], unit[axis]) for n, axis in enumerate(order)]
    matrix = rotations[0] @ rotations[1] @ rotations[2]
    assert torch.allclose(matrix_to_euler(matrix, order), angles, atol=1e-10)


def test_round_trip_q_to_88_to_q_inside_the_limits():
    q = _poses(1000)
    assert (target88_to_q(q_to_target88(q)) - q).abs().max() < 1e-5
    q32 = q.float()
    assert (target88_to_q(q_to_target88(q32)) - q32).abs().max() < 1e-3  # float32, gimbal-adjacent humerus poses


def test_wrong_extraction_order_breaks_the_round_trip():
    q = _poses(50, seed=2)
    rotations = bone_rotations(q)
    humerus = C.BONE_FIRST_DOF[15]
    right = matrix_to_euler(rotations[:, 15], "ZYX").flip(-1)
    wrong = matrix_to_euler(rotations[:, 15], "XYZ").flip(-1)
    assert torch.allclose(right, q[:, humerus : humerus + 3], atol=1e-6)  # shoulder_y reaches ±π/2 (gimbal lock)
    assert (wrong - q[:, humerus : humerus + 3]).abs().max() > 0.1


def test_88_gives_the_same_matrices_as_q():
    q = _poses(200, seed=3)
    assert torch.allclose(target88_to_bone_rotations(q_to_target88(q)), bone_rotations(q), atol=1e-6)


def test_noisy_88_projects_onto_a_valid_pose_once():
    target = q_to_target88(_poses(100, seed=4))
    noisy = target + 0.05 * torch.randn(target.shape, generator=torch.Generator().manual_seed(0), dtype=target.dtype)
    projected = q_to_target88(target88_to_q(noisy))
    assert torch.allclose(q_to_target88(target88_to_q(projected)), projected, atol=1e-8)
    rotations = target88_to_bone_rotations(noisy)
    eye = torch.eye(3, dtype=rotations.dtype)
    assert torch.allclose(rotations @ rotations.transpose(-1, -2), eye.expand_as(rotations), atol=1e-10)
    assert torch.allclose(torch.linalg.det(rotations), torch.ones(rotations.shape[:2], dtype=rotations.dtype))


def test_known_values():
    zero = q_to_target88(torch.zeros(1, C.NUM_DOFS))[0]
    for block in TARGET_LAYOUT:
        values = zero[block.start : block.stop].tolist()
        expected = {"6d": [1, 0, 0, 0, 1, 0], "cos_sin": [1, 0], "euler": [0, 0]}[block.kind]
        assert values == pytest.approx(expected)
    q = torch.zeros(1, C.NUM_DOFS)
    q[0, C.DOF_NAMES.index("knee_angle_r")] = np.pi / 2
    tibia = next(b for b in TARGET_LAYOUT if b.bone == 2)
    assert q_to_target88(q)[0, tibia.start : tibia.stop].tolist() == pytest.approx([0.0, -1.0], abs=1e-7)


def test_gradients_flow_and_are_correct():
    q = _poses(3, seed=5).clone().requires_grad_(True)
    assert torch.autograd.gradcheck(q_to_target88, (q,))
    target = q_to_target88(_poses(3, seed=6)).detach().requires_grad_(True)
    assert torch.autograd.gradcheck(target88_to_q, (target,))
    assert torch.autograd.gradcheck(target88_to_bone_rotations, (target,))


def test_matrix_to_axis_angle_inverts_axis_angle_to_matrix_up_to_pi():
    from hsmr_model.rotations import axis_angle_to_matrix, matrix_to_axis_angle

    generator = torch.Generator().manual_seed(3)
    axes = torch.nn.functional.normalize(torch.randn(4000, 3, generator=generator, dtype=torch.float64), dim=-1)
    angles = torch.rand(4000, 1, generator=generator, dtype=torch.float64) * (torch.pi - 1e-6)
    angles[:10] = 1e-9  # the near-identity branch
    angles[10:20] = torch.pi - 1e-7  # the near-half-turn branch
    axis_angle = axes * angles
    recovered = matrix_to_axis_angle(axis_angle_to_matrix(axis_angle))
    assert torch.allclose(recovered, axis_angle, atol=1e-6)
