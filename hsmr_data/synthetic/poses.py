"""Random SKEL poses, shapes and viewpoints for the synthetic world and the demos.

Natural poses come from archetypes (standing, walking, sitting, reaching, crouching) with per-DoF
noise; the "hard" share uses MOYO-like yoga archetypes and extreme viewpoints (from above or below,
inverted). Every q stays inside the joint limits; the pelvis DoFs carry the global orientation in
the camera frame (x right, y down, z forward), solved from the wanted body rotation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hsmr_model import skel_constants as C
from hsmr_model.pose_repr import rotation_to_bone_dofs
from hsmr_model.smpl_layer import SmplParams

# Body DoFs in degrees (the unnamed ones stay 0). Conventions of SKEL: shoulder_r_x > 0 and
# shoulder_l_x < 0 lower the arms from the T-pose, shoulder_*_z > 0 swings them forward, flexions
# > 0 bend forward, knee and elbow angles > 0 bend the joint.
_ARMS_DOWN = {"shoulder_r_x": 75, "shoulder_l_x": -75, "elbow_flexion_r": 10, "elbow_flexion_l": 10}
_ARMS_UP = {"shoulder_r_x": -85, "shoulder_l_x": 85}
NATURAL_ARCHETYPES: dict[str, dict[str, float]] = {
    "standing": {**_ARMS_DOWN, "knee_angle_r": 5, "knee_angle_l": 5},
    "walking": {
        **_ARMS_DOWN, "hip_flexion_r": 25, "hip_flexion_l": -10, "knee_angle_r": 10, "knee_angle_l": 35,
        "shoulder_r_z": -20, "shoulder_l_z": 20, "elbow_flexion_r": 25, "elbow_flexion_l": 25,
    },
    "sitting": {
        "shoulder_r_x": 60, "shoulder_l_x": -60, "shoulder_r_z": 30, "shoulder_l_z": 30,
        "elbow_flexion_r": 50, "elbow_flexion_l": 50, "hip_flexion_r": 90, "hip_flexion_l": 90,
        "knee_angle_r": 90, "knee_angle_l": 90,
    },
    "reaching": {
        "shoulder_r_x": 10, "shoulder_r_z": 80, "elbow_flexion_r": 10, "shoulder_l_x": -75,
        "thorax_twist": 15, "lumbar_extension": 10, "hip_flexion_r": 10, "knee_angle_r": 10, "knee_angle_l": 10,
    },
    "crouching": {
        "shoulder_r_x": 40, "shoulder_l_x": -40, "shoulder_r_z": 60, "shoulder_l_z": 60,
        "elbow_flexion_r": 60, "elbow_flexion_l": 60, "hip_flexion_r": 110, "hip_flexion_l": 110,
        "knee_angle_r": 120, "knee_angle_l": 120, "lumbar_extension": 25, "ankle_angle_r": 20, "ankle_angle_l": 20,
    },
}  # fmt: skip
HARD_ARCHETYPES: dict[str, dict[str, float]] = {
    "warrior": {**_ARMS_UP, "hip_flexion_r": 90, "knee_angle_r": 90, "hip_flexion_l": -30, "hip_rotation_l": 30},
    "tree": {
        **_ARMS_UP, "hip_flexion_r": 40, "hip_adduction_r": -40, "hip_rotation_r": 45, "knee_angle_r": 130,
    },
    "forward_fold": {
        **_ARMS_DOWN, "hip_flexion_r": 100, "hip_flexion_l": 100, "lumbar_extension": 40, "thorax_extension": 30,
    },
    "splits": {"shoulder_r_x": 0, "shoulder_l_x": 0, "hip_flexion_r": 90, "hip_flexion_l": -45},
    "side_bend": {
        "shoulder_r_x": -80, "shoulder_l_x": -70, "lumbar_bending": 28, "thorax_bending": 40,
        "hip_adduction_r": -30, "hip_adduction_l": -30,
    },
    "inverted": {**_ARMS_UP, "hip_adduction_r": -20, "hip_adduction_l": -20},
}  # fmt: skip
_ROLL_BY_ARCHETYPE = {"inverted": 180.0}


@dataclass
class PoseBatch:
    """Sampled true SKEL parameters and where they came from."""

    q: np.ndarray  # (N, 46)
    betas: np.ndarray  # (N, 10)
    archetype: list[str]
    hard: np.ndarray  # (N,) bool
    camera_elevation_deg: np.ndarray  # (N,) > 0: seen from above


def _archetype_vector(values: dict[str, float]) -> np.ndarray:
    q = np.zeros(C.NUM_DOFS)
    for name, degrees in values.items():
        q[C.DOF_NAMES.index(name)] = np.radians(degrees)
    return q


def _rotation(axis: str, degrees: np.ndarray) -> np.ndarray:
    """(N,) angles → (N, 3, 3) rotations about a coordinate axis."""
    angle = np.radians(degrees)
    c, s = np.cos(angle), np.sin(angle)
    one, zero = np.ones_like(angle), np.zeros_like(angle)
    rows = {
        "x": [[one, zero, zero], [zero, c, -s], [zero, s, c]],
        "y": [[c, zero, s], [zero, one, zero], [-s, zero, c]],
        "z": [[c, -s, zero], [s, c, zero], [zero, zero, one]],
    }[axis]
    return np.moveaxis(np.array(rows), (0, 1), (-2, -1))


def global_orientation_dofs(heading_deg, lean_deg, elevation_deg, roll_deg) -> np.ndarray:
    """Pelvis DoFs (N, 3) for a body turned by `heading` about its vertical axis and leaning forward by
    `lean`, seen by a camera that looks down on it by `elevation` and is rolled by `roll` (180: upside down).

    SKEL's frame has Y up and the face towards +Z; the camera frame has y down: a half turn about z
    maps one onto the other, with the person facing the camera when heading is 180°.
    """
    body = _rotation("y", heading_deg) @ _rotation("x", lean_deg)
    camera = _rotation("z", roll_deg) @ _rotation("x", -elevation_deg) @ _rotation("z", np.full_like(roll_deg, 180.0))
    rotation = torch.as_tensor(camera @ body)
    return rotation_to_bone_dofs(rotation, bone=0).numpy()


def sample_true_poses(count: int, rng: np.random.Generator, hard_fraction: float = 0.2) -> PoseBatch:
    """Natural or hard poses, shapes and viewpoints for `count` people; q inside the joint limits."""
    if not 0.0 <= hard_fraction <= 1.0:
        raise ValueError(f"hard_fraction must be in [0, 1], got {hard_fraction}")
    hard = rng.random(count) < hard_fraction
    natural_names, hard_names = list(NATURAL_ARCHETYPES), list(HARD_ARCHETYPES)
    archetype = [
        hard_names[rng.integers(len(hard_names))] if h else natural_names[rng.integers(len(natural_names))]
        for h in hard
    ]
    table = {**NATURAL_ARCHETYPES, **HARD_ARCHETYPES}
    noise_deg = np.where(hard, 12.0, 8.0)[:, None]
    q = np.stack([_archetype_vector(table[name]) for name in archetype])
    q += np.radians(noise_deg) * rng.standard_normal((count, C.NUM_DOFS))
    lower, upper = C.dof_limits()
    limited = np.isfinite(lower)
    q[:, limited] = np.clip(q[:, limited], lower[limited], upper[limited])

    heading = rng.uniform(-180.0, 180.0, count)
    lean = rng.normal(0.0, 5.0, count)
    elevation = np.where(hard, rng.choice([-1.0, 1.0], count) * rng.uniform(30.0, 70.0, count), rng.normal(0, 8, count))
    roll = np.array([_ROLL_BY_ARCHETYPE.get(name, 0.0) for name in archetype]) + rng.normal(0, 5, count) * (
        1 + 3 * hard
    )
    q[:, 0:3] = global_orientation_dofs(heading, lean, elevation, roll)
    return PoseBatch(q, sample_betas(count, rng), archetype, hard, elevation)


def sample_skel_poses(count: int, rng: np.random.Generator, spread: float = 0.5) -> np.ndarray:
    """q drawn uniformly from the central `spread` fraction of every DoF's limits.

    The pelvis (unlimited) gets a free heading and a small tilt and list, so bodies stand upright.

    Returns:
        (count, 46) float64, inside the joint limits.
    """
    if not 0.0 < spread <= 1.0:
        raise ValueError(f"spread must be in (0, 1], got {spread}")
    lower, upper = C.dof_limits()
    limited = np.isfinite(lower)
    lower, upper = np.where(limited, lower, 0.0), np.where(limited, upper, 0.0)
    centre, half = (lower + upper) / 2, (upper - lower) / 2 * spread
    q = centre + half * rng.uniform(-1.0, 1.0, size=(count, C.NUM_DOFS))
    q[:, 0:2] = rng.uniform(-0.15, 0.15, size=(count, 2))
    q[:, 2] = rng.uniform(-np.pi, np.pi, size=count)
    return q


def sample_betas(count: int, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """β ~ N(0, scale²), clipped to ±3 (the range the quality filters keep). Returns (count, 10)."""
    return np.clip(rng.normal(scale=scale, size=(count, C.NUM_BETAS)), -3.0, 3.0)


_SMPL_KNEES = (4, 5)  # SMPL left, right knee: flexion is +x
_SMPL_ELBOWS = {18: -1.0, 19: 1.0}  # SMPL left, right elbow: flexion is −y, +y


def sample_moderate_smpl_params(count: int, rng: np.random.Generator, spread: float = 0.2) -> SmplParams:
    """Random moderate SMPL parameters: N(0, spread) rad per axis, knees and elbows hinge-like and
    bending the anatomical way, any heading with a small tilt, β ~ N(0, 1) clipped to ±2."""
    pose = rng.normal(scale=spread, size=(count, 24, 3))
    for knee in _SMPL_KNEES:
        pose[:, knee] = 0.0
        pose[:, knee, 0] = np.abs(rng.normal(scale=0.7, size=count))
    for elbow, sign in _SMPL_ELBOWS.items():
        pose[:, elbow] *= 0.25
        pose[:, elbow, 1] = sign * np.abs(rng.normal(scale=0.7, size=count))
    pose[:, 0] = 0.0
    pose[:, 0, 0] = rng.normal(scale=0.1, size=count)
    pose[:, 0, 1] = rng.uniform(-np.pi, np.pi, size=count)

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=torch.float32)

    return SmplParams(
        global_orient=tensor(pose[:, 0]),
        body_pose=tensor(pose[:, 1:].reshape(count, 69)),
        betas=tensor(np.clip(rng.normal(size=(count, 10)), -2.0, 2.0)),
        transl=tensor(rng.normal(scale=0.5, size=(count, 3))),
    )
