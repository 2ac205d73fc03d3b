"""The closed-form start of SMPL → SKEL fitting (`hsmr_model.skel_fit`): SKEL's pose, shape and
translation from an SMPL pose and shape, with no iteration.

Both models skin the same T-pose mesh topology by linear blend skinning, and at q = 0 every SKEL
bone's world rotation is the identity, as every SMPL joint's is at zero pose. A vertex follows the
world rotation of the bones it is weighted to, so each SKEL bone should turn the way the SMPL joints
that skin the same vertices turn: its target world rotation is the chordal mean of the SMPL world
rotations weighted by the overlap of the two models' skin weights (`SmplToSkel`). Going down the SKEL
tree, the local rotation a bone needs under its parent's *actual* (already projected) world rotation
is undone to the joint rotation Rp (local R = F·Rp·Fᵀ, F = Rk01·Raᵀ) and projected onto the bone's
DoFs: Euler angles by the 88-D target's conventions for 3-DoF bones, the best angle about the axis
for 1-DoF bones, two Euler angles for the wrists; then clipped into the joint limits. What a bone
cannot represent (a twist at the elbow) is passed on to its children. β comes from SMPL's β through
the least-squares map between the two shape spaces, the translation from aligning the pelvis joint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import scipy.sparse as sp
import torch

from hsmr_model import skel_constants as C
from hsmr_model.pose_repr import euler_conventions
from hsmr_model.regressor import VertexRegressor
from hsmr_model.rotations import axis_angle_to_matrix, matrix_to_euler, rotation_about_axis
from hsmr_model.skel_layer import SKELLayer, bone_rest_orientation, local_offsets
from hsmr_model.smpl_layer import SmplParams

_AXIS_LETTERS = "XYZ"


def farthest_point_order(points: torch.Tensor) -> torch.Tensor:
    """Greedy farthest-point ordering from point 0: every prefix is well spread.

    Args:
        points: (N, 3).
    Returns:
        (N,) int64, a permutation.
    """
    order = torch.zeros(points.shape[0], dtype=torch.int64)
    distance = torch.full((points.shape[0],), math.inf, dtype=points.dtype)
    for k in range(1, points.shape[0]):
        distance = torch.minimum(distance, (points - points[order[k - 1]]).square().sum(-1))
        order[k] = distance.argmax()
    return order


@dataclass(frozen=True)
class SmplToSkel:
    """What the fit needs from the pair of models, computed once.

    bone_weights[b, j] is the share of SKEL bone b's skinning that SMPL joint j carries on the
    same vertices (rows sum to 1); β_SKEL = beta_matrix·β_SMPL + beta_offset is the least-squares
    map between the shape spaces (SKEL's shaped template closest to SMPL's); `vertex_order` is a
    farthest-point ordering of the template, so any prefix of it is a well-spread subset.
    """

    bone_weights: torch.Tensor  # (24, 24)
    beta_matrix: torch.Tensor  # (10, 10)
    beta_offset: torch.Tensor  # (10,)
    vertex_order: torch.Tensor  # (V,) int64
    osim_regressor: VertexRegressor  # J_regressor_osim: vertices → the 24 anatomical joints

    @classmethod
    def from_models(cls, skel: SKELLayer, osim_regressor: sp.spmatrix, smpl: torch.nn.Module) -> SmplToSkel:
        """From a SKEL layer, its file's J_regressor_osim and an `smplx.SMPL` (v_template, shapedirs, lbs_weights)."""
        overlap = skel.skin_weights.T.double().cpu() @ smpl.lbs_weights.double().cpu()
        skel_dirs = skel.shapedirs.flatten(0, 1).double().cpu()
        smpl_dirs = smpl.shapedirs[..., : C.NUM_BETAS].flatten(0, 1).double().cpu()
        pinv = torch.linalg.pinv(skel_dirs)
        offset = (smpl.v_template.double().cpu() - skel.skin_template.double().cpu()).flatten()
        return cls(
            bone_weights=(overlap / overlap.sum(1, keepdim=True)).float(),
            beta_matrix=(pinv @ smpl_dirs).float(),
            beta_offset=(pinv @ offset).float(),
            vertex_order=farthest_point_order(skel.skin_template.cpu()),
            osim_regressor=VertexRegressor.from_sparse(osim_regressor),
        )

    def to(self, device: torch.device) -> SmplToSkel:
        return SmplToSkel(*(getattr(self, f.name).to(device) for f in fields(self)))


