"""The procedural adult humanoid behind the synthetic SMPL and SKEL files.

Geometry: a coarse quad "box model" (a torso of stacked rings; legs, feet, arms, flat hands,
neck, head and nose grown by face extrusion), two Catmull–Clark steps, triangulation, and
longest-edge splits up to exactly 6890 vertices and 13776 faces, SMPL's counts. The neutral
body fixes the diagonals and the splits, so male, female and neutral share one topology, as
SMPL and SKEL share theirs. Its vertex order puts the nose, eyes, ears, toes and heels at the
vertex ids smplx's `vertex_ids['smplh']` names for them, so HSMR's keypoint recipe (smplx's vertex
selector, `hsmr_model.hsmr_keypoints`) finds them on the synthetic skin as on SMPL's.
Frame: SMPL's (metres, Y up, facing +Z, the subject's left at +X), T-pose, root-centred on the
SMPL pelvis joint.

Rigging: joints are placed at anatomical landmarks; every joint and keypoint regressor row is a
non-negative, sum-to-one weighting of nearby skin vertices that reproduces its point exactly in
the rest pose (so joints follow the shape blend shapes, as SMPL's do). SKEL's skinning weights come
from the nearest bone segment, diffused over the mesh so joints blend, with at most four
influences per vertex; SMPL's move each vertex with the SMPL joint of its SKEL bones.

Shape directions (`SHAPE_DIRECTION_NAMES`, roughly one adult standard deviation per unit β):
0 height (about +7 cm), 1 girth (radial inflation around the bones, stronger on the torso),
2 leg length (below the hips), 3 shoulder width, 4 hip width, 5 arm length, 6 torso depth,
7 head size, 8 arm muscularity (upper arm more than forearm), 9 neck length. Pose correctives are
small smooth bulges along the normals around each SMPL joint, seeded.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import scipy.sparse as sp

from hsmr_data.render import vertex_normals
from hsmr_data.synthetic.mesh_ops import (
    QuadCage,
    catmull_clark,
    replay_splits,
    shorter_diagonals,
    split_longest_edges,
    triangulate,
)
from hsmr_model import skel_constants as C
from hsmr_model.hsmr_keypoints import SMPLH_FACE_FEET_VERTICES

X, Y, Z = np.eye(3)


@dataclass(frozen=True)
class Proportions:
    height: float
    shoulder: float  # torso half-width at the shoulders (cage)
    chest: float
    waist: float
    hip: float
    depth: float  # torso half-depth at the chest (cage)
    thigh: float


PROPORTIONS = {
    "neutral": Proportions(1.70, 0.215, 0.195, 0.165, 0.185, 0.145, 0.092),
    "male": Proportions(1.78, 0.230, 0.210, 0.172, 0.178, 0.150, 0.094),
    "female": Proportions(1.64, 0.195, 0.185, 0.150, 0.198, 0.140, 0.096),
}

LEG_X = 0.105
FACE_RING_Y = 1.70
ARM_Y, ARM_Z = 1.375, -0.01


def _ring(cage: QuadCage, y: float, w: float, d: float, zc: float = 0.0) -> list[int]:
    """Eight torso vertices at height y: front row F0..F3 (−x → +x), then back row B3..B0."""
    xs = (-w, -w / 3, w / 3, w)
    front = [cage.add_vertex((x, y, zc + d)) for x in xs]
    back = [cage.add_vertex((x, y, zc - d)) for x in reversed(xs)]
    return front + back


def build_cage(p: Proportions) -> tuple[np.ndarray, np.ndarray]:
    """The coarse quad body (about 1.84 m before the final scaling), in a T-pose, feet at y = 0."""
    cage = QuadCage()
    torso = [  # (y, half-width, half-depth, z centre)
        (0.80, p.hip - 0.005, 0.125, 0.0),
        (0.92, p.hip, 0.140, -0.01),
        (1.04, p.waist, 0.125, 0.0),
        (1.17, p.chest - 0.01, p.depth - 0.005, 0.005),
        (1.30, p.chest, p.depth, 0.005),
        (1.43, p.shoulder, 0.115, -0.01),
    ]
    rings = [_ring(cage, *r) for r in torso]
    for lower, upper in zip(rings, rings[1:], strict=False):
        for k in range(8):
            a, b = lower[k], lower[(k + 1) % 8]
            cage.add_face([a, b, upper[(k + 1) % 8], upper[k]])
    bottom, top = rings[0], rings[-1]
    f0, f1, f2, f3, b3, b2, b1, b0 = bottom
    right_hip = cage.add_face([f0, b0, b1, f1])
    cage.add_face([f1, b1, b2, f2])
    left_hip = cage.add_face([f2, b2, b3, f3])
    t0, t1, t2, t3, u3, u2, u1, u0 = top
    cage.add_face([t0, t1, u1, u0])
    neck = cage.add_face([t1, t2, u2, u1])
    cage.add_face([t2, t3, u3, u2])
    # Arm roots: the side faces of the uppermost torso segment.
    r4 = rings[-2]
    right_side = cage.find_face([r4[7], r4[0], top[0], top[7]])
    left_side = cage.find_face([r4[3], r4[4], top[4], top[3]])

    for side, hip_face in ((-1.0, right_hip), (1.0, left_hip)):
        _leg(cage, hip_face, side, p)
    for side, face in ((-1.0, right_side), (1.0, left_side)):
        _arm(cage, face, side)
    _head(cage, neck)
    return cage.arrays()


def _leg(cage: QuadCage, face: int, side: float, p: Proportions) -> None:
    t = p.thigh
    rings = [  # (y, x offset, half-width x, half-depth z, z centre)
        (0.72, LEG_X, t, t + 0.012, 0.0),
        (0.60, LEG_X - 0.002, t - 0.010, t - 0.004, 0.0),
        (0.49, LEG_X - 0.005, 0.066, 0.070, 0.0),
        (0.38, LEG_X - 0.007, 0.070, 0.076, -0.01),
        (0.22, LEG_X - 0.009, 0.052, 0.056, -0.01),
        (0.10, LEG_X - 0.01, 0.044, 0.048, -0.015),
        (0.03, LEG_X - 0.01, 0.048, 0.060, -0.015),
    ]
    for y, x, a, b, zc in rings:
        face = cage.extrude(face, (side * x, y, zc), X, Z, a, b)
    # Foot: the front face of the last (ankle-to-sole) segment, pushed forward.
    foot = cage.side_face(face, Z)
    x = side * (LEG_X - 0.01)
    for z, y, a, b in ((0.08, 0.048, 0.054, 0.038), (0.15, 0.036, 0.056, 0.028), (0.205, 0.026, 0.048, 0.018)):
        foot = cage.extrude(foot, (x, y, z), X, Y, a, b)


def _arm(cage: QuadCage, face: int, side: float) -> None:
    rings = [  # (|x|, half-size z, half-size y)
        (0.253, 0.072, 0.080),
        (0.329, 0.068, 0.068),
        (0.415, 0.060, 0.058),
        (0.49, 0.052, 0.052),
        (0.587, 0.052, 0.048),
        (0.69, 0.042, 0.032),
        (0.76, 0.056, 0.022),
        (0.845, 0.056, 0.020),
        (0.915, 0.044, 0.015),
    ]
    for x, a, b in rings:
        face = cage.extrude(face, (side * x, ARM_Y, ARM_Z), Z, Y, a, b)


def _head(cage: QuadCage, face: int) -> None:
    rings = [  # (y, half-width, half-depth, z centre)
        (1.475, 0.062, 0.066, -0.015),
        (1.51, 0.064, 0.070, -0.01),
        (1.545, 0.090, 0.105, 0.01),
        (1.615, 0.106, 0.125, 0.005),
        (1.70, 0.106, 0.125, 0.0),
        (1.765, 0.078, 0.095, -0.005),
        (1.79, 0.036, 0.048, -0.005),
    ]
    for y, w, d, zc in rings:
        face = cage.extrude(face, (0.0, y, zc), X, Z, w, d)
        if y == FACE_RING_Y:  # the face plane and nose grow from the front of this segment
            front = cage.side_face(face, Z)
    front = cage.extrude(front, (0.0, 1.65, 0.140), X, Y, 0.070, 0.040)
    cage.extrude(front, (0.0, 1.64, 0.150), X, Y, 0.016, 0.020)


# ------------------------------------------------------------------------------------- rigging


def _mirror(points: dict[str, tuple[float, float, float]]) -> dict[str, np.ndarray]:
    """Expand 'name_r' entries (right side, x < 0) with their left mirror 'name_l'."""
    out = {}
    for name, p in points.items():
        out[name] = np.array(p, dtype=float)
        if name.endswith("_r"):
            out[name[:-2] + "_l"] = np.array(p) * np.array([-1.0, 1.0, 1.0])
    return out


def design_points(p: Proportions) -> dict[str, np.ndarray]:
    """Anatomical landmarks in the cage's frame (feet at y = 0, before scaling)."""
    sx = p.shoulder - 0.01
    return _mirror({
        "pelvis": (0.0, 0.935, 0.0), "spine1": (0.0, 1.04, -0.015), "spine2": (0.0, 1.17, -0.015),
        "spine3": (0.0, 1.23, -0.01), "neck": (0.0, 1.455, -0.02), "head": (0.0, 1.545, 0.0),
        "hip_r": (-0.09, 0.87, 0.0), "knee_r": (-(LEG_X - 0.005), 0.49, 0.0),
        "ankle_r": (-(LEG_X - 0.01), 0.085, -0.015), "foot_r": (-(LEG_X - 0.01), 0.025, 0.12),
        "collar_r": (-0.075, 1.41, -0.015), "shoulder_r": (-(sx - 0.005), ARM_Y, ARM_Z),
        "elbow_r": (-0.49, ARM_Y, ARM_Z), "wrist_r": (-0.69, ARM_Y, ARM_Z), "hand_r": (-0.79, ARM_Y, ARM_Z),
        "skel_pelvis": (0.0, 0.915, -0.02), "skel_hip_r": (-0.09, 0.875, 0.0),
        "skel_knee_r": (-(LEG_X - 0.005), 0.485, 0.0), "skel_ankle_r": (-(LEG_X - 0.01), 0.085, -0.015),
        "subtalar_r": (-(LEG_X - 0.01), 0.07, -0.028), "mtp_r": (-(LEG_X - 0.01), 0.022, 0.13),
        "lumbar": (0.0, 1.015, -0.045), "thorax": (0.0, 1.215, -0.045), "skel_head": (0.0, 1.465, -0.025),
        "scapula_r": (-0.09, 1.375, -0.07), "humerus_r": (-(sx - 0.005), ARM_Y, ARM_Z),
        "ulna_r": (-0.485, ARM_Y, ARM_Z), "radius_r": (-0.505, ARM_Y, ARM_Z), "skel_hand_r": (-0.69, ARM_Y, ARM_Z),
        # surface keypoints: the nearest skin to these points
        "eye_r": (-0.035, 1.665, 0.25), "ear_r": (-0.14, 1.645, 0.0), "big_toe_r": (-(LEG_X - 0.035), 0.01, 0.32),
        "small_toe_r": (-(LEG_X + 0.02), 0.01, 0.30), "heel_r": (-(LEG_X - 0.01), 0.0, -0.16),
        "top": (0.0, 2.0, 0.0),
        # interior keypoints of the extra set
        "neck_lsp": (0.0, 1.50, -0.01), "thorax_mpii": (0.0, 1.43, 0.0), "spine_h36m": (0.0, 1.12, -0.02),
        "jaw_h36m": (0.0, 1.555, 0.06), "head_h36m": (0.0, 1.64, 0.0),
        # ends of the leaf segments, for skinning
        "toe_tip_r": (-(LEG_X - 0.01), 0.02, 0.24), "finger_tip_r": (-0.95, ARM_Y, ARM_Z),
        "head_top": (0.0, 1.80, 0.0),
    })  # fmt: skip


