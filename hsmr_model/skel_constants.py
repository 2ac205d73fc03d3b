"""SKEL and SMPL constants: the single source of truth for DoFs, bones, parents, axes and limits.

Everything else in the project derives its tables from here (the 88-D pose target, the
joint-limit prior, the model-file checks), so a change to the model definition is made once.
Values follow the SKEL v1.1.1 model (BSM skeleton; limits in radians).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Dof:
    """One SKEL degree of freedom: its index in q, its bone, and its limits (None: unlimited)."""

    index: int
    name: str
    bone: int
    lower: float | None
    upper: float | None


# (name, bone, lower, upper): q order, 46 rows.
_DOF_ROWS: tuple[tuple[str, int, float | None, float | None], ...] = (
    ("pelvis_tilt", 0, None, None),
    ("pelvis_list", 0, None, None),
    ("pelvis_rotation", 0, None, None),
    ("hip_flexion_r", 1, -0.785398, 2.356194),
    ("hip_adduction_r", 1, -0.785398, 0.523599),
    ("hip_rotation_r", 1, -0.785398, 0.785398),
    ("knee_angle_r", 2, 0.0, 2.356194),
    ("ankle_angle_r", 3, -0.785398, 0.785398),
    ("subtalar_angle_r", 4, -0.785398, 0.785398),
    ("mtp_angle_r", 5, -0.785398, 0.785398),
    ("hip_flexion_l", 6, -0.785398, 2.356194),
    ("hip_adduction_l", 6, -0.785398, 0.523599),
    ("hip_rotation_l", 6, -0.785398, 0.785398),
    ("knee_angle_l", 7, 0.0, 2.356194),
    ("ankle_angle_l", 8, -0.785398, 0.785398),
    ("subtalar_angle_l", 9, -0.785398, 0.785398),
    ("mtp_angle_l", 10, -0.785398, 0.785398),
    ("lumbar_bending", 11, -0.523599, 0.523599),
    ("lumbar_extension", 11, -0.785398, 0.785398),
    ("lumbar_twist", 11, -0.785398, 0.785398),
    ("thorax_bending", 12, -0.785398, 0.785398),
    ("thorax_extension", 12, -0.785398, 0.785398),
    ("thorax_twist", 12, -0.785398, 0.785398),
    ("head_bending", 13, -0.785398, 0.785398),
    ("head_extension", 13, -0.785398, 0.785398),
    ("head_twist", 13, -0.785398, 0.785398),
    ("scapula_abduction_r", 14, -0.628, 0.628),
    ("scapula_elevation_r", 14, -0.4, -0.1),
    ("scapula_upward_rot_r", 14, -0.19, 0.319),
    ("shoulder_r_x", 15, -1.570796, 3.070796),
    ("shoulder_r_y", 15, -1.570796, 1.570796),
    ("shoulder_r_z", 15, -1.570796, 1.570796),
    ("elbow_flexion_r", 16, 0.0, 2.356194),
    ("pro_sup_r", 17, -1.178097, 1.178097),
    ("wrist_flexion_r", 18, -1.570796, 1.570796),
    ("wrist_deviation_r", 18, -0.785398, 0.785398),
    ("scapula_abduction_l", 19, -0.628, 0.628),
    ("scapula_elevation_l", 19, -0.4, -0.1),
    ("scapula_upward_rot_l", 19, -0.21, 0.219),
    ("shoulder_l_x", 20, -3.070796, 1.570796),
    ("shoulder_l_y", 20, -1.570796, 1.570796),
    ("shoulder_l_z", 20, -1.570796, 1.570796),
    ("elbow_flexion_l", 21, 0.0, 2.356194),
    ("pro_sup_l", 22, -1.570796, 1.570796),
    ("wrist_flexion_l", 23, -1.570796, 1.570796),
    ("wrist_deviation_l", 23, -0.785398, 0.785398),
)

DOFS: tuple[Dof, ...] = tuple(Dof(i, *row) for i, row in enumerate(_DOF_ROWS))
DOF_NAMES: tuple[str, ...] = tuple(d.name for d in DOFS)
NUM_DOFS = 46
NUM_BETAS = 10

BONE_NAMES: tuple[str, ...] = (
    "pelvis", "femur_r", "tibia_r", "talus_r", "calcn_r", "toes_r",
    "femur_l", "tibia_l", "talus_l", "calcn_l", "toes_l",
    "lumbar_body", "thorax", "head",
    "scapula_r", "humerus_r", "ulna_r", "radius_r", "hand_r",
    "scapula_l", "humerus_l", "ulna_l", "radius_l", "hand_l",
)  # fmt: skip
NUM_BONES = 24
BONE_PARENTS: tuple[int, ...] = (-1, 0, 1, 2, 3, 4, 0, 6, 7, 8, 9, 0, 11, 12, 12, 14, 15, 16, 17, 12, 19, 20, 21, 22)

# DoFs per bone, in bone order; their sum is 46 and q is laid out bone after bone.
BONE_NUM_DOFS: tuple[int, ...] = tuple(sum(1 for d in DOFS if d.bone == b) for b in range(NUM_BONES))
BONE_FIRST_DOF: tuple[int, ...] = tuple(int(x) for x in np.concatenate([[0], np.cumsum(BONE_NUM_DOFS)[:-1]]))
BONES_3DOF: tuple[int, ...] = tuple(b for b in range(NUM_BONES) if BONE_NUM_DOFS[b] == 3)
BONES_1DOF: tuple[int, ...] = tuple(b for b in range(NUM_BONES) if BONE_NUM_DOFS[b] == 1)
BONES_2DOF: tuple[int, ...] = tuple(b for b in range(NUM_BONES) if BONE_NUM_DOFS[b] == 2)

# Bones whose rest orientation does not follow the shape (leaves and the head): Gk = I.
FIXED_ORIENTATION_BONES: tuple[int, ...] = (0, 5, 10, 13, 18, 23)

# SKEL bone -> SMPL joint whose pose blend shapes it drives (0 means none: the SMPL root is excluded).
SKEL_TO_SMPL_JOINT: tuple[int, ...] = (
    0,
    2,
    5,
    8,
    8,
    11,
    1,
    4,
    7,
    7,
    10,
    3,
    6,
    15,
    14,
    17,
    19,
    0,
    21,
    13,
    16,
    18,
    0,
    20,
)


def _pin_axis(euler_xyz: tuple[float, float, float]) -> tuple[float, float, float]:
    """The z axis of a frame rotated by R_XYZ = Rx·Ry·Rz (OpenSim parent_frame orientation)."""
    rx, ry, _ = euler_xyz  # Rz turns about z itself and leaves the axis alone
    # Third column of Rx·Ry·Rz.
    return (math.sin(ry), -math.sin(rx) * math.cos(ry), math.cos(rx) * math.cos(ry))


_X, _Y, _Z = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)


def _neg(a: tuple[float, float, float]) -> tuple[float, float, float]:
    return (-a[0], -a[1], -a[2])


# Rotation axis of each DoF in its bone's frame, flips folded in; the first DoF of a bone is applied first.
_BONE_AXES: tuple[tuple[tuple[float, float, float], ...], ...] = (
    (_Z, _X, _Y),  # pelvis
    (_Z, _X, _Y),  # femur_r
    (_neg(_Z),),  # tibia_r
    (_pin_axis((0.175895, -0.105208, 0.0186622)),),  # talus_r
    (_pin_axis((-1.76818999, 0.906223, 1.8196)),),  # calcn_r
    (_pin_axis((-3.14158999, 0.619901, 0.0)),),  # toes_r
    (_Z, _neg(_X), _neg(_Y)),  # femur_l
    (_neg(_Z),),  # tibia_l
    (_pin_axis((0.175895, -0.105208, 0.0186622)),),  # talus_l
    (_pin_axis((1.76818999, -0.906223, 1.8196)),),  # calcn_l
    (_pin_axis((-3.14158999, -0.619901, 0.0)),),  # toes_l
    (_X, _Z, _Y),  # lumbar_body
    (_X, _Z, _Y),  # thorax
    (_X, _Z, _Y),  # head
    (_Y, _neg(_Z), _neg(_X)),  # scapula_r
    (_X, _Y, _Z),  # humerus_r
    ((0.0494, 0.0366, 0.99810825),),  # ulna_r
    ((-0.01716099, 0.99266564, -0.11966796),),  # radius_r
    (_X, _neg(_Z)),  # hand_r
    (_Y, _Z, _X),  # scapula_l
    (_X, _Y, _Z),  # humerus_l
    ((-0.0494, -0.0366, 0.99810825),),  # ulna_l
    ((0.01716099, -0.99266564, -0.11966796),),  # radius_l
    (_neg(_X), _neg(_Z)),  # hand_l
)


def dof_axes() -> np.ndarray:
    """Unit rotation axis of every DoF in its bone's frame.

    Returns:
        (46, 3) float64.
    """
    axes = np.array([axis for bone in _BONE_AXES for axis in bone], dtype=np.float64)
    return axes / np.linalg.norm(axes, axis=1, keepdims=True)


def dof_limits() -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper joint limits (radians); the unlimited pelvis DoFs get -inf / +inf.

    Returns:
        lower (46,), upper (46,) float64.
    """
    lower = np.array([-np.inf if d.lower is None else d.lower for d in DOFS])
    upper = np.array([np.inf if d.upper is None else d.upper for d in DOFS])
    return lower, upper


