"""Evaluation metrics against cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hsmr_model import metrics as M
from hsmr_model.rotations import axis_angle_to_matrix, matrix_to_axis_angle


def _rotation(axis, degrees) -> np.ndarray:
    vector = np.asarray(axis, np.float64) / np.linalg.norm(axis) * math.radians(degrees)
    return axis_angle_to_matrix(torch.as_tensor(vector)).numpy()


def _euler_matrix(order: str, degrees: tuple[float, float, float]) -> np.ndarray:
    """R = R_A(a)·R_B(b)·R_C(c) for order "ABC"."""
    axes = {"X": (1, 0, 0), "Y": (0, 1, 0), "Z": (0, 0, 1)}
    matrix = np.eye(3)
    for axis, angle in zip(order, degrees, strict=True):
        matrix = matrix @ _rotation(axes[axis], angle)
    return matrix


def _body_pose(joint_rotations: dict[int, np.ndarray]) -> np.ndarray:
    """(1, 69) axis-angle with the given SMPL joints rotated, the others at rest."""
    pose = np.zeros((23, 3))
    for joint, matrix in joint_rotations.items():
        pose[joint - 1] = matrix_to_axis_angle(torch.as_tensor(matrix)).numpy()
    return pose.reshape(1, 69)


def _skeleton(rng, count=3) -> np.ndarray:
    return rng.normal(0, 0.3, (count, 44, 3))


# ---------------------------------------------------------------------------------- 3D errors
def test_similarity_transform_of_the_truth_has_zero_pa_error_and_the_known_mpjpe():
    rng = np.random.default_rng(0)
    truth = _skeleton(rng)
    rotation = _rotation([0.3, -1.0, 0.5], 40.0)
    predicted = 1.3 * truth @ rotation.T + np.array([0.2, -0.1, 3.0])
    assert np.allclose(M.pa_mpjpe(predicted, truth), 0.0, atol=1e-9)
    # MPJPE by hand: centre on the pelvis, then the mean distance over the 14 joints.
    index = list(M.LSP_JOINTS)
    centred_truth = truth[:, index] - truth[:, [39]]
    centred_pred = predicted[:, index] - predicted[:, [39]]
    expected = np.linalg.norm(centred_pred - centred_truth, axis=-1).mean(1) * 1000
    assert np.allclose(M.mpjpe(predicted, truth), expected)
    assert (expected > 10).all()


def test_pure_offset_vanishes_after_centring_a_single_joint_offset_does_not():
    rng = np.random.default_rng(1)
    truth = _skeleton(rng)
    assert np.allclose(M.mpjpe(truth + np.array([0.5, 1.0, -2.0]), truth), 0.0, atol=1e-9)
    moved = truth.copy()
    moved[:, 25] += np.array([0.0, 0.014, 0.0])  # 14 mm on one of the 14 joints: 1 mm on average
    assert np.allclose(M.mpjpe(moved, truth), 1.0)
    assert M.LSP_JOINTS == (25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 43)


def test_mpvpe_is_root_centred_and_pa_mpvpe_ignores_similarity():
    rng = np.random.default_rng(2)
    truth = rng.normal(0, 0.3, (2, 50, 3))
    shifted = truth + np.array([0.0, 0.0, 0.010])  # a 10 mm offset of every vertex
    root = truth[:, 0]
    assert np.allclose(M.mpvpe(shifted, truth, root, root), 10.0)
    assert np.allclose(M.mpvpe(shifted, truth, shifted[:, 0], root), 0.0, atol=1e-9)
    scaled = 0.8 * truth @ _rotation([1, 1, 0], 120).T - 2.0
    assert np.allclose(M.pa_mpvpe(scaled, truth), 0.0, atol=1e-9)


def test_procrustes_never_reflects():
    rng = np.random.default_rng(3)
    truth = rng.normal(0, 1, (1, 30, 3))
    mirrored = truth * np.array([-1.0, 1.0, 1.0])
    # The best proper rotation cannot undo a mirror image: the error stays well above zero.
    assert M.pa_mpvpe(mirrored, truth)[0] > 100


# ------------------------------------------------------------------------------------------ PCK
def test_pck_counts_visible_keypoints_within_the_threshold():
    truth = np.zeros((2, 25, 2))
    predicted = np.zeros((2, 25, 2))
    predicted[0, :10, 0] = 0.04  # within 0.05 of the crop side
    predicted[0, 10:20, 1] = 0.07  # within 0.1 only
    predicted[0, 20:, 0] = 0.3  # far off
    visible = np.ones((2, 25), bool)
    visible[1] = False
    visible[1, 0] = True  # one visible keypoint, and it is exact
    assert M.pck(predicted, truth, visible, 0.05).tolist() == [10 / 25, 1.0]
    assert M.pck(predicted, truth, visible, 0.1).tolist() == [20 / 25, 1.0]
    # Invisible keypoints never count, however wrong.
    predicted[1, 1:] = 5.0
    assert M.pck(predicted, truth, visible, 0.05)[1] == 1.0
    assert np.isnan(M.pck(predicted, truth, np.zeros((2, 25), bool), 0.05)).all()


# ------------------------------------------------------------------------- joint-limit violations
def test_skel_knee_bent_backwards_by_15_degrees():
    q = np.zeros((2, 46))
    q[0, 6] = math.radians(-15)  # right knee hyperextended
    q[1, 13] = math.radians(100)  # left knee flexed, within [0, 135°]
    at0, at10 = M.skel_violations(q, 0.0), M.skel_violations(q, 10.0)
    assert at0["right_knee"] == pytest.approx([15.0, 0.0])
    assert at10["right_knee"] == pytest.approx([5.0, 0.0])
    assert at0["left_knee"] == pytest.approx([0.0, 0.0])
    assert M.skel_violations(q, 20.0)["right_knee"] == pytest.approx([0.0, 0.0])


def test_skel_elbow_is_the_max_over_flexion_and_pronation_and_angles_wrap():
    q = np.zeros((1, 46))
    q[0, 32] = math.radians(-5)  # elbow_flexion_r 5° past 0
    q[0, 33] = 1.178097 + math.radians(12)  # pro_sup_r 12° past its upper limit
    q[0, 42] = math.radians(360 + 30)  # a full turn more than 30° is 30°: within the limits
    out = M.skel_violations(q)
    assert out["right_elbow"] == pytest.approx([12.0])
    assert out["left_elbow"] == pytest.approx([0.0], abs=1e-9)


def test_violation_shares_at_the_table_4_tolerances():
    q = np.zeros((4, 46))
    q[:, 6] = np.radians([-3.0, -7.0, -15.0, -25.0])
    shares = M.violation_shares(lambda t: M.skel_violations(q, t))
    assert shares["right_knee"] == {0.0: 1.0, 5.0: 0.75, 10.0: 0.5, 20.0: 0.25, 30.0: 0.0}
    assert shares["left_knee"][0.0] == 0.0
    assert list(shares) == list(M.LIMB_PARTS)


def test_smpl_knee_bent_backwards_and_elbows_flexed_the_right_way():
    backwards = _body_pose({5: _rotation([1, 0, 0], -15), 4: _rotation([1, 0, 0], 90)})
    at0, at10 = M.smpl_violations(backwards, 0.0), M.smpl_violations(backwards, 10.0)
    assert at0["right_knee"] == pytest.approx([15.0])
    assert at10["right_knee"] == pytest.approx([5.0])
    assert at0["left_knee"] == pytest.approx([0.0], abs=1e-6)
    # Elbows flex about +y (right) and −y (left), as in the synthetic world's SMPL.
    flexed = _body_pose({19: _rotation([0, 1, 0], 90), 18: _rotation([0, -1, 0], 90)})
    assert M.smpl_violations(flexed)["right_elbow"] == pytest.approx([0.0], abs=1e-6)
    assert M.smpl_violations(flexed)["left_elbow"] == pytest.approx([0.0], abs=1e-6)
    hyper = _body_pose({19: _rotation([0, 1, 0], -20), 18: _rotation([0, -1, 0], -20)})
    assert M.smpl_violations(hyper)["right_elbow"] == pytest.approx([20.0])
    assert M.smpl_violations(hyper)["left_elbow"] == pytest.approx([20.0])


def test_both_euler_solutions_describe_the_rotation_and_the_smaller_violation_counts():
    # Knee Euler XZY (x, z, y) = (120°, 95°, 0°): the extraction keeps the middle angle in ±90°, so it
    # returns the other solution (−60°, 85°, 180°), which violates by 180° (y); the given one by 95° (z).
    matrix = _euler_matrix("XZY", (120.0, 95.0, 0.0))
    first, second = M.euler_solutions(matrix[None], "XZY")
    for angles in (first, second):
        assert np.allclose(_euler_matrix("XZY", tuple(np.degrees(angles[0]))), matrix, atol=1e-9)
    assert np.degrees(first[0]) == pytest.approx([-60.0, 85.0, 180.0])
    assert np.degrees(second[0]) == pytest.approx([120.0, 95.0, 0.0], abs=1e-9)
    out = M.smpl_violations(_body_pose({4: matrix}))
    assert out["left_knee"] == pytest.approx([95.0])
    assert M.smpl_violations(_body_pose({4: matrix}), 30.0)["left_knee"] == pytest.approx([65.0])


def test_wrap_angle_is_half_open_at_minus_pi():
    assert M.wrap_angle(np.array([-np.pi, np.pi, 3 * np.pi, 0.5])) == pytest.approx([np.pi, np.pi, np.pi, 0.5])