# SMPL joints that turn the same body part as a SKEL bone sit at that bone's joint, so that the two
# models move the skin alike (real SKEL was built on SMPL's skin); the others (spine3, neck, feet,
# hands) keep SMPL-style landmarks.
SMPL_JOINT_POINTS = (
    "skel_pelvis", "skel_hip_l", "skel_hip_r", "lumbar", "skel_knee_l", "skel_knee_r", "thorax",
    "skel_ankle_l", "skel_ankle_r", "spine3", "foot_l", "foot_r", "neck", "scapula_l", "scapula_r", "skel_head",
    "humerus_l", "humerus_r", "ulna_l", "ulna_r", "skel_hand_l", "skel_hand_r", "hand_l", "hand_r",
)  # fmt: skip
SKEL_JOINT_POINTS = (
    "skel_pelvis", "skel_hip_r", "skel_knee_r", "skel_ankle_r", "subtalar_r", "mtp_r",
    "skel_hip_l", "skel_knee_l", "skel_ankle_l", "subtalar_l", "mtp_l",
    "lumbar", "thorax", "skel_head", "scapula_r", "humerus_r", "ulna_r", "radius_r", "skel_hand_r",
    "scapula_l", "humerus_l", "ulna_l", "radius_l", "skel_hand_l",
)  # fmt: skip


