"""The evaluation metrics of HMR2.0 and HSMR, batched over samples, one value per sample.

Units and conventions (those of HMR2.0's and HSMR's evaluation code):

- 2D keypoints are in normalised crop coordinates, (pixel − centre) / box side ∈ [−0.5, 0.5], so the
  crop's side is 1 and PCK@t counts a keypoint as correct when it lies closer than t to the truth:
  t is the fraction of the crop size, directly comparable with the papers' PCK@0.05 and @0.1.
- 3D points come in metres and errors go out in millimetres.
- MPJPE uses the 14 LSP-style joints of the 44 dataset keypoints ([25…37, 43]), both skeletons
  centred on the pelvis keypoint 39; PA-* first aligns each prediction to its truth by a similarity
  transform (rotation, uniform scale, translation), so centring does not matter there.
- Joint-limit violations follow HSMR's Table 4 protocol: an angle is wrapped to (−π, π], its violation
  is its distance past the bound widened by the tolerance, a part's violation is the largest of its
  DoFs, and the report is the share of samples whose violation is > 0.

Per-sample values (not means) are returned so that callers can split by subset (normal / hard).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from hsmr_model import skel_constants as C
from hsmr_model.rotations import axis_angle_to_matrix, matrix_to_euler

LSP_JOINTS: tuple[int, ...] = (*range(25, 38), 43)  # the 14 LSP-style joints of the extra keypoints
PELVIS = 39  # MPII pelvis keypoint, the root of MPJPE
OPENPOSE_BODY: tuple[int, ...] = tuple(range(25))  # the keypoints a 2D detector gives: PCK's default set
PCK_THRESHOLDS: tuple[float, ...] = (0.05, 0.1)
VIOLATION_TOLERANCES_DEG: tuple[float, ...] = (0.0, 5.0, 10.0, 20.0, 30.0)
LIMB_PARTS: tuple[str, ...] = ("left_elbow", "right_elbow", "left_knee", "right_knee")  # Table 4's order


# ---------------------------------------------------------------------------------------- 2D
def pck(
    predicted: np.ndarray,
    truth: np.ndarray,
    visible: np.ndarray,
    threshold: float,
    keypoints: tuple[int, ...] = OPENPOSE_BODY,
) -> np.ndarray:
    """Share of the visible keypoints closer than `threshold` (× the crop side of 1) to the truth.

    Args:
        predicted, truth: (B, K, 2) normalised crop coordinates; visible: (B, K) bool.
    Returns:
        (B,); NaN for a sample with no visible keypoint among `keypoints`.
    """
    index = list(keypoints)
    distance = np.linalg.norm(np.asarray(predicted)[:, index] - np.asarray(truth)[:, index], axis=-1)
    mask = np.asarray(visible, dtype=bool)[:, index]
    count = mask.sum(1)
    correct = ((distance < threshold) & mask).sum(1)
    return np.where(count > 0, correct / np.maximum(count, 1), np.nan)


# ---------------------------------------------------------------------------------------- 3D
def similarity_align(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """`source` moved onto `target` by the least-squares similarity transform, per sample (Umeyama).

    Args:
        source, target: (B, N, 3).
    Returns:
        (B, N, 3): s·R·source + t.
    """
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    mu_s, mu_t = source.mean(1, keepdims=True), target.mean(1, keepdims=True)
    xs, xt = source - mu_s, target - mu_t
    covariance = np.einsum("bni,bnj->bij", xt, xs)  # Σ target·sourceᵀ
    u, singular, vt = np.linalg.svd(covariance)
    # A reflection is never a valid alignment: flip the weakest axis when det(U·Vᵀ) < 0.
    sign = np.sign(np.linalg.det(u @ vt))
    sign = np.where(sign == 0, 1.0, sign)
    d = np.ones_like(singular)
    d[:, -1] = sign
    rotation = u @ (d[:, :, None] * vt)
    variance = (xs**2).sum((1, 2))
    scale = (singular * d).sum(1) / np.maximum(variance, 1e-12)
    return scale[:, None, None] * np.einsum("bij,bnj->bni", rotation, xs) + mu_t


def _mean_distance_mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a - b, axis=-1).mean(1) * 1000.0


def mpjpe(predicted: np.ndarray, truth: np.ndarray, joints=LSP_JOINTS, root: int = PELVIS) -> np.ndarray:
    """Mean per-joint position error (mm) after centring both on keypoint `root`.

    Args:
        predicted, truth: (B, 44, 3) keypoints in metres.
    Returns:
        (B,).
    """
    predicted, truth = np.asarray(predicted, np.float64), np.asarray(truth, np.float64)
    index = list(joints)
    return _mean_distance_mm(
        predicted[:, index] - predicted[:, root : root + 1], truth[:, index] - truth[:, root : root + 1]
    )


def pa_mpjpe(predicted: np.ndarray, truth: np.ndarray, joints=LSP_JOINTS) -> np.ndarray:
    """MPJPE (mm) after a similarity Procrustes alignment of each sample's joints. (B, 44, 3) → (B,)."""
    index = list(joints)
    truth = np.asarray(truth, np.float64)[:, index]
    return _mean_distance_mm(similarity_align(np.asarray(predicted)[:, index], truth), truth)