LIMITED_DOFS: tuple[int, ...] = tuple(d.index for d in DOFS if d.lower is not None)

# Pose-dependent translations of the non-pure-rotation joints.
SCAPULA_BONES = {"right": 14, "left": 19}
SPINE_ARC_BONES: dict[int, tuple[int, int, int, int]] = {
    # bone: (bending DoF, extension DoF, lower joint, upper joint); arc length |J_upper.y - J_lower.y|.
    11: (17, 18, 0, 11),
    12: (20, 21, 11, 12),
    13: (23, 24, 12, 13),
}

# ---------------------------------------------------------------- SMPL and the 44 dataset keypoints
SMPL_JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck",
    "left_collar", "right_collar", "head", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hand", "right_hand",
)  # fmt: skip
SMPL_PARENTS: tuple[int, ...] = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
SMPL_NUM_VERTICES = 6890
SMPL_NUM_FACES = 13776

# SPIN / HMR2.0 order: 25 OpenPose BODY_25 keypoints, then 19 extra joints.
KEYPOINT_NAMES: tuple[str, ...] = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder",
    "left_elbow", "left_wrist", "mid_hip", "right_hip", "right_knee", "right_ankle",
    "left_hip", "left_knee", "left_ankle", "right_eye", "left_eye", "right_ear",
    "left_ear", "left_big_toe", "left_small_toe", "left_heel", "right_big_toe",
    "right_small_toe", "right_heel",
    "right_ankle_extra", "right_knee_extra", "right_hip_extra", "left_hip_extra",
    "left_knee_extra", "left_ankle_extra", "right_wrist_extra", "right_elbow_extra",
    "right_shoulder_extra", "left_shoulder_extra", "left_elbow_extra", "left_wrist_extra",
    "neck_lsp", "head_top_lsp", "pelvis_mpii", "thorax_mpii", "spine_h36m", "jaw_h36m",
    "head_h36m",
)  # fmt: skip
NUM_KEYPOINTS = 44