# --------------------------------------------------------------------------------- the surface
@dataclass(frozen=True)
class _Topology:
    """What fixes the triangle mesh: the neutral body's diagonals and edge splits, reused for every sex."""

    use02: np.ndarray
    splits: tuple[tuple[int, int], ...]
    faces: np.ndarray  # in the final vertex order
    order: np.ndarray  # (6890,) final vertex i is vertex order[i] of the split surface


def _subdivided(p: Proportions) -> tuple[np.ndarray, np.ndarray]:
    vertices, quads = build_cage(p)
    for _ in range(2):
        vertices, quads = catmull_clark(vertices, quads)
    return vertices, quads


# The design point of each smplh vertex id (the nose has none: it is the foremost head vertex).
_SMPLH_POINTS = {
    "reye": "eye_r", "leye": "eye_l", "rear": "ear_r", "lear": "ear_l",
    "LBigToe": "big_toe_l", "LSmallToe": "small_toe_l", "LHeel": "heel_l",
    "RBigToe": "big_toe_r", "RSmallToe": "small_toe_r", "RHeel": "heel_r",
}  # fmt: skip


@lru_cache(maxsize=1)
def _topology() -> _Topology:
    vertices, quads = _subdivided(PROPORTIONS["neutral"])
    use02 = shorter_diagonals(vertices, quads)
    surface, faces, splits = split_longest_edges(vertices, triangulate(quads, use02), C.SMPL_NUM_VERTICES)
    placed, points = _placed(PROPORTIONS["neutral"], surface)
    order = np.arange(len(surface))
    for name, target in SMPLH_FACE_FEET_VERTICES:  # swap each landmark vertex to its smplh id
        if name == "nose":
            landmark = _nose_vertex(placed, points)
        else:
            landmark = int(np.argmin(np.linalg.norm(placed - points[_SMPLH_POINTS[name]], axis=1)))
        here = int(np.flatnonzero(order == landmark)[0])
        order[[target, here]] = order[[here, target]]
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    return _Topology(use02=use02, splits=tuple(splits), faces=position[faces], order=order)


