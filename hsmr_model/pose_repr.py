"""SKEL pose representations and the conversions between them, all batched and differentiable:

- q (B, 46): the Euler DoFs of SKEL, with the anatomical limits of `skel_constants`;
- the 88-D network target (B, 88), bone after bone in bone order: the ten 3-DoF bones give the
  first two rows of their rotation (6D), the twelve 1-DoF bones (cos q, −sin q), the two 2-DoF
  wrists their two angles as they are (10·6 + 12·2 + 2·2 = 88);
- per-bone rotation matrices (B, 24, 3, 3), what the pose loss L_q compares.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hsmr_model import skel_constants as C
from hsmr_model.rotations import (
    matrix_to_euler,
    matrix_to_rotation_6d,
    rotation_6d_to_matrix,
    rotation_about_axis,
)

_AXIS_LETTERS = "XYZ"


@dataclass(frozen=True)
class BoneBlock:
    """Where one bone's values sit in the 88-D target, and how they encode it."""

    bone: int
    kind: str  # "6d", "cos_sin" or "euler"
    start: int
    stop: int


def _layout() -> tuple[BoneBlock, ...]:
    blocks, start = [], 0
    for bone, count in enumerate(C.BONE_NUM_DOFS):
        kind, size = {3: ("6d", 6), 1: ("cos_sin", 2), 2: ("euler", 2)}[count]
        blocks.append(BoneBlock(bone, kind, start, start + size))
        start += size
    return tuple(blocks)


TARGET_LAYOUT: tuple[BoneBlock, ...] = _layout()
TARGET_SIZE = TARGET_LAYOUT[-1].stop  # 88


def euler_conventions() -> dict[int, tuple[str, np.ndarray]]:
    """For each 3-DoF bone: the Tait–Bryan order that undoes its composition, and its axis signs.

    A bone with DoF axes s1·a1, s2·a2, s3·a3 (applied in that order) has R = R_a3(s3 q3)·R_a2(s2 q2)·R_a1(s1 q1),
    so extracting in the order a3 a2 a1 and reversing gives (s1 q1, s2 q2, s3 q3).
    """
    axes = C.dof_axes()
    conventions = {}
    for bone in C.BONES_3DOF:
        first = C.BONE_FIRST_DOF[bone]
        bone_axes = axes[first : first + 3]
        letters = [_AXIS_LETTERS[int(np.argmax(np.abs(a)))] for a in bone_axes]
        signs = np.array([np.sign(a[np.argmax(np.abs(a))]) for a in bone_axes])
        conventions[bone] = ("".join(reversed(letters)), signs)
    return conventions


_CONVENTIONS = euler_conventions()


def bone_rotations(q: torch.Tensor) -> torch.Tensor:
    """Per-bone joint rotation Rp = R_n ⋯ R_1 with R_k = exp(q_k · axis_k), the first DoF applied first.

    This is the rotation each bone's DoFs produce in the bone's own frame: the SKEL forward
    pass conjugates it into place, and the pose loss L_q compares it between prediction and label.

    Args:
        q: (B, 46).
    Returns:
        (B, 24, 3, 3).
    """
    axes = torch.as_tensor(C.dof_axes(), dtype=q.dtype, device=q.device)
    per_dof = rotation_about_axis(q, axes)  # (B, 46, 3, 3)
    eye = torch.eye(3, dtype=q.dtype, device=q.device).expand(q.shape[0], 3, 3)
    bones = []
    for bone in range(C.NUM_BONES):
        first, count = C.BONE_FIRST_DOF[bone], C.BONE_NUM_DOFS[bone]
        rot = eye
        for k in range(first, first + count):
            rot = per_dof[:, k] @ rot
        bones.append(rot)
    return torch.stack(bones, dim=1)


def rotation_to_bone_dofs(rotation: torch.Tensor, bone: int) -> torch.Tensor:
    """The three DoF values of a 3-DoF bone that compose to `rotation` (the inverse of bone_rotations).

    Args:
        rotation: (B, 3, 3); bone: one of C.BONES_3DOF.
    Returns:
        (B, 3) in q order.
    """
    order, signs = _CONVENTIONS[bone]
    angles = matrix_to_euler(rotation, order).flip(-1)
    return angles * torch.as_tensor(signs, dtype=rotation.dtype, device=rotation.device)


def q_to_target88(q: torch.Tensor) -> torch.Tensor:
    """Euler DoFs (B, 46) → the 88-D network target (B, 88)."""
    rotations = bone_rotations(q)
    parts = []
    for block in TARGET_LAYOUT:
        first = C.BONE_FIRST_DOF[block.bone]
        if block.kind == "6d":
            parts.append(matrix_to_rotation_6d(rotations[:, block.bone]))
        elif block.kind == "cos_sin":
            angle = q[:, first]
            parts.append(torch.stack([torch.cos(angle), -torch.sin(angle)], dim=-1))
        else:
            parts.append(q[:, first : first + 2])
    return torch.cat(parts, dim=-1)


def target88_to_q(target: torch.Tensor) -> torch.Tensor:
    """The 88-D target (B, 88) → Euler DoFs (B, 46). The 6D blocks need not be orthonormal:
    Gram–Schmidt projects them onto rotations first."""
    q = target.new_zeros(target.shape[0], C.NUM_DOFS)
    for block in TARGET_LAYOUT:
        first = C.BONE_FIRST_DOF[block.bone]
        values = target[:, block.start : block.stop]
        if block.kind == "6d":
            q[:, first : first + 3] = rotation_to_bone_dofs(rotation_6d_to_matrix(values), block.bone)
        elif block.kind == "cos_sin":
            q[:, first] = torch.atan2(-values[:, 1], values[:, 0])
        else:
            q[:, first : first + 2] = values
    return q


def target88_to_bone_rotations(target: torch.Tensor) -> torch.Tensor:
    """The 88-D target (B, 88) → per-bone rotations (B, 24, 3, 3), the 3-DoF bones straight from
    their 6D values (no Euler angles in between, so no gimbal lock on the way to the loss)."""
    rotations = bone_rotations(target88_to_q(target)).clone()
    for block in TARGET_LAYOUT:
        if block.kind == "6d":
            rotations[:, block.bone] = rotation_6d_to_matrix(target[:, block.start : block.stop])
    return rotations
