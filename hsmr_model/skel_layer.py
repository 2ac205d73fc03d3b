"""The SKEL body model as a batched torch layer, read from the official `skel_{male,female}.pkl`.

The math is a set of small pure functions (shapes in the docstrings, batch first); `SKELLayer`
only holds the model arrays as buffers and wires the functions together. CPU and CUDA,
float32 and float64, differentiable in q, β and the translation.

Forward pass (shared/reference/skel_model_facts.md): shape the skin, regress the anatomical
joints, orient each bone's rest frame along its bone, compose the per-DoF rotations, add the
scapula and spine translations, chain the transforms, apply SMPL pose blend shapes, skin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from hsmr_model import skel_constants as C
from hsmr_model.model_files import SkelModelData, read_skel_model
from hsmr_model.pose_repr import bone_rotations
from hsmr_model.regressor import VertexRegressor
from hsmr_model.rotations import rotation_between_vectors


@dataclass
class SkelOutput:
    """What one SKEL forward pass returns (B: batch, V: skin vertices, Nk: skeleton vertices)."""

    skin_verts: torch.Tensor | None  # (B, V, 3), or (B, len(vertex_ids), 3) for a subset
    skel_verts: torch.Tensor | None  # (B, Nk, 3) when asked for
    joints: torch.Tensor  # (B, 24, 3) SKEL joint positions
    joints_ori: torch.Tensor  # (B, 24, 3, 3) world orientation of each bone
    smpl_joints: torch.Tensor | None  # (B, 24, 3) SMPL J_regressor applied to the posed skin
    joints_tpose: torch.Tensor  # (B, 24, 3) joints of the shaped body before posing
    v_shaped: torch.Tensor | None  # (B, V, 3)
    pose_offsets: torch.Tensor | None  # (B, V, 3)
    poses: torch.Tensor
    betas: torch.Tensor
    trans: torch.Tensor


# ------------------------------------------------------------------------------------ pure math
def blend_shapes(template: torch.Tensor, directions: torch.Tensor, betas: torch.Tensor) -> torch.Tensor:
    """Linear shape blend: template + directions·β.

    Args:
        template: (N, 3); directions: (N, 3, K); betas: (B, K).
    Returns:
        (B, N, 3).
    """
    return template + torch.einsum("bk,nck->bnc", betas, directions)


def local_offsets(joints: torch.Tensor, parents: tuple[int, ...]) -> torch.Tensor:
    """Each joint relative to its parent; the root keeps its absolute position.

    Args:
        joints: (B, J, 3).
    Returns:
        (B, J, 3).
    """
    return torch.cat([joints[:, :1], joints[:, 1:] - joints[:, list(parents[1:])]], dim=1)


def first_children(parents: tuple[int, ...]) -> tuple[int, ...]:
    """The first child of every joint in index order; 0 for a leaf (SKEL's convention)."""
    return tuple(next((c for c in range(len(parents)) if parents[c] == j), 0) for j in range(len(parents)))


def bone_rest_orientation(
    offsets: torch.Tensor, apose_offsets: torch.Tensor, per_joint_rot: torch.Tensor, parents: tuple[int, ...]
) -> torch.Tensor:
    """Rk01: the rest orientation of each bone, aligning the model's bone with the shaped body's.

    Gk is the minimal rotation taking per_joint_rot·o (the model's bone vector) onto b (the
    body's); the ulnae span two segments (to the wrist), the thorax aligns with the lumbar
    segment, and leaves and the head keep Gk = I.

    Args:
        offsets: (B, 24, 3) joint offsets of the shaped body (`local_offsets`).
        apose_offsets: (24, 3) translations of apose_rel_transfo.
        per_joint_rot: (24, 3, 3).
    Returns:
        (B, 24, 3, 3).
    """
    child = list(first_children(parents))
    body = offsets[:, child].clone()
    model = apose_offsets[child].expand(offsets.shape[0], -1, -1).clone()
    for ulna, radius, hand in ((16, 17, 18), (21, 22, 23)):
        body[:, ulna] = offsets[:, radius] + offsets[:, hand]
        model[:, ulna] = apose_offsets[radius] + apose_offsets[hand]
    body[:, 12] = body[:, 11]
    gk = rotation_between_vectors(torch.einsum("jab,njb->nja", per_joint_rot, model), body)
    fixed = torch.zeros(len(parents), dtype=torch.bool, device=offsets.device)
    fixed[list(C.FIXED_ORIENTATION_BONES)] = True
    eye = torch.eye(3, dtype=offsets.dtype, device=offsets.device)
    gk = torch.where(fixed[None, :, None, None], eye, gk)
    return gk @ per_joint_rot


def scapula_offset(
    abduction: torch.Tensor, elevation: torch.Tensor, width: torch.Tensor, height: torch.Tensor, left: bool
) -> torch.Tensor:
    """Translation of a scapula gliding on the thorax ellipsoid, relative to q = 0.

    Args:
        abduction, elevation: (B,) the scapula's first two DoFs; width: (B,) distance between
        the scapula joints; height: (B,) lumbar-to-thorax distance.
    Returns:
        (B, 3).
    """

    def position(a: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        if left:
            a, e = -a, -e
        tilt = e - math.pi / 4
        x = (width / 4) * torch.cos(tilt) * torch.cos(a)
        return torch.stack([x if left else -x, -(height / 2) * torch.sin(tilt), (width / 4) * torch.sin(a)], -1)

    zero = torch.zeros_like(abduction)
    return position(abduction, elevation) - position(zero, zero)


def _arc(angle: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Chord of a circular arc of `length` bent by `angle`: sideways x and along y."""
    small = angle.abs() < 1e-5
    safe = torch.where(small, torch.ones_like(angle), angle)
    x = torch.where(small, length * angle / 2, length * (1 - torch.cos(safe)) / safe)
    y = torch.where(small, length * (1 - angle**2 / 6), length * torch.sin(safe) / safe)
    return x, y


def spine_arc_offset(bending: torch.Tensor, extension: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """Translation of a spine joint whose segment bends as a constant-curvature arc, relative to q = 0.

    Args:
        bending, extension: (B,); length: (B,) the segment's rest height.
    Returns:
        (B, 3).
    """
    x_bend, y_bend = _arc(bending, length)
    x_ext, y_ext = _arc(extension, length)
    return torch.stack([-x_bend, y_bend + y_ext - 2 * length, -x_ext], -1)


def pose_translations(q: torch.Tensor, joints: torch.Tensor) -> torch.Tensor:
    """Pose-dependent translations added to the local offsets (scapulae and spine arcs).

    Args:
        q: (B, 46); joints: (B, 24, 3) rest joints of the shaped body.
    Returns:
        (B, 24, 3), zero for pure-rotation joints.
    """
    extra = [torch.zeros_like(joints[:, 0])] * C.NUM_BONES
    width = (joints[:, 19] - joints[:, 14]).norm(dim=-1)
    height = (joints[:, 12] - joints[:, 11]).norm(dim=-1)
    for side, bone in C.SCAPULA_BONES.items():
        first = C.BONE_FIRST_DOF[bone]
        extra[bone] = scapula_offset(q[:, first], q[:, first + 1], width, height, left=side == "left")
    for bone, (bend, ext, lower, upper) in C.SPINE_ARC_BONES.items():
        length = (joints[:, upper, 1] - joints[:, lower, 1]).abs()
        extra[bone] = spine_arc_offset(q[:, bend], q[:, ext], length)
    return torch.stack(extra, dim=1)


def local_rotations(rest_orientation: torch.Tensor, apose_rot: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Local rotation of each bone: R = Rk01·Raᵀ·Rp·Ra·Rk01ᵀ (the DoF rotations moved into the bone frame).

    Args:
        rest_orientation: (B, 24, 3, 3) Rk01; apose_rot: (24, 3, 3) Ra; q: (B, 46).
    Returns:
        (B, 24, 3, 3).
    """
    frame = rest_orientation @ apose_rot.transpose(-1, -2)
    return frame @ bone_rotations(q) @ frame.transpose(-1, -2)


def chain(rotations: torch.Tensor, translations: torch.Tensor, parents: tuple[int, ...]):
    """Compose local rigid transforms down the kinematic tree.

    Args:
        rotations: (B, J, 3, 3); translations: (B, J, 3), the root's being its absolute position.
    Returns:
        world rotations (B, J, 3, 3) and world translations (B, J, 3).
    """
    world_r, world_t = [rotations[:, 0]], [translations[:, 0]]
    for j in range(1, len(parents)):
        p = parents[j]
        world_r.append(world_r[p] @ rotations[:, j])
        world_t.append(world_t[p] + (world_r[p] @ translations[:, j, :, None])[..., 0])
    return torch.stack(world_r, 1), torch.stack(world_t, 1)


def smpl_pose_feature(rotations: torch.Tensor, smpl_source: tuple[int, ...]) -> torch.Tensor:
    """SMPL pose blend-shape feature (R_smpl[1:] − I), each SMPL joint taking a SKEL bone's local rotation.

    Args:
        rotations: (B, 24, 3, 3) SKEL local rotations; smpl_source: for SMPL joints 1..23, the
            SKEL bone that drives it, or -1 for none (identity).
    Returns:
        (B, 207).
    """
    eye = torch.eye(3, dtype=rotations.dtype, device=rotations.device)
    padded = torch.cat([rotations, eye.expand(rotations.shape[0], 1, 3, 3)], dim=1)  # index 24: identity
    picked = padded[:, [s if s >= 0 else C.NUM_BONES for s in smpl_source]]
    return (picked - eye).flatten(1)


def linear_blend_skinning(
    points: torch.Tensor, weights: torch.Tensor, world_r: torch.Tensor, world_t: torch.Tensor, rest_joints: torch.Tensor
) -> torch.Tensor:
    """Skin rest-pose points with the bone transforms taken relative to the rest joints.

    Args:
        points: (B, N, 3); weights: (N, J); world_r: (B, J, 3, 3); world_t, rest_joints: (B, J, 3).
    Returns:
        (B, N, 3).
    """
    bind_t = world_t - (world_r @ rest_joints[..., None])[..., 0]
    blended_r = torch.matmul(weights, world_r.flatten(2)).unflatten(-1, (3, 3))  # (B, N, 3, 3)
    blended_t = torch.matmul(weights, bind_t)
    return (blended_r @ points[..., None])[..., 0] + blended_t


def bone_scales(offsets: torch.Tensor, apose_offsets: torch.Tensor, parents: tuple[int, ...]) -> torch.Tensor:
    """Per-bone scale of the skeleton mesh: the shaped body's bone length over the model's.

    Ulnae take their radius's scale, the thorax the lumbar's, the lumbar compares heights and
    leaves their parent's. (The official model also rescales some bones per axis from
    SMPL-specific skin vertices; that part is left out.)

    Args:
        offsets: (B, 24, 3); apose_offsets: (24, 3).
    Returns:
        (B, 24).
    """
    child = first_children(parents)
    ratio = offsets.norm(dim=-1) / apose_offsets.norm(dim=-1).clamp_min(1e-8)
    scales = [ratio[:, c] if c else None for c in child]
    scales[11] = offsets[:, 11, 1].abs() / apose_offsets[11, 1].abs().clamp_min(1e-8)
    scales[12] = scales[11]
    scales[16], scales[21] = scales[17], scales[22]
    for bone, parent in enumerate(parents):
        if scales[bone] is None:
            scales[bone] = scales[parent]
    return torch.stack(scales, dim=1)


# --------------------------------------------------------------------------------------- module
def _dense(matrix: sp.spmatrix) -> torch.Tensor:
    return torch.as_tensor(np.asarray(matrix.toarray()), dtype=torch.float32)


class SKELLayer(nn.Module):
    """SKEL forward pass: q (B, 46), β (B, 10), translation (B, 3) → skin, skeleton, joints."""

    def __init__(self, model: SkelModelData):
        super().__init__()
        f32 = torch.float32
        self.parents = model.parents
        self.faces = torch.as_tensor(model.skin_template_f)
        self.skel_faces = torch.as_tensor(model.skel_template_f)
        joint_regressor = _dense(model.J_regressor_osim)
        template = torch.as_tensor(model.skin_template_v, dtype=f32)
        shapedirs = torch.as_tensor(model.shapedirs, dtype=f32)
        self.register_buffer("skin_template", template)
        self.register_buffer("shapedirs", shapedirs)
        self.register_buffer("posedirs", torch.as_tensor(model.posedirs, dtype=f32).flatten(0, 1).T.contiguous())
        self.register_buffer("skin_weights", _dense(model.skin_weights))
        self.register_buffer("smpl_joint_regressor", _dense(model.J_regressor))
        # Joints depend on the shape only through W·template and W·shapedirs: the joints-only
        # path never builds the mesh.
        self.register_buffer("joint_template", joint_regressor @ template)
        self.register_buffer("joint_shapedirs", torch.einsum("jv,vck->jck", joint_regressor, shapedirs))
        self.register_buffer("apose_rot", torch.as_tensor(model.apose_rel_transfo[:, :3, :3], dtype=f32))
        self.register_buffer("apose_offsets", torch.as_tensor(model.apose_rel_transfo[:, :3, 3], dtype=f32))
        self.register_buffer("per_joint_rot", torch.as_tensor(model.per_joint_rot, dtype=f32))
        self.register_buffer("skel_template", torch.as_tensor(model.skel_template_v, dtype=f32))
        self.register_buffer("skel_weights", _dense(model.skel_weights))
        self.register_buffer("skel_weights_rigid", _dense(model.skel_weights_rigid))
        num_smpl = model.J_regressor.shape[0]
        # Where several SKEL bones map to one SMPL joint the last one wins, as in the official code.
        source = [-1] * num_smpl
        for bone, smpl_joint in enumerate(C.SKEL_TO_SMPL_JOINT):
            source[smpl_joint] = bone
        self.smpl_source = tuple(source[1:])

    @classmethod
    def from_file(cls, path: Path | str) -> SKELLayer:
        return cls(read_skel_model(path))

    # -- the stages, each usable on its own --------------------------------------------------
    def rest_joints(self, betas: torch.Tensor) -> torch.Tensor:
        """Anatomical joints of the shaped body in the rest pose: (B, 10) → (B, 24, 3)."""
        return blend_shapes(self.joint_template, self.joint_shapedirs, betas)

    def pose_skeleton(self, q: torch.Tensor, rest_joints: torch.Tensor):
        """Local rotations, world rotations and translations, and bone rest orientations.

        Returns:
            local_r (B, 24, 3, 3), world_r (B, 24, 3, 3), world_t (B, 24, 3), rest_orientation (B, 24, 3, 3).
        """
        offsets = local_offsets(rest_joints, self.parents)
        rest_orientation = bone_rest_orientation(offsets, self.apose_offsets, self.per_joint_rot, self.parents)
        local_r = local_rotations(rest_orientation, self.apose_rot, q)
        world_r, world_t = chain(local_r, offsets + pose_translations(q, rest_joints), self.parents)
        return local_r, world_r, world_t, rest_orientation

    def joints(self, q: torch.Tensor, betas: torch.Tensor, trans: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Joints-only fast path: SKEL joint positions (B, 24, 3) and orientations (B, 24, 3, 3), no mesh."""
        _, world_r, world_t, rest_orientation = self.pose_skeleton(q, self.rest_joints(betas))
        return world_t + trans[:, None], world_r @ rest_orientation

    def forward(
        self,
        poses: torch.Tensor,
        betas: torch.Tensor,
        trans: torch.Tensor | None = None,
        *,
        skeleton_mesh: bool = False,
        pose_blendshapes: bool = True,
        vertex_ids: torch.Tensor | None = None,
    ) -> SkelOutput:
        """Full forward pass.

        Args:
            poses: (B, 46) q; betas: (B, 10); trans: (B, 3) or None.
            skeleton_mesh: also pose the bone meshes (heavy; off by default).
            vertex_ids: skin only these vertices (e.g. a keypoint regressor's support); then the
                SMPL-style joints, which need the whole skin, are not computed.
        """
        if poses.ndim != 2 or poses.shape[1] != C.NUM_DOFS:
            raise ValueError(f"poses must have shape (B, {C.NUM_DOFS}), got {tuple(poses.shape)}")
        if betas.shape != (poses.shape[0], C.NUM_BETAS):
            raise ValueError(f"betas must have shape ({poses.shape[0]}, {C.NUM_BETAS}), got {tuple(betas.shape)}")
        if trans is None:
            trans = poses.new_zeros(poses.shape[0], 3)
        rest_joints = self.rest_joints(betas)
        local_r, world_r, world_t, rest_orientation = self.pose_skeleton(poses, rest_joints)

        template, shapedirs, posedirs, weights = self.skin_template, self.shapedirs, self.posedirs, self.skin_weights
        if vertex_ids is not None:
            template, shapedirs, weights = template[vertex_ids], shapedirs[vertex_ids], weights[vertex_ids]
            posedirs = posedirs.unflatten(1, (-1, 3))[:, vertex_ids].flatten(1)
        v_shaped = blend_shapes(template, shapedirs, betas)
        pose_offsets = None
        if pose_blendshapes:
            pose_offsets = (smpl_pose_feature(local_r, self.smpl_source) @ posedirs).unflatten(-1, (-1, 3))
        skin = linear_blend_skinning(
            v_shaped if pose_offsets is None else v_shaped + pose_offsets, weights, world_r, world_t, rest_joints
        )
        skin = skin + trans[:, None]

        skel_verts = None
        if skeleton_mesh:
            skel_verts = self.skeleton_vertices(rest_joints, rest_orientation, world_r, world_t) + trans[:, None]
        return SkelOutput(
            skin_verts=skin,
            skel_verts=skel_verts,
            joints=world_t + trans[:, None],
            joints_ori=world_r @ rest_orientation,
            smpl_joints=None
            if vertex_ids is not None
            else torch.einsum("jv,bvc->bjc", self.smpl_joint_regressor, skin),
            joints_tpose=rest_joints,
            v_shaped=v_shaped,
            pose_offsets=pose_offsets,
            poses=poses,
            betas=betas,
            trans=trans,
        )

    def skeleton_vertices(self, rest_joints, rest_orientation, world_r, world_t) -> torch.Tensor:
        """Bone meshes: scaled in their own frames, placed by [Rk01 | J], then skinned. (B, Nk, 3)."""
        offsets = local_offsets(rest_joints, self.parents)
        scale = bone_scales(offsets, self.apose_offsets, self.parents) @ self.skel_weights_rigid.T  # (B, Nk)
        placed_r = torch.matmul(self.skel_weights_rigid, rest_orientation.flatten(2)).unflatten(-1, (3, 3))
        placed_t = torch.matmul(self.skel_weights_rigid, rest_joints)
        aligned = (placed_r @ (scale[..., None] * self.skel_template)[..., None])[..., 0] + placed_t
        return linear_blend_skinning(aligned, self.skel_weights, world_r, world_t, rest_joints)

    def keypoints(self, poses, betas, trans, regressor: VertexRegressor) -> torch.Tensor:
        """Keypoints regressed from the posed skin, skinning only the vertices the regressor uses: (B, K, 3)."""
        skin = self.forward(poses, betas, trans, vertex_ids=regressor.vertex_ids.to(poses.device)).skin_verts
        return regressor.apply_to_support(skin)
