"""Mirroring SKEL labels and keypoints: involution, mirrored bodies, joint limits.

The synthetic SKEL model is built from an exactly left-right symmetric template, but three of its
parts are not mirror symmetric, so "flipped mesh = mirrored mesh" holds exactly only where they
do not reach (the numbers are measured on the seed-0 models):

- skinning weights: 432 of 6890 vertices (the crotch, where nearest-bone ties go to the right
  femur) have weights that are not the mirror of their twin's; they move up to ~5 cm apart;
- pose blend shapes (posedirs) are random: each vertex may differ by at most the two pose offsets;
- shape direction β1 (girth) is asymmetric (3 cm per unit at worst), so β stays 0 or β1 = 0 here.

The ankle DoF itself is not a mirror pair in SKEL (talus_l has talus_r's axis), so its angles are
zero wherever exactness is asserted, and `test_ankle_axes_are_not_mirror_images` shows the effect.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from hsmr_model import flip
from hsmr_model import skel_constants as C
from hsmr_model.model_files import read_keypoint_regressor
from hsmr_model.skel_layer import SKELLayer
from tests.conftest import random_poses_in_limits

ANKLES = [C.DOF_NAMES.index("ankle_angle_r"), C.DOF_NAMES.index("ankle_angle_l")]
X_MIRROR = np.array([-1.0, 1.0, 1.0])
BONE_TWIN = np.array([C.BONE_NAMES.index(flip.mirror_name(n, ("r", "l"))) for n in C.BONE_NAMES])
# HMR2.0's flip permutation of the 44 keypoints (25 OpenPose, then 19 extra), written out independently.
HMR2_FLIP_PERMUTATION = [0, 1, 5, 6, 7, 2, 3, 4, 8, 12, 13, 14, 9, 10, 11, 16, 15, 18, 17, 22, 23, 24, 19, 20, 21] + [
    25 + i for i in (5, 4, 3, 2, 1, 0, 11, 10, 9, 8, 7, 6, 12, 13, 14, 15, 16, 17, 18)
]


@pytest.fixture(scope="module")
def layer(model_paths) -> SKELLayer:
    return SKELLayer.from_file(model_paths.skel("male")).double()


@pytest.fixture(scope="module")
def vertex_twin(layer) -> np.ndarray:
    """Each skin vertex's mirror twin: nearest neighbour of the mirrored rest template."""
    template = layer.skin_template.numpy()
    distance, twin = cKDTree(template).query(template * X_MIRROR)
    assert distance.max() < 1e-9, "the synthetic template is exactly symmetric"
    return twin


def _poses(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    q = random_poses_in_limits(rng, count)
    q[:, ANKLES] = 0.0
    return q, rng.normal(0.0, 0.3, (count, 3))


def _pair(layer: SKELLayer, q: np.ndarray, betas: np.ndarray, trans: np.ndarray, blend: bool = True):
    """SKEL outputs of (q, trans) and of its flip, same β."""

    def run(poses, translation):
        as_t = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
        with torch.no_grad():
            return layer(as_t(poses), as_t(betas), as_t(translation), pose_blendshapes=blend)

    return run(q, trans), run(flip.flip_q(q), flip.flip_trans(trans))


def test_flip_twice_is_identity():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(5, C.NUM_DOFS))
    keypoints = rng.normal(size=(5, C.NUM_KEYPOINTS, 3))
    np.testing.assert_array_equal(flip.flip_q(flip.flip_q(q)), q)
    np.testing.assert_array_equal(flip.flip_keypoints(flip.flip_keypoints(keypoints)), keypoints)
    np.testing.assert_allclose(flip.flip_keypoints(flip.flip_keypoints(keypoints, 128.0), 128.0), keypoints, atol=1e-12)
    assert not np.allclose(flip.flip_q(q), q)


def test_keypoint_permutation_is_hmr2s():
    assert flip.KEYPOINT_PARTNER.tolist() == HMR2_FLIP_PERMUTATION


def test_keypoint_flip_moves_x_only():
    keypoints = np.random.default_rng(2).uniform(-0.5, 0.5, (C.NUM_KEYPOINTS, 3))
    flipped = flip.flip_keypoints(keypoints)
    np.testing.assert_array_equal(flipped[:, 0], -keypoints[flip.KEYPOINT_PARTNER, 0])
    np.testing.assert_array_equal(flipped[:, 1:], keypoints[flip.KEYPOINT_PARTNER, 1:])
    pixels = flip.flip_keypoints(keypoints * 256 + 128, x_center=128.0)
    np.testing.assert_allclose(pixels, flipped * 256 + 128, atol=1e-9)


def test_signs_follow_anatomy():
    sign = dict(zip(C.DOF_NAMES, flip.MIRROR.sign, strict=True))
    # The image flip keeps flexion, tilt and extension, and reverses sideways bending, twisting and
    # the turn of the whole body.
    assert [sign[n] for n in ("pelvis_tilt", "hip_flexion_r", "knee_angle_l", "lumbar_extension")] == [1, 1, 1, 1]
    assert [sign[n] for n in ("pelvis_list", "pelvis_rotation", "lumbar_bending", "head_twist")] == [-1, -1, -1, -1]


def test_flipped_joints_are_mirrored_joints(layer):
    q, trans = _poses(32)
    original, flipped = _pair(layer, q, np.zeros((32, C.NUM_BETAS)), trans)
    mirrored = original.joints.numpy()[:, BONE_TWIN] * X_MIRROR
    np.testing.assert_allclose(flipped.joints.numpy(), mirrored, atol=1e-6)