def mpvpe(predicted: np.ndarray, truth: np.ndarray, predicted_root: np.ndarray, truth_root: np.ndarray) -> np.ndarray:
    """Mean per-vertex error (mm) of meshes of the same topology, each centred on its root point.

    Args:
        predicted, truth: (B, V, 3) metres; predicted_root, truth_root: (B, 3).
    Returns:
        (B,).
    """
    predicted, truth = np.asarray(predicted, np.float64), np.asarray(truth, np.float64)
    return _mean_distance_mm(predicted - np.asarray(predicted_root)[:, None], truth - np.asarray(truth_root)[:, None])


def pa_mpvpe(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """MPVPE (mm) after a similarity Procrustes alignment of each mesh. (B, V, 3) → (B,)."""
    truth = np.asarray(truth, np.float64)
    return _mean_distance_mm(similarity_align(predicted, truth), truth)


# --------------------------------------------------------------------- joint-limit violations
def wrap_angle(angle: np.ndarray) -> np.ndarray:
    """Angles (radians) wrapped to (−π, π]."""
    wrapped = np.remainder(np.asarray(angle, np.float64) + np.pi, 2 * np.pi) - np.pi
    return np.where(wrapped == -np.pi, np.pi, wrapped)


def bound_violation(angle: np.ndarray, lower: np.ndarray, upper: np.ndarray, tolerance: float) -> np.ndarray:
    """How far (same unit as the inputs) `angle` lies outside [lower − tolerance, upper + tolerance]; 0 inside."""
    return np.maximum(0.0, np.maximum(lower - tolerance - angle, angle - upper - tolerance))


# SKEL: the DoFs of each part (q indices) whose limits Table 4 checks.
SKEL_LIMB_DOFS: dict[str, tuple[int, ...]] = {
    "left_elbow": (42, 43),  # elbow_flexion_l, pro_sup_l
    "right_elbow": (32, 33),  # elbow_flexion_r, pro_sup_r
    "left_knee": (13,),  # knee_angle_l
    "right_knee": (6,),  # knee_angle_r
}


def skel_violations(q: np.ndarray, tolerance_deg: float = 0.0) -> dict[str, np.ndarray]:
    """Per-part violation (degrees) of SKEL poses against the model's own limits.

    Args:
        q: (B, 46) radians.
    Returns:
        part → (B,) degrees, the largest violation over the part's DoFs.
    """
    q = np.asarray(q, np.float64)
    lower, upper = C.dof_limits()
    tolerance = math.radians(tolerance_deg)
    out = {}
    for part, dofs in SKEL_LIMB_DOFS.items():
        index = list(dofs)
        violation = bound_violation(wrap_angle(q[:, index]), lower[index], upper[index], tolerance)
        out[part] = np.degrees(violation.max(1))
    return out


@dataclass(frozen=True)
class SmplLimbLimits:
    """An SMPL joint checked by Table 4: its Euler order and the bounds of each angle in that order."""

    joint: int  # SMPL joint index (body_pose holds joints 1..23)
    order: str  # matrix_to_euler order: R = R_A(a)·R_B(b)·R_C(c)
    lower: tuple[float, float, float]  # radians, per angle in `order`
    upper: tuple[float, float, float]


_FLEX = 3 * math.pi / 4
_ELBOW_TWIST = 3 * math.pi / 8
# Knees: X ∈ [0, 3π/4], Y = Z = 0 (order XZY → x, z, y). Elbows: flexion about Y (+ for the right arm, − for
# the left), Z = 0, X ∈ ±3π/8 (order YZX → y, z, x).
SMPL_LIMB_LIMITS: dict[str, SmplLimbLimits] = {
    "left_elbow": SmplLimbLimits(18, "YZX", (-_FLEX, 0.0, -_ELBOW_TWIST), (0.0, 0.0, _ELBOW_TWIST)),
    "right_elbow": SmplLimbLimits(19, "YZX", (0.0, 0.0, -_ELBOW_TWIST), (_FLEX, 0.0, _ELBOW_TWIST)),
    "left_knee": SmplLimbLimits(4, "XZY", (0.0, 0.0, 0.0), (_FLEX, 0.0, 0.0)),
    "right_knee": SmplLimbLimits(5, "XZY", (0.0, 0.0, 0.0), (_FLEX, 0.0, 0.0)),
}


def euler_solutions(matrix: np.ndarray, order: str) -> tuple[np.ndarray, np.ndarray]:
    """Both Tait–Bryan solutions of rotations: (a, b, c) with b ∈ [−π/2, π/2], and (a + π, π − b, c + π).

    Args:
        matrix: (B, 3, 3).
    Returns:
        two (B, 3) arrays of angles wrapped to (−π, π].
    """
    first = matrix_to_euler(torch.as_tensor(np.asarray(matrix, np.float64)), order).numpy()
    second = first + np.array([np.pi, 0.0, np.pi])
    second[:, 1] = np.pi - first[:, 1]
    return wrap_angle(first), wrap_angle(second)


def smpl_violations(body_pose: np.ndarray, tolerance_deg: float = 0.0) -> dict[str, np.ndarray]:
    """Per-part violation (degrees) of SMPL poses: Euler angles of the knees and elbows against fixed bounds.

    An Euler decomposition is ambiguous (θ and π − θ for the middle angle); the solution with the
    smaller violation counts, so a pose is never blamed for how it was decomposed.

    Args:
        body_pose: (B, 69) axis-angle of SMPL joints 1..23.
    Returns:
        part → (B,) degrees.
    """
    pose = np.asarray(body_pose, np.float64).reshape(-1, 23, 3)
    tolerance = math.radians(tolerance_deg)
    out = {}
    for part, limits in SMPL_LIMB_LIMITS.items():
        matrix = axis_angle_to_matrix(torch.as_tensor(pose[:, limits.joint - 1])).numpy()
        lower, upper = np.array(limits.lower), np.array(limits.upper)
        per_solution = [
            bound_violation(angles, lower, upper, tolerance).max(1) for angles in euler_solutions(matrix, limits.order)
        ]
        out[part] = np.degrees(np.minimum(*per_solution))
    return out


def violation_shares(
    violations_at, tolerances_deg: tuple[float, ...] = VIOLATION_TOLERANCES_DEG
) -> dict[str, dict[float, float]]:
    """Table 4: per part and tolerance, the share of samples whose violation is > 0.

    Args:
        violations_at: tolerance in degrees → (part → (B,) degrees), e.g.
            `lambda t: skel_violations(q, t)`.
    Returns:
        part → {tolerance: share in [0, 1]}; NaN shares for an empty batch.
    """
    shares: dict[str, dict[float, float]] = {}
    for tolerance in tolerances_deg:
        for part, violation in violations_at(tolerance).items():
            shares.setdefault(part, {})[tolerance] = float(np.mean(violation > 0)) if len(violation) else math.nan
    return shares