def smpl_world_rotations(global_orient: torch.Tensor, body_pose: torch.Tensor) -> torch.Tensor:
    """World rotation of every SMPL joint (the rotation its skinned vertices follow).

    Args:
        global_orient: (B, 3); body_pose: (B, 69), axis-angle.
    Returns:
        (B, 24, 3, 3).
    """
    local = axis_angle_to_matrix(torch.cat([global_orient, body_pose], dim=1).unflatten(1, (-1, 3)))
    world = [local[:, 0]]
    for j in range(1, local.shape[1]):
        world.append(world[C.SMPL_PARENTS[j]] @ local[:, j])
    return torch.stack(world, dim=1)


def chordal_mean(rotations: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted chordal L2 means of rotations: Σ w·R projected onto SO(3) by SVD.

    Args:
        rotations: (B, J, 3, 3); weights: (K, J).
    Returns:
        (B, K, 3, 3).
    """
    blend = torch.einsum("kj,bjxy->bkxy", weights, rotations)
    u, _, vh = torch.linalg.svd(blend)
    fix = torch.ones_like(blend[..., 0])
    fix[..., 2] = torch.linalg.det(u @ vh)
    return (u * fix[..., None, :]) @ vh


def angle_about_axis(rotation: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    """The angle θ whose rotation about `axis` is closest to `rotation` (Frobenius).

    Maximising tr(Rᵀ·exp(θ[a]×)) gives θ = atan2(a·vee(R − Rᵀ), tr R − aᵀRa).

    Args:
        rotation: (..., 3, 3); axis: (3,) unit.
    Returns:
        (...,).
    """
    r = rotation
    vee = torch.stack([r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]], -1)
    trace = r.diagonal(dim1=-2, dim2=-1).sum(-1)
    return torch.atan2(vee @ axis, trace - torch.einsum("...xy,x,y->...", r, axis, axis))


def _two_dof_convention(bone: int) -> tuple[str, np.ndarray]:
    """Euler order (second axis, first axis, the unused one) and axis signs of a 2-DoF bone."""
    first = C.BONE_FIRST_DOF[bone]
    axes = C.dof_axes()[first : first + 2]
    letters = [_AXIS_LETTERS[int(np.argmax(np.abs(a)))] for a in axes]
    signs = np.array([np.sign(a[np.argmax(np.abs(a))]) for a in axes])
    unused = next(letter for letter in _AXIS_LETTERS if letter not in letters)
    return letters[1] + letters[0] + unused, signs


_THREE_DOF_CONVENTIONS = euler_conventions()


def bone_dofs_from_rotation(rotation: torch.Tensor, bone: int) -> torch.Tensor:
    """Project a joint rotation Rp onto one bone's DoFs (not clipped to the limits).

    3-DoF bones: the Euler angles of the 88-D target's 6D path (pose_repr's conventions);
    1-DoF bones: the best angle about the axis; 2-DoF wrists: R ≈ R_a2(q2)·R_a1(q1)·R_rest, the
    remaining twist dropped.

    Args:
        rotation: (B, 3, 3).
    Returns:
        (B, number of the bone's DoFs).
    """
    count, first = C.BONE_NUM_DOFS[bone], C.BONE_FIRST_DOF[bone]
    if count == 3:
        order, signs = _THREE_DOF_CONVENTIONS[bone]
        return matrix_to_euler(rotation, order).flip(-1) * rotation.new_tensor(signs)
    if count == 1:
        return angle_about_axis(rotation, rotation.new_tensor(C.dof_axes()[first]))[:, None]
    order, signs = _two_dof_convention(bone)
    second, first_angle, _ = matrix_to_euler(rotation, order).unbind(-1)
    return torch.stack([first_angle * signs[0], second * signs[1]], dim=-1)


def bone_rotation(angles: torch.Tensor, bone: int) -> torch.Tensor:
    """One bone's joint rotation Rp = R_n⋯R_1 from its DoF values (B, n) → (B, 3, 3); cf. `bone_rotations`."""
    first = C.BONE_FIRST_DOF[bone]
    axes = angles.new_tensor(C.dof_axes()[first : first + angles.shape[1]])
    rotation = torch.eye(3, dtype=angles.dtype, device=angles.device).expand(angles.shape[0], 3, 3)
    for k in range(angles.shape[1]):
        rotation = rotation_about_axis(angles[:, k], axes[k]) @ rotation
    return rotation


def limits_tensor(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint limits (46,) each, −inf/+inf for the pelvis, on `like`'s device and dtype."""
    lower, upper = C.dof_limits()
    return like.new_tensor(lower), like.new_tensor(upper)


def pose_from_bone_rotations(
    target_world: torch.Tensor, rest_orientation: torch.Tensor, apose_rot: torch.Tensor, parents: tuple[int, ...]
) -> torch.Tensor:
    """q whose bone world rotations follow `target_world`, bone by bone down the tree.

    Each bone's local rotation is taken relative to its parent's world rotation *as realised*
    by the already projected and clipped DoFs, so what a parent cannot represent is passed on.

    Args:
        target_world: (B, 24, 3, 3); rest_orientation: (B, 24, 3, 3) Rk01; apose_rot: (24, 3, 3) Ra.
    Returns:
        q (B, 46) inside the joint limits.
    """
    frame = rest_orientation @ apose_rot.transpose(-1, -2)  # local R = F·Rp·Fᵀ
    lower, upper = limits_tensor(target_world)
    q = target_world.new_zeros(target_world.shape[0], C.NUM_DOFS)
    world: list[torch.Tensor] = []
    for bone, parent in enumerate(parents):
        wanted = target_world[:, bone] if parent < 0 else world[parent].transpose(-1, -2) @ target_world[:, bone]
        dofs = slice(C.BONE_FIRST_DOF[bone], C.BONE_FIRST_DOF[bone] + C.BONE_NUM_DOFS[bone])
        joint = frame[:, bone].transpose(-1, -2) @ wanted @ frame[:, bone]
        q[:, dofs] = torch.clamp(bone_dofs_from_rotation(joint, bone), lower[dofs], upper[dofs])
        local = frame[:, bone] @ bone_rotation(q[:, dofs], bone) @ frame[:, bone].transpose(-1, -2)
        world.append(local if parent < 0 else world[parent] @ local)
    return q


def initial_parameters(
    skel: SKELLayer, link: SmplToSkel, smpl: SmplParams, target_joints: torch.Tensor
) -> torch.Tensor:
    """The closed-form initialisation (see the module docstring).

    Args:
        smpl: the batch's SMPL parameters; target_joints: (B, 24, 3) anatomical joints.
    Returns:
        x = [q | β | trans] (B, 59).
    """
    betas = smpl.betas @ link.beta_matrix.T + link.beta_offset
    rest_joints = skel.rest_joints(betas)
    offsets = local_offsets(rest_joints, skel.parents)
    rest_orientation = bone_rest_orientation(offsets, skel.apose_offsets, skel.per_joint_rot, skel.parents)
    target_world = chordal_mean(smpl_world_rotations(smpl.global_orient, smpl.body_pose), link.bone_weights)
    q = pose_from_bone_rotations(target_world, rest_orientation, skel.apose_rot, skel.parents)
    return torch.cat([q, betas, target_joints[:, 0] - rest_joints[:, 0]], dim=1)