def test_flipped_joints_with_symmetric_shapes(layer):
    q, trans = _poses(32, seed=3)
    betas = np.random.default_rng(3).normal(size=(32, C.NUM_BETAS))
    betas[:, 1] = 0.0  # the synthetic girth direction is asymmetric
    original, flipped = _pair(layer, q, betas, trans)
    mirrored = original.joints.numpy()[:, BONE_TWIN] * X_MIRROR
    # 0.07 mm measured: the remaining shape directions are symmetric up to the humanoid's construction.
    np.testing.assert_allclose(flipped.joints.numpy(), mirrored, atol=2e-4)


def test_flipped_skin_is_mirrored_skin(layer, vertex_twin):
    q, trans = _poses(32, seed=4)
    original, flipped = _pair(layer, q, np.zeros((32, C.NUM_BETAS)), trans)
    mirrored = original.skin_verts.numpy()[:, vertex_twin] * X_MIRROR
    error = np.linalg.norm(flipped.skin_verts.numpy() - mirrored, axis=-1)

    weights = layer.skin_weights.numpy()
    symmetric = np.abs(weights[vertex_twin][:, BONE_TWIN] - weights).max(1) < 1e-6
    # Where the weights mirror, everything cancels but the pose blend shapes, which the blended
    # rotations (norm ≤ 1) can only carry: |error| ≤ |offset(q) at the twin| + |offset(flip q)|.
    offsets = np.linalg.norm(original.pose_offsets.numpy(), axis=-1)[:, vertex_twin]
    bound = offsets + np.linalg.norm(flipped.pose_offsets.numpy(), axis=-1)
    assert (error[:, symmetric] <= bound[:, symmetric] + 1e-6).all()
    assert symmetric.sum() == 6890 - 432
    assert error.mean() < 2e-3  # 0.8 mm measured; the crotch vertices alone reach ~5 cm
    assert error[:, ~symmetric].max() > 0.01, "the asymmetric weights show: the mesh test would see a wrong flip"


def test_flipped_skin_without_blend_shapes_is_exact_where_weights_mirror(layer, vertex_twin):
    q, trans = _poses(16, seed=5)
    original, flipped = _pair(layer, q, np.zeros((16, C.NUM_BETAS)), trans, blend=False)
    mirrored = original.skin_verts.numpy()[:, vertex_twin] * X_MIRROR
    error = np.linalg.norm(flipped.skin_verts.numpy() - mirrored, axis=-1)
    weights = layer.skin_weights.numpy()
    symmetric = np.abs(weights[vertex_twin][:, BONE_TWIN] - weights).max(1) < 1e-6
    assert error[:, symmetric].max() < 1e-5


def test_flipped_keypoints_follow_the_flipped_body(layer, model_paths):
    q, trans = _poses(16, seed=6)
    original, flipped = _pair(layer, q, np.zeros((16, C.NUM_BETAS)), trans)
    regressor = read_keypoint_regressor(model_paths.keypoint_regressor).matrix.toarray()
    keypoints = np.einsum("kv,bvc->bkc", regressor, original.skin_verts.numpy())
    expected = np.einsum("kv,bvc->bkc", regressor, flipped.skin_verts.numpy())
    error = np.linalg.norm(flip.flip_keypoints(keypoints) - expected, axis=-1)
    # The synthetic regressor is not mirror symmetric either and leans on crotch and heel vertices:
    # hips ~18 mm, heels ~10 mm, the rest ~1 mm (measured). Without the permutation it is decimetres.
    assert np.median(error) < 2e-3 and error.max() < 0.03
    unpermuted = np.linalg.norm(keypoints * X_MIRROR - expected, axis=-1)
    assert unpermuted.max() > 0.1


def test_ankle_axes_are_not_mirror_images(layer):
    assert flip.inexact_mirror_dofs() == ("ankle_angle_r", "ankle_angle_l")
    np.testing.assert_allclose(flip.MIRROR.alignment[ANKLES], 0.9174, atol=1e-4)  # 23.5° apart
    q, trans = _poses(8, seed=7)
    q[:, ANKLES] = 0.6
    original, flipped = _pair(layer, q, np.zeros((8, C.NUM_BETAS)), trans)
    error = np.linalg.norm(flipped.joints.numpy() - original.joints.numpy()[:, BONE_TWIN] * X_MIRROR, axis=-1)
    feet = [C.BONE_NAMES.index(n) for n in ("calcn_r", "toes_r", "calcn_l", "toes_l")]
    assert error[:, feet].max() > 0.01  # below the ankle the flip is off by centimetres
    assert np.delete(error, feet, axis=1).max() < 1e-6  # and nowhere else


def test_flipped_poses_stay_in_mirrored_limits():
    assert flip.mirror_limit_mismatches() == (
        "scapula_elevation_r",
        "scapula_upward_rot_r",
        "pro_sup_r",
        "scapula_elevation_l",
        "scapula_upward_rot_l",
        "pro_sup_l",
    )
    q = random_poses_in_limits(np.random.default_rng(8), 2000)
    flipped = flip.flip_q(q)
    lower, upper = C.dof_limits()
    inside = (flipped >= lower - 1e-9) & (flipped <= upper + 1e-9)
    mirrored = [i for i, name in enumerate(C.DOF_NAMES) if name not in flip.mirror_limit_mismatches()]
    assert inside[:, mirrored].all()
    # Scapula elevation is [-0.4, -0.1] on both sides, but the mirror negates it: every flip leaves.
    elevation = [C.DOF_NAMES.index("scapula_elevation_r"), C.DOF_NAMES.index("scapula_elevation_l")]
    assert not inside[:, elevation].any()
