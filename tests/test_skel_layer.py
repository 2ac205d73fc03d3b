"""The SKEL layer against the independent body-models implementation, and its own invariants."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from hsmr_model import skel_constants as C
from hsmr_model.model_files import read_keypoint_regressor
from hsmr_model.regressor import VertexRegressor
from hsmr_model.skel_layer import SKELLayer, bone_rest_orientation, local_offsets
from tests.conftest import random_poses_in_limits


@pytest.fixture(scope="module", params=["male", "female"])
def skel(request, model_paths):
    return request.param, SKELLayer.from_file(model_paths.skel(request.param))


@pytest.fixture(scope="module")
def male(model_paths):
    return SKELLayer.from_file(model_paths.skel_male)


def test_matches_body_models_on_100_random_poses(skel, model_paths):
    from body_models.skel._pose import unpack_pose
    from body_models.skel.torch import SKEL

    sex, layer = skel
    reference = SKEL(model_path=model_paths.skel(sex), gender=sex)
    rng = np.random.default_rng(1)
    q = torch.as_tensor(random_poses_in_limits(rng, 100), dtype=torch.float32)
    betas = torch.as_tensor(rng.uniform(-2, 2, size=(100, 10)), dtype=torch.float32)
    trans = torch.as_tensor(rng.normal(size=(100, 3)), dtype=torch.float32)

    ours = layer(q, betas, trans)
    body_pose, head_pose = unpack_pose(torch, q)
    ref_verts = reference.forward_vertices(body_pose, head_pose, shape=betas, global_translation=trans)
    ref_joints = reference.forward_skeleton(body_pose, head_pose, shape=betas, global_translation=trans)[..., :3, 3]

    assert (ours.skin_verts - ref_verts).norm(dim=-1).max() < 1e-4
    assert (ours.joints - ref_joints).norm(dim=-1).max() < 1e-4
    # The poses are not trivial: bodies move far from the rest pose.
    assert (ours.skin_verts - trans[:, None] - layer.skin_template).norm(dim=-1).max() > 0.3


def test_rest_pose_reproduces_template_and_regressed_joints(male):
    zero_q, zero_b = torch.zeros(1, 46), torch.zeros(1, 10)
    out = male(zero_q, zero_b)
    assert torch.allclose(out.skin_verts[0], male.skin_template, atol=1e-6)
    assert torch.allclose(out.joints[0], male.joint_template, atol=1e-6)
    assert torch.allclose(out.joints_tpose[0], male.joint_template, atol=1e-6)


def test_joints_only_path_and_keypoint_subset_match_full_forward(male, model_paths):
    rng = np.random.default_rng(2)
    q = torch.as_tensor(random_poses_in_limits(rng, 8), dtype=torch.float32)
    betas = torch.as_tensor(rng.normal(size=(8, 10)), dtype=torch.float32)
    trans = torch.as_tensor(rng.normal(size=(8, 3)), dtype=torch.float32)
    full = male(q, betas, trans)

    joints, orientations = male.joints(q, betas, trans)
    assert torch.allclose(joints, full.joints, atol=1e-6)
    assert torch.allclose(orientations, full.joints_ori, atol=1e-6)

    regressor = VertexRegressor.from_sparse(read_keypoint_regressor(model_paths.keypoint_regressor).matrix)
    assert len(regressor.vertex_ids) < 0.2 * male.skin_template.shape[0]
    assert torch.allclose(male.keypoints(q, betas, trans, regressor), regressor(full.skin_verts), atol=1e-5)


def test_float64_gradcheck_on_small_batch(male):
    double = copy.deepcopy(male).double()
    rng = np.random.default_rng(3)
    q = torch.tensor(random_poses_in_limits(rng, 2) * 0.5, dtype=torch.float64, requires_grad=True)
    betas = torch.tensor(rng.normal(size=(2, 10)), dtype=torch.float64, requires_grad=True)
    trans = torch.tensor(rng.normal(size=(2, 3)), dtype=torch.float64, requires_grad=True)

    def forward(q, betas, trans):
        out = double(q, betas, trans, skeleton_mesh=True)
        return out.skin_verts, out.joints, out.skel_verts

    assert torch.autograd.gradcheck(forward, (q, betas, trans), fast_mode=True, atol=1e-6, rtol=1e-4)


def test_float32_and_float64_agree(male):
    rng = np.random.default_rng(4)
    q = torch.as_tensor(random_poses_in_limits(rng, 4))
    betas = torch.as_tensor(rng.normal(size=(4, 10)))
    out64 = copy.deepcopy(male).double()(q, betas)
    out32 = male(q.float(), betas.float())
    assert out64.skin_verts.dtype == torch.float64
    assert (out64.skin_verts - out32.skin_verts.double()).abs().max() < 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu(male):
    rng = np.random.default_rng(5)
    q = torch.as_tensor(random_poses_in_limits(rng, 16), dtype=torch.float32)
    betas = torch.as_tensor(rng.normal(size=(16, 10)), dtype=torch.float32)
    cpu = male(q, betas).skin_verts
    gpu = copy.deepcopy(male).cuda()(q.cuda(), betas.cuda()).skin_verts.cpu()
    assert (cpu - gpu).abs().max() < 1e-4


def test_skeleton_mesh_moves_rigidly_with_its_bone(male):
    rng = np.random.default_rng(6)
    q = torch.as_tensor(random_poses_in_limits(rng, 3), dtype=torch.float32)
    betas = torch.zeros(3, 10)
    rest = male(torch.zeros(1, 46), torch.zeros(1, 10), skeleton_mesh=True).skel_verts[0]
    posed = male(q, betas, skeleton_mesh=True).skel_verts
    bone_of = male.skel_weights_rigid.argmax(dim=1)
    for bone in (2, 15, 16):  # tibia, humerus, ulna
        ids = torch.nonzero(bone_of == bone)[:, 0]
        # Explicit differences: cdist's |a|²+|b|²−2ab form loses ~1e-4 m in float32.
        rest_d = (rest[ids, None] - rest[None, ids]).norm(dim=-1)
        posed_d = (posed[:, ids, None] - posed[:, None, ids]).norm(dim=-1)
        assert (posed_d - rest_d).abs().max() < 1e-4
    # At rest each bone mesh lies between its joint and its child joint.
    tibia = rest[bone_of == 2]
    knee, ankle = male.joint_template[2], male.joint_template[3]
    assert knee[1] + 0.02 > tibia[:, 1].max() and tibia[:, 1].min() > ankle[1] - 0.02


def test_synthetic_rig_bones_point_along_the_body_at_rest(male):
    """per_joint_rot and apose translations are consistent with the bones: Gk = I at β = 0
    except where SKEL aligns a bone with another segment (ulnae, thorax)."""
    offsets = local_offsets(male.joint_template[None], male.parents)
    rest = bone_rest_orientation(offsets, male.apose_offsets, male.per_joint_rot, male.parents)[0]
    gk = rest @ male.per_joint_rot.transpose(-1, -2)
    eye = torch.eye(3)
    for bone in range(C.NUM_BONES):
        if bone not in (12,):
            assert torch.allclose(gk[bone], eye, atol=1e-5), C.BONE_NAMES[bone]


def test_anatomical_axes_bend_knee_back_and_elbow_forward(male):
    q = torch.zeros(2, 46)
    q[0, C.DOF_NAMES.index("knee_angle_r")] = 1.2
    q[1, C.DOF_NAMES.index("elbow_flexion_r")] = 1.2
    joints, _ = male.joints(q, torch.zeros(2, 10), torch.zeros(2, 3))
    rest = male.joint_template
    ankle_move = joints[0, 3] - rest[3]
    wrist_move = joints[1, 18] - rest[18]
    assert ankle_move[2] < -0.2 and ankle_move[1] > 0.05  # the foot swings back and up
    assert wrist_move[2] > 0.15  # the hand comes forward
    assert torch.allclose(joints[0, 2], rest[2], atol=1e-6)  # the knee itself stays put


def test_component_first_stages_match_their_plain_definitions(male):
    """The batch-last pieces against the textbook forms: per-DoF composition and a sequential chain."""
    from hsmr_model.pose_repr import bone_rotations
    from hsmr_model.skel_layer import chain, local_rotations

    rng = np.random.default_rng(7)
    q = torch.as_tensor(random_poses_in_limits(rng, 5), dtype=torch.float64)
    double = copy.deepcopy(male).double()
    rest_joints = double.rest_joints(torch.as_tensor(rng.normal(size=(5, 10))))
    offsets = local_offsets(rest_joints, double.parents)
    rest = bone_rest_orientation(offsets, double.apose_offsets, double.per_joint_rot, double.parents)
    frame = rest @ double.apose_rot.transpose(-1, -2)
    expected_local = frame @ bone_rotations(q) @ frame.transpose(-1, -2)
    local = local_rotations(rest, double.apose_rot, q)
    assert (local - expected_local).abs().max() < 1e-12

    world_r, world_t = [local[:, 0]], [offsets[:, 0]]
    for j in range(1, C.NUM_BONES):
        p = double.parents[j]
        world_r.append(world_r[p] @ local[:, j])
        world_t.append(world_t[p] + (world_r[p] @ offsets[:, j, :, None])[..., 0])
    chained_r, chained_t = chain(local, offsets, double.parents)
    assert (chained_r - torch.stack(world_r, 1)).abs().max() < 1e-12
    assert (chained_t - torch.stack(world_t, 1)).abs().max() < 1e-12


def test_folded_keypoints_gradcheck_and_match_the_support_skin(male, model_paths):
    """SKELify differentiates the folded regressor: its values and gradients are those of the skinned support."""
    double = copy.deepcopy(male).double()
    regressor = VertexRegressor.from_sparse(read_keypoint_regressor(model_paths.keypoint_regressor).matrix)
    regressor = regressor.to(dtype=torch.float64)
    rng = np.random.default_rng(8)
    q = torch.tensor(random_poses_in_limits(rng, 2) * 0.5, dtype=torch.float64, requires_grad=True)
    betas = torch.tensor(rng.normal(size=(2, 10)), dtype=torch.float64, requires_grad=True)
    trans = torch.tensor(rng.normal(size=(2, 3)), dtype=torch.float64, requires_grad=True)

    folded = double.keypoints(q, betas, trans, regressor)
    skinned = regressor.apply_to_support(double(q, betas, trans, vertex_ids=regressor.vertex_ids).skin_verts)
    assert (folded - skinned).abs().max() < 1e-12
    weights = torch.as_tensor(rng.normal(size=folded.shape))
    grads = torch.autograd.grad((folded * weights).sum(), (q, betas, trans))
    expected = torch.autograd.grad((skinned * weights).sum(), (q, betas, trans))
    assert all((g - e).abs().max() < 1e-10 for g, e in zip(grads, expected, strict=True))
    assert torch.autograd.gradcheck(
        lambda q, b, t: double.keypoints(q, b, t, regressor), (q, betas, trans), fast_mode=True, atol=1e-6, rtol=1e-4
    )


def _plain_pose_translations(q: torch.Tensor, joints: torch.Tensor) -> torch.Tensor:
    """The scapula and spine-arc translations written out term by term: (B, 46), (B, 24, 3) → (B, 24, 3)."""
    out = torch.zeros_like(joints)
    width = (joints[:, C.SCAPULA_BONES["left"]] - joints[:, C.SCAPULA_BONES["right"]]).norm(dim=-1)
    height = (joints[:, 12] - joints[:, 11]).norm(dim=-1)
    for side, bone in C.SCAPULA_BONES.items():
        s = -1.0 if side == "left" else 1.0
        a, t = s * q[:, C.BONE_FIRST_DOF[bone]], s * q[:, C.BONE_FIRST_DOF[bone] + 1] - np.pi / 4
        out[:, bone, 0] = -s * width / 4 * (torch.cos(t) * torch.cos(a) - np.cos(np.pi / 4))
        out[:, bone, 1] = -height / 2 * (torch.sin(t) + np.sin(np.pi / 4))
        out[:, bone, 2] = width / 4 * torch.sin(a)
    for bone, (bend, ext, lower, upper) in C.SPINE_ARC_BONES.items():
        length = (joints[:, upper, 1] - joints[:, lower, 1]).abs()
        chords = []
        for angle in (q[:, bend], q[:, ext]):
            small = angle.abs() < 1e-5  # the chord's limit: L·α/2 sideways, L along
            safe = torch.where(small, torch.ones_like(angle), angle)
            side = torch.where(small, length * angle / 2, length * (1 - torch.cos(safe)) / safe)
            chords.append((side, torch.where(small, length, length * torch.sin(safe) / safe)))
        (x_bend, y_bend), (x_ext, y_ext) = chords
        out[:, bone] = torch.stack([-x_bend, y_bend + y_ext - 2 * length, -x_ext], -1)
    return out


def test_tabled_pose_translations_match_the_plain_formulas(male):
    """`translation_table` regroups the scapula and spine-arc offsets into products; the same numbers,
    also at zero and tiny bending angles where the plain chord switches to its limit."""
    from hsmr_model.skel_layer import pose_translations

    rng = np.random.default_rng(9)
    q = torch.as_tensor(random_poses_in_limits(rng, 6), dtype=torch.float64)
    q[0] = 0.0
    q[1, [bend for bend, *_ in C.SPINE_ARC_BONES.values()]] = 1e-7
    joints = copy.deepcopy(male).double().rest_joints(torch.as_tensor(rng.normal(size=(6, 10))))
    expected = _plain_pose_translations(q, joints)
    assert (pose_translations(q, joints) - expected).abs().max() < 1e-12
    assert expected[2:].abs().max() > 0.01  # the poses do move the scapulae and the spine
    moved = set(C.SCAPULA_BONES.values()) | set(C.SPINE_ARC_BONES)
    assert expected[:, [b for b in range(C.NUM_BONES) if b not in moved]].abs().max() == 0


def test_fused_skeleton_stage_matches_the_plain_rest_orientation(male):
    """The layer's rest rows (one GEMM in β, or the joints for `pose_skeleton`) give the rest orientations
    and local translations of the plain definitions."""
    from hsmr_model.skel_layer import pose_translations

    double = copy.deepcopy(male).double()
    rng = np.random.default_rng(10)
    q = torch.as_tensor(random_poses_in_limits(rng, 5), dtype=torch.float64)
    betas = torch.as_tensor(rng.normal(size=(5, 10)) * 2)
    rest_joints = double.rest_joints(betas)
    offsets = local_offsets(rest_joints, double.parents)
    expected = bone_rest_orientation(offsets, double.apose_offsets, double.per_joint_rot, double.parents)
    pose = double.posed_skeleton(q, betas)
    assert (pose.rest_orientation.permute(3, 2, 0, 1) - expected).abs().max() < 1e-6  # float32-derived constants
    translations = pose.translations.permute(2, 1, 0)
    assert (translations - offsets - pose_translations(q, rest_joints)).abs().max() < 1e-6
    *_, from_joints = double.pose_skeleton(q, rest_joints)
    assert (from_joints - expected).abs().max() < 1e-6


def test_rotation_between_handles_the_general_and_the_antiparallel_case():
    from hsmr_model.skel_layer import cf_rotation_between

    rng = np.random.default_rng(11)
    source = torch.as_tensor(rng.normal(size=(3, 50)))
    target = torch.as_tensor(rng.normal(size=(3, 50))) * 3
    target[:, :5] = -2 * source[:, :5]  # antiparallel: a half turn
    rotation = cf_rotation_between(source, target).permute(2, 0, 1)  # (50, 3, 3)
    turned = (rotation @ source.T[..., None])[..., 0]
    assert torch.allclose(turned / turned.norm(dim=-1, keepdim=True), (target / target.norm(dim=0)).T, atol=1e-12)
    assert torch.allclose(rotation @ rotation.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(50, 3, 3))
    assert torch.allclose(torch.linalg.det(rotation), torch.ones(50, dtype=torch.float64))