def body_surface(p: Proportions) -> tuple[np.ndarray, np.ndarray]:
    """The closed genus-0 skin (6890 vertices, 13776 faces) in the cage frame, feet at y = 0."""
    topology = _topology()
    vertices, _ = _subdivided(p)
    return replay_splits(vertices, list(topology.splits))[topology.order], topology.faces


def _placed(p: Proportions, vertices: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Cage-frame vertices and the design points scaled to the body's height, the pelvis at the origin."""
    scale = p.height / np.ptp(vertices[:, 1])
    origin = design_points(p)["pelvis"] * scale
    return vertices * scale - origin, {name: q * scale - origin for name, q in design_points(p).items()}


def _nose_vertex(vertices: np.ndarray, points: dict[str, np.ndarray]) -> int:
    """The foremost (+Z) vertex of the head."""
    head = vertices[:, 1] > points["neck"][1] + 0.05
    return int(np.flatnonzero(head)[np.argmax(vertices[head, 2])])


# ---------------------------------------------------------------------------------- regressors
def _min_change_weights(points: np.ndarray, target: np.ndarray) -> np.ndarray | None:
    """Non-negative weights summing to 1 whose weighted mean of `points` is `target`, as close to
    uniform as possible (an active-set least-change solve); None if `target` is outside their hull."""
    n = len(points)
    a = np.vstack([points.T, np.ones(n)])
    b = np.append(target, 1.0)
    free = np.ones(n, dtype=bool)
    w = np.zeros(n)
    for _ in range(50):
        af = a[:, free]
        w0 = np.full(free.sum(), 1.0 / n)
        try:
            correction = af.T @ np.linalg.solve(af @ af.T, b - af @ w0)
        except np.linalg.LinAlgError:
            return None
        w[:] = 0.0
        w[free] = w0 + correction
        if (w >= -1e-12).all():
            w = np.clip(w, 0.0, None)
            return w if np.abs(a @ w - b).max() < 1e-9 else None
        free &= w > 0
        if free.sum() < 4:
            return None
    return None


def regressor_row(vertices: np.ndarray, target: np.ndarray, allowed: np.ndarray | None = None) -> np.ndarray:
    """Weights over nearby vertices that reproduce `target` exactly: (V,) non-negative, summing to 1.

    The neighbourhood grows until the target lies inside it, so deep joints use a ring across the
    body and shallow ones a local patch, like SMPL's regressor.
    """
    distance = np.linalg.norm(vertices - target, axis=1)
    if allowed is not None:
        distance = np.where(allowed, distance, np.inf)
    order = np.argsort(distance)
    for k in (24, 48, 96, 192, 384):
        ids = order[:k]
        w = _min_change_weights(vertices[ids], target)
        if w is not None:
            row = np.zeros(len(vertices))
            row[ids] = w
            return row
    raise ValueError(f"no vertex neighbourhood encloses the point {target}")


def _nearest_row(vertices: np.ndarray, target: np.ndarray, count: int = 3) -> np.ndarray:
    """A surface keypoint: the mean of the `count` vertices nearest to `target`."""
    row = np.zeros(len(vertices))
    row[np.argsort(np.linalg.norm(vertices - target, axis=1))[:count]] = 1.0 / count
    return row


# ---------------------------------------------------------------------------------- skinning
SKEL_SEGMENTS = (  # bone: (from, to) landmark names
    ("skel_pelvis", "lumbar"), ("skel_hip_r", "skel_knee_r"), ("skel_knee_r", "skel_ankle_r"),
    ("skel_ankle_r", "subtalar_r"), ("subtalar_r", "mtp_r"), ("mtp_r", "toe_tip_r"),
    ("skel_hip_l", "skel_knee_l"), ("skel_knee_l", "skel_ankle_l"), ("skel_ankle_l", "subtalar_l"),
    ("subtalar_l", "mtp_l"), ("mtp_l", "toe_tip_l"), ("lumbar", "thorax"), ("thorax", "skel_head"),
    ("skel_head", "head_top"), ("scapula_r", "humerus_r"), ("humerus_r", "ulna_r"), ("ulna_r", "radius_r"),
    ("radius_r", "skel_hand_r"), ("skel_hand_r", "finger_tip_r"), ("scapula_l", "humerus_l"),
    ("humerus_l", "ulna_l"), ("ulna_l", "radius_l"), ("radius_l", "skel_hand_l"), ("skel_hand_l", "finger_tip_l"),
)  # fmt: skip
# SKEL bone → the SMPL joint whose rotation moves the same skin (the radius turns with the elbow).
SMPL_JOINT_OF_BONE = tuple({17: 19, 22: 18}.get(bone, joint) for bone, joint in enumerate(C.SKEL_TO_SMPL_JOINT))


def smpl_weights_from_skel(skel_weights: np.ndarray) -> np.ndarray:
    """SMPL skinning weights (V, 24) that move each vertex with the SMPL joint of its SKEL bones."""
    weights = np.zeros_like(skel_weights)
    for bone, joint in enumerate(SMPL_JOINT_OF_BONE):
        weights[:, joint] += skel_weights[:, bone]
    return weights


def segment_distances(vertices: np.ndarray, starts: np.ndarray, ends: np.ndarray):
    """Distance of every vertex to every segment, and the closest point on it. (V,S), (V,S,3)."""
    axis = ends - starts
    t = np.einsum("vsc,sc->vs", vertices[:, None] - starts[None], axis) / (axis * axis).sum(1).clip(1e-12)
    closest = starts[None] + t.clip(0, 1)[..., None] * axis[None]
    return np.linalg.norm(vertices[:, None] - closest, axis=-1), closest


def _vertex_adjacency(faces: np.ndarray, count: int) -> sp.csr_matrix:
    i = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2], faces[:, 1], faces[:, 2], faces[:, 0]])
    j = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0], faces[:, 0], faces[:, 1], faces[:, 2]])
    adjacency = sp.csr_matrix((np.ones(len(i)), (i, j)), shape=(count, count))
    adjacency.data[:] = 1.0
    return sp.diags(1.0 / np.asarray(adjacency.sum(1)).ravel()) @ adjacency


