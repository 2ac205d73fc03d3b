"""Left-right mirroring of SKEL labels and keypoints: the label of a horizontally flipped image.

The image flip is the camera-frame reflection M = diag(−1, 1, 1) (x → −x). A reflection turns a
rotation about axis a by θ into a rotation about −M·a by the same θ: M·R(a, θ)·M = R(−M·a, θ).
SKEL's bone frames follow the OpenSim convention on both sides (X forward, Y up, Z to the subject's
right at q = 0, the world's −x), so in every bone frame the mirror is M_b = diag(1, 1, −1). DoF i,
about axis a_i, therefore becomes its mirror twin j (its `_r`/`_l` partner by name, or itself on
the midline) with the sign s = a_j · (−M_b·a_i): +1 where the twin's axis is the mirrored axis
(hip flexion), −1 where it is the mirrored axis reversed (lumbar bending, shoulder x). The rotations
of a bone compose in the same order on both sides, so the whole bone rotation mirrors exactly, the
pelvis included: its rotation R becomes M·R·M. The scapula and spine translations of the SKEL
forward pass mirror with the same signs. The translation mirrors its x; β does not change.

Not every twin is an exact mirror in SKEL v1.1.1 (the numbers are derived below, not typed in):
- the ankle: talus_l has talus_r's axis instead of its mirror image (the .osim files mirror it),
  so the flipped ankle angle turns about an axis 23° off (`MIRROR.alignment` 0.917);
- joint limits: scapula elevation is [−0.4, −0.1] on both sides although the mirror negates it,
  and scapula upward rotation and pronation–supination have different ranges left and right, so a
  flipped in-limits pose can leave the limits there (`mirror_limit_mismatches`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hsmr_model import skel_constants as C
from hsmr_model.pose_repr import q_to_target88, target88_to_q

BONE_MIRROR = np.diag([1.0, 1.0, -1.0])  # the image flip in an OpenSim bone frame (Z: the subject's right)
_ALIGNED = 1.0 - 1e-6  # |cos| between an axis and its twin's mirror above which the mirror is exact


def mirror_name(name: str, sides: tuple[str, str]) -> str:
    """`name` with its side word swapped, e.g. ("r", "l"): shoulder_r_x → shoulder_l_x; unchanged on the midline."""
    right, left = sides
    swap = {right: left, left: right}
    return "_".join(swap.get(token, token) for token in name.split("_"))


def _twins(names: tuple[str, ...], sides: tuple[str, str]) -> np.ndarray:
    """Index of each name's mirror twin; a ValueError naming any name without one."""
    missing = [n for n in names if mirror_name(n, sides) not in names]
    if missing:
        raise ValueError(f"no mirror twin for {missing}")
    return np.array([names.index(mirror_name(n, sides)) for n in names])


@dataclass(frozen=True)
class DofMirror:
    """How each DoF maps under the mirror: q_flip[j] = sign[j] · q[partner[j]]."""

    partner: np.ndarray  # (46,) int: the twin DoF (itself on the midline); an involution
    sign: np.ndarray  # (46,) ±1.0
    alignment: np.ndarray  # (46,) |a_partner · (−M_b·a)|: 1 where the mirror is exact


def dof_mirror() -> DofMirror:
    """The DoF mirror derived from the DoF names and axes of `skel_constants`."""
    axes = C.dof_axes()
    partner = _twins(C.DOF_NAMES, ("r", "l"))
    cosine = np.einsum("ij,ij->i", axes[partner], -axes @ BONE_MIRROR.T)
    return DofMirror(partner=partner, sign=np.sign(cosine), alignment=np.abs(cosine))


MIRROR = dof_mirror()
KEYPOINT_PARTNER: np.ndarray = _twins(C.KEYPOINT_NAMES, ("right", "left"))  # (44,) the mirrored keypoint order


def flip_q(q: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """SKEL pose (..., 46) of the mirrored body (a tensor stays a tensor)."""
    if isinstance(q, torch.Tensor):
        return q[..., MIRROR.partner] * q.new_tensor(MIRROR.sign)
    q = np.asarray(q)
    return q[..., MIRROR.partner] * MIRROR.sign.astype(q.dtype)


def average_with_mirror(
    q: torch.Tensor,
    betas: torch.Tensor,
    cam: torch.Tensor,
    mirrored_q: torch.Tensor,
    mirrored_betas: torch.Tensor,
    mirrored_cam: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Test-time flip: a network's answer on a crop (q (B, 46), β (B, 10), weak-perspective camera (s, t_x,
    t_y) (B, 3)) averaged with its answer on the mirrored crop, mirrored back. The poses are averaged
    in the continuous 88-D target (6D rotations re-orthonormalised when decoded), not in Euler angles,
    which wrap; the mirrored camera's t_x changes sign."""
    target = (q_to_target88(q) + q_to_target88(flip_q(mirrored_q))) / 2
    unmirrored_cam = mirrored_cam * cam.new_tensor([1.0, -1.0, 1.0])
    return target88_to_q(target), (betas + mirrored_betas) / 2, (cam + unmirrored_cam) / 2


def flip_trans(trans: np.ndarray) -> np.ndarray:
    """Camera-frame translation (..., 3) of the mirrored body: x → −x."""
    return np.asarray(trans) * np.array([-1.0, 1.0, 1.0], dtype=np.asarray(trans).dtype)


def flip_keypoints(keypoints: np.ndarray, x_center: float = 0.0) -> np.ndarray:
    """Keypoints (..., 44, D ≥ 2, x first) of the mirrored image: left and right swapped, x → 2·x_center − x.

    x_center is 0 for normalised crop coordinates and 3D camera coordinates, and half the width
    for pixels (a flip maps the continuous pixel coordinate x to width − x). Other columns
    (y, z, confidence) are carried along with their keypoint.
    """
    flipped = np.array(np.asarray(keypoints)[..., KEYPOINT_PARTNER, :])
    flipped[..., 0] = 2.0 * x_center - flipped[..., 0]
    return flipped


def mirror_limit_mismatches() -> tuple[str, ...]:
    """DoFs whose limits are not the mirror image of their twin's: there a flipped in-limits q may leave the limits."""
    lower, upper = C.dof_limits()
    bounds = np.sort(np.stack([lower, upper])[:, MIRROR.partner] * MIRROR.sign, axis=0)
    same = np.isclose(bounds[0], lower) & np.isclose(bounds[1], upper)
    return tuple(name for name, ok in zip(C.DOF_NAMES, same, strict=True) if not ok)


def inexact_mirror_dofs() -> tuple[str, ...]:
    """DoFs whose twin's axis is not exactly the mirrored axis: the flip of those is approximate."""
    return tuple(name for name, cos in zip(C.DOF_NAMES, MIRROR.alignment, strict=True) if cos < _ALIGNED)