def skinning_weights(vertices, faces, starts, ends, iterations: int = 14, keep: int = 4) -> np.ndarray:
    """Nearest-segment assignment, diffused over the mesh so joints blend smoothly. (V, S)."""
    distance, _ = segment_distances(vertices, starts, ends)
    weights = np.zeros_like(distance)
    weights[np.arange(len(vertices)), distance.argmin(1)] = 1.0
    mean_neighbour = _vertex_adjacency(faces, len(vertices))
    for _ in range(iterations):
        weights = 0.5 * weights + 0.5 * (mean_neighbour @ weights)
    # Keep the strongest few influences, as LBS rigs do, and renormalise.
    strongest = np.zeros_like(weights, dtype=bool)
    np.put_along_axis(strongest, np.argsort(-weights, axis=1)[:, :keep], True, axis=1)
    weights = np.where(strongest & (weights > 1e-3), weights, 0.0)
    return weights / weights.sum(1, keepdims=True)


# ------------------------------------------------------------------------------ shape and pose
SHAPE_DIRECTION_NAMES = (
    "height", "girth", "leg_length", "shoulder_width", "hip_width",
    "arm_length", "torso_depth", "head_size", "arm_muscularity", "neck_length",
)  # fmt: skip


def _smoothstep(x, lo, hi):
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def shape_directions(
    vertices: np.ndarray, points: dict[str, np.ndarray], skel_closest: np.ndarray, part: np.ndarray
) -> np.ndarray:
    """Ten displacement fields with meaning, about one standard deviation of adults per unit. (V, 3, 10)."""
    v = vertices
    x, y, z = v.T
    sign = np.sign(x)
    hip_y, neck_y, shoulder_x = points["hip_r"][1], points["neck"][1], abs(points["shoulder_r"][0])
    floor_y = v[:, 1].min()
    radial = v - skel_closest  # away from the bone each vertex hangs on
    arm = np.isin(part, [15, 16, 17, 18, 20, 21, 22, 23])
    torso_weight = _smoothstep(y, hip_y - 0.25, hip_y) * (1 - _smoothstep(y, neck_y - 0.05, neck_y + 0.05))
    d = np.zeros((len(v), 3, 10))
    d[:, :, 0] = 0.041 * (v - np.array([0.0, floor_y, 0.0]))  # height: about +7 cm
    girth = np.where(np.isin(part, [18, 23, 5, 10, 13]), 0.03, 0.11) * (1.0 + 0.6 * torso_weight)
    d[:, :, 1] = girth[:, None] * radial
    leg = np.clip(hip_y - y, 0.0, None)
    d[:, 1, 2] = -0.055 * leg  # leg length: the legs lengthen below the hips
    shoulder_zone = _smoothstep(y, hip_y + 0.35, neck_y - 0.02) * _smoothstep(np.abs(x), 0.04, shoulder_x)
    d[:, 0, 3] = 0.022 * sign * shoulder_zone
    hip_zone = (1 - _smoothstep(y, hip_y + 0.05, hip_y + 0.2)) * _smoothstep(np.abs(x), 0.0, 0.12) * ~arm
    d[:, 0, 4] = 0.02 * sign * hip_zone
    d[:, 0, 5] = 0.06 * sign * np.clip(np.abs(x) - shoulder_x, 0.0, None) * arm  # arm length
    d[:, 2, 6] = 0.12 * z * torso_weight * ~arm  # chest and belly depth
    head_centre = points["head"] + np.array([0.0, 0.08, 0.0])
    d[:, :, 7] = 0.06 * (v - head_centre) * _smoothstep(y, neck_y + 0.02, neck_y + 0.1)[:, None]
    towards_wrist = _smoothstep(np.abs(x), abs(points["elbow_r"][0]), abs(points["wrist_r"][0]))
    d[:, :, 8] = (0.12 * arm * (1 - 0.7 * towards_wrist))[:, None] * radial  # biceps and forearms
    d[:, 1, 9] = 0.025 * _smoothstep(y, neck_y - 0.02, neck_y + 0.08)  # neck length: the head rises
    return d


def pose_directions(vertices, normals, smpl_joints, rng: np.random.Generator) -> np.ndarray:
    """Small smooth correctives around each SMPL joint for the (R − I) features. (V, 3, 207)."""
    directions = np.zeros((len(vertices), 3, 23 * 9))
    for j in range(1, 24):
        falloff = np.exp(-np.sum((vertices - smpl_joints[j]) ** 2, axis=1) / (2 * 0.06**2))
        amplitude = rng.normal(scale=0.003, size=9)
        for k in range(9):
            directions[:, :, (j - 1) * 9 + k] = amplitude[k] * falloff[:, None] * normals
    return directions


# ------------------------------------------------------------------------------------ assembly
@dataclass(frozen=True)
class Humanoid:
    """One synthetic body in SMPL's frame (metres, Y up, facing +Z, T-pose, pelvis at the origin).
    Arrays are shared between calls (the builder is cached): treat them as read-only."""

    vertices: np.ndarray  # (6890, 3)
    faces: np.ndarray  # (13776, 3) int64, outward counter-clockwise
    smpl_joints: np.ndarray  # (24, 3) SMPL order
    skel_joints: np.ndarray  # (24, 3) SKEL bone order
    smpl_weights: np.ndarray  # (6890, 24)
    skel_weights: np.ndarray  # (6890, 24)
    smpl_joint_regressor: sp.csr_matrix  # (24, 6890)
    skel_joint_regressor: sp.csr_matrix  # (24, 6890)
    keypoint_regressor: sp.csr_matrix  # (44, 6890)
    shapedirs: np.ndarray  # (6890, 3, 10)
    posedirs: np.ndarray  # (6890, 3, 207)
    vertex_part: np.ndarray  # (6890,) index into PART_NAMES


PART_NAMES = C.BONE_NAMES  # each vertex belongs to the SKEL bone it hangs on


def _keypoint_rows(vertices: np.ndarray, points: dict[str, np.ndarray], smpl_rows: np.ndarray) -> np.ndarray:
    smpl = {name: smpl_rows[i] for i, name in enumerate(C.SMPL_JOINT_NAMES)}
    nose = np.zeros(len(vertices))
    nose[_nose_vertex(vertices, points)] = 1.0
    surface = {name: _nearest_row(vertices, points[name]) for name in (
        "eye_r", "eye_l", "ear_r", "ear_l", "big_toe_l", "small_toe_l", "heel_l",
        "big_toe_r", "small_toe_r", "heel_r", "top")}  # fmt: skip
    inner = {name: regressor_row(vertices, points[name]) for name in (
        "neck_lsp", "thorax_mpii", "spine_h36m", "jaw_h36m", "head_h36m")}  # fmt: skip
    rows = [
        nose, smpl["neck"], smpl["right_shoulder"], smpl["right_elbow"], smpl["right_wrist"],
        smpl["left_shoulder"], smpl["left_elbow"], smpl["left_wrist"], smpl["pelvis"], smpl["right_hip"],
        smpl["right_knee"], smpl["right_ankle"], smpl["left_hip"], smpl["left_knee"], smpl["left_ankle"],
        surface["eye_r"], surface["eye_l"], surface["ear_r"], surface["ear_l"], surface["big_toe_l"],
        surface["small_toe_l"], surface["heel_l"], surface["big_toe_r"], surface["small_toe_r"], surface["heel_r"],
        smpl["right_ankle"], smpl["right_knee"], smpl["right_hip"], smpl["left_hip"], smpl["left_knee"],
        smpl["left_ankle"], smpl["right_wrist"], smpl["right_elbow"], smpl["right_shoulder"], smpl["left_shoulder"],
        smpl["left_elbow"], smpl["left_wrist"],
        inner["neck_lsp"], surface["top"], (smpl["right_hip"] + smpl["left_hip"]) / 2, inner["thorax_mpii"],
        inner["spine_h36m"], inner["jaw_h36m"], inner["head_h36m"],
    ]  # fmt: skip
    return np.stack(rows)


@lru_cache(maxsize=8)
def build_humanoid(sex: Literal["neutral", "male", "female"] = "neutral", seed: int = 0) -> Humanoid:
    """The synthetic adult of the given sex; deterministic for a seed (which drives the pose correctives)."""
    if sex not in PROPORTIONS:
        raise ValueError(f"sex must be one of {sorted(PROPORTIONS)}, got {sex!r}")
    proportions = PROPORTIONS[sex]
    vertices, faces = body_surface(proportions)
    vertices, points = _placed(proportions, vertices)

    smpl_joints = np.stack([points[n] for n in SMPL_JOINT_POINTS])
    skel_joints = np.stack([points[n] for n in SKEL_JOINT_POINTS])
    smpl_rows = np.stack([regressor_row(vertices, j) for j in smpl_joints])
    skel_rows = np.stack([regressor_row(vertices, j) for j in skel_joints])

    def segments(pairs):
        return np.stack([points[a] for a, _ in pairs]), np.stack([points[b] for _, b in pairs])

    skel_starts, skel_ends = segments(SKEL_SEGMENTS)
    distance, closest = segment_distances(vertices, skel_starts, skel_ends)
    part = distance.argmin(1)
    skel_closest = closest[np.arange(len(vertices)), part]
    normals = vertex_normals(vertices, faces)
    skel_weights = skinning_weights(vertices, faces, skel_starts, skel_ends)
    rng = np.random.default_rng(seed)
    return Humanoid(
        vertices=vertices,
        faces=faces,
        smpl_joints=smpl_joints,
        skel_joints=skel_joints,
        smpl_weights=smpl_weights_from_skel(skel_weights),
        skel_weights=skel_weights,
        smpl_joint_regressor=sp.csr_matrix(smpl_rows),
        skel_joint_regressor=sp.csr_matrix(skel_rows),
        keypoint_regressor=sp.csr_matrix(_keypoint_rows(vertices, points, smpl_rows)),
        shapedirs=shape_directions(vertices, points, skel_closest, part),
        posedirs=pose_directions(vertices, normals, smpl_joints, rng),
        vertex_part=part,
    )
