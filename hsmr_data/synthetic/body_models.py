"""Synthetic stand-ins for the licensed body-model files, written in the official formats.

From one procedural humanoid (`hsmr_data.synthetic.humanoid`) this writes:

- `smpl/SMPL_NEUTRAL.pkl`: the SMPL v1.0 layout, arrays as chumpy objects and the joint
  regressor as a scipy CSC matrix, like the official file, so the chumpy-free loader is
  exercised on exactly what a real user has; `smpl/SMPL_MALE.pkl` and `smpl/SMPL_FEMALE.pkl` the
  same for the male and female bodies (the meshes of the SKEL files of the same sex);
- `skel/skel_male.pkl`, `skel/skel_female.pkl`: the SKEL v1.1.1 layout with every official key;
- `hsmr/J_regressor_SKEL_mix_MALE.pkl` (scipy sparse) and `hsmr/SMPL_to_J19.pkl` (a numpy array):
  stand-ins of the two pickles HSMR's keypoints come from, in their formats;
- `smpl/keypoint_regressor_44.npz`: the 44 dataset keypoints as a regressor on the skin, composed
  from those two pickles exactly as `hsmr models keypoints` composes real ones.

The synthetic SKEL rig. Each bone has an OpenSim-style frame (X forward, Y up, Z to the right
in the anatomical pose) whose T-pose orientation in SMPL's frame is `bone_frames()`: the body
frames turned −90° about Y, the arms additionally abducted to the horizontal. The synthetic
BSM default pose turns every bone but the root by a small rotation Ra; `per_joint_rot` is the
bone frame times Ra, and the apose translations are the template bone vectors expressed in
the parent's frame with lengths changed by a few per cent. So at β = 0 the bones already point
along the body (Gk = I except where SKEL aligns with a different segment), the DoF axes act
anatomically (knee and elbow flexion bend the right way), and the skeleton meshes get
non-trivial scales.
"""

from __future__ import annotations

import pickle
import sys
import types
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from scipy.spatial import cKDTree

from hsmr_data.synthetic.humanoid import Humanoid, build_humanoid
from hsmr_model import skel_constants as C
from hsmr_model.hsmr_keypoints import NUM_EXTRA, build_keypoint_regressor, keypoint_sources
from hsmr_model.model_files import SKEL_VERSION, BodyModelPaths, gendered_smpl_path
from hsmr_model.rotations import axis_angle_to_matrix
from hsmr_model.skel_layer import bone_rest_orientation, bone_scales, local_offsets

SKEL_JOINT_NAMES = (
    "pelvis", "hip_r", "walker_knee_r", "ankle_r", "subtalar_r", "mtp_r",
    "hip_l", "walker_knee_l", "ankle_l", "subtalar_l", "mtp_l",
    "lumbar", "thorax", "head", "scapulothoracic_r", "shoulder_r", "elbow_r",
    "radioulnar_r", "radius_lunate_r", "scapulothoracic_l", "shoulder_l", "elbow_l",
    "radioulnar_l", "radius_lunate_l",
)  # fmt: skip
RIGHT_ARM = (15, 16, 17, 18)
LEFT_ARM = (20, 21, 22, 23)


def _rot(axis: str, degrees: float) -> np.ndarray:
    unit = np.eye(3)["xyz".index(axis)]
    return axis_angle_to_matrix(torch.as_tensor(unit * np.radians(degrees))).numpy()


def bone_frames() -> np.ndarray:
    """T-pose orientation of each bone's OpenSim frame in SMPL's frame.

    Returns:
        (24, 3, 3): columns are the bone frame's X (forward), Y (up), Z (right) axes.
    """
    body = _rot("y", -90.0)  # OpenSim X forward, Z right → SMPL +Z forward, −X right
    frames = np.repeat(body[None], C.NUM_BONES, axis=0)
    frames[list(RIGHT_ARM)] = _rot("z", -90.0) @ body  # the hanging right arm raised to −X
    frames[list(LEFT_ARM)] = _rot("z", 90.0) @ body
    return frames


@dataclass(frozen=True)
class SkelRig:
    """The skeleton-side arrays of a SKEL file."""

    apose_rel_transfo: np.ndarray  # (24, 4, 4)
    apose_transfo: np.ndarray  # (24, 4, 4)
    tpose_transfo: np.ndarray  # (24, 4, 4)
    per_joint_rot: np.ndarray  # (24, 3, 3)
    skel_template_v: np.ndarray  # (Nk, 3) bone meshes in their bone frames
    skel_template_f: np.ndarray  # (Fk, 3)
    skel_weights_rigid: sp.coo_matrix  # (Nk, 24)


def _homogeneous(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    out = np.zeros((*rotation.shape[:-2], 4, 4))
    out[..., :3, :3], out[..., :3, 3], out[..., 3, 3] = rotation, translation, 1.0
    return out


def _apose_rotations(rng: np.random.Generator) -> np.ndarray:
    """Small default-pose rotations Ra; the root has none, ulna and radius share one (they share a frame)."""
    axes = rng.normal(size=(C.NUM_BONES, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = rng.uniform(0.05, 0.25, size=C.NUM_BONES)
    ra = axis_angle_to_matrix(torch.as_tensor(axes * angles[:, None])).numpy()
    ra[0] = np.eye(3)
    ra[17], ra[22] = ra[16], ra[21]
    return ra


def build_skel_rig(joints: np.ndarray, rng: np.random.Generator) -> SkelRig:
    """SKEL rig for rest joints `joints` (24, 3) of the template body."""
    parents = C.BONE_PARENTS
    frames = bone_frames()
    apose_rot = _apose_rotations(rng)
    per_joint_rot = frames @ apose_rot
    length_factor = rng.uniform(0.95, 1.05, size=C.NUM_BONES)
    length_factor[18], length_factor[23] = length_factor[17], length_factor[22]

    offsets = np.zeros((C.NUM_BONES, 3))
    offsets[0] = joints[0]
    for bone in range(1, C.NUM_BONES):
        parent = parents[bone]
        offsets[bone] = length_factor[bone] * per_joint_rot[parent].T @ (joints[bone] - joints[parent])
    apose_rel = _homogeneous(apose_rot, offsets)
    apose_global = np.zeros_like(apose_rel)
    for bone in range(C.NUM_BONES):
        apose_global[bone] = apose_rel[bone] if parents[bone] < 0 else apose_global[parents[bone]] @ apose_rel[bone]

    vertices, faces, labels = _bone_meshes(joints)
    # Bone meshes are stored in their own frames at the model's bone length, so that the
    # layer's placement ([Rk01 | J] after scaling) puts them back where they were built.
    j = torch.as_tensor(joints)[None]
    rel = local_offsets(j, parents)
    apose_t = torch.as_tensor(offsets)
    rest = bone_rest_orientation(rel, apose_t, torch.as_tensor(per_joint_rot), parents)[0].numpy()
    scale = bone_scales(rel, apose_t, parents)[0].numpy()
    local = np.einsum("nba,nb->na", rest[labels], vertices - joints[labels]) / scale[labels, None]
    rigid = sp.coo_matrix((np.ones(len(labels)), (np.arange(len(labels)), labels)), shape=(len(labels), C.NUM_BONES))
    return SkelRig(
        apose_rel_transfo=apose_rel,
        apose_transfo=apose_global,
        tpose_transfo=_homogeneous(frames, joints),
        per_joint_rot=per_joint_rot,
        skel_template_v=local,
        skel_template_f=faces,
        skel_weights_rigid=rigid,
    )


def _ellipsoid(center: np.ndarray, axes: np.ndarray, rings: int = 6, segments: int = 8):
    """A closed UV ellipsoid: `axes` (3, 3) holds the three semi-axis vectors as rows."""
    theta = np.linspace(0, np.pi, rings + 1)[1:-1]
    phi = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    unit = np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], -1).reshape(-1, 3)
    unit = np.vstack([[0, 0, 1], unit, [0, 0, -1]])
    faces = []
    n_ring = rings - 1
    for s in range(segments):
        s1 = (s + 1) % segments
        faces.append([0, 1 + s1, 1 + s])
        last = 1 + (n_ring - 1) * segments
        faces.append([1 + n_ring * segments, last + s, last + s1])
        for r in range(n_ring - 1):
            a, b = 1 + r * segments + s, 1 + r * segments + s1
            c, d = a + segments, b + segments
            faces += [[a, b, d], [a, d, c]]
    return center + unit @ axes, np.array(faces)


def _bone_meshes(joints: np.ndarray):
    """One spindle per bone from its joint to its child (leaves: a short stub), in the T-pose."""
    children = [[c for c in range(C.NUM_BONES) if C.BONE_PARENTS[c] == b] for b in range(C.NUM_BONES)]
    all_v, all_f, labels = [], [], []
    for bone in range(C.NUM_BONES):
        if children[bone]:
            end = joints[children[bone]].mean(axis=0)
        else:
            parent = C.BONE_PARENTS[bone]
            end = joints[bone] + 0.5 * (joints[bone] - joints[parent])
        along = end - joints[bone]
        length = max(np.linalg.norm(along), 1e-3)
        u = along / length
        helper = np.array([1.0, 0, 0]) if abs(u[0]) < 0.9 else np.array([0, 1.0, 0])
        v = np.cross(u, helper)
        v /= np.linalg.norm(v)
        w = np.cross(u, v)
        radius = np.clip(0.12 * length, 0.008, 0.05)
        verts, faces = _ellipsoid((joints[bone] + end) / 2, np.stack([v * radius, w * radius, u * length / 2]))
        all_f.append(faces + sum(len(x) for x in all_v))
        all_v.append(verts)
        labels.append(np.full(len(verts), bone))
    return np.vstack(all_v), np.vstack(all_f).astype(np.int64), np.concatenate(labels)


def skel_model_dict(humanoid: Humanoid, rng: np.random.Generator) -> dict[str, Any]:
    """Every key of an official `skel_{male,female}.pkl`, built from the humanoid."""
    # The layer sees the joints its regressor gives, so the rig is built on exactly those.
    rig = build_skel_rig(humanoid.skel_joint_regressor @ humanoid.vertices, rng)
    kintree = np.stack([np.array(C.BONE_PARENTS), np.arange(C.NUM_BONES)]).astype(np.int64)
    return {
        "version": SKEL_VERSION,
        "skin_template_v": humanoid.vertices,
        "skin_template_f": humanoid.faces.astype(np.int64),
        "shapedirs": humanoid.shapedirs,
        "posedirs": humanoid.posedirs,
        "J_regressor": sp.coo_matrix(humanoid.smpl_joint_regressor),
        "J_regressor_osim": sp.coo_matrix(humanoid.skel_joint_regressor),
        "skin_weights": sp.coo_matrix(humanoid.skel_weights),
        "skel_template_v": rig.skel_template_v,
        "skel_template_f": rig.skel_template_f,
        "skel_weights": rig.skel_weights_rigid.copy(),
        "skel_weights_rigid": rig.skel_weights_rigid,
        "osim_kintree_table": kintree,
        "apose_rel_transfo": rig.apose_rel_transfo,
        "apose_transfo": rig.apose_transfo,
        "tpose_transfo": rig.tpose_transfo,
        "per_joint_rot": rig.per_joint_rot,
        "parameter_mapping": np.arange(C.NUM_DOFS, dtype=np.int64),
        "bone_names": list(C.BONE_NAMES),
        "joints_name": list(SKEL_JOINT_NAMES),
        "pose_params_name": list(C.DOF_NAMES),
    }


class _ChumpyCh:
    """Written into pickles as `chumpy.ch.Ch` with the state {'x': array}, as official SMPL files hold."""

    def __init__(self, value: np.ndarray):
        self.x = np.asarray(value)


@contextmanager
def _as_chumpy_module():
    """Let pickle name `_ChumpyCh` as chumpy.ch.Ch while writing, without chumpy installed."""
    saved = {name: sys.modules.get(name) for name in ("chumpy", "chumpy.ch")}
    package, module = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")
    module.Ch = _ChumpyCh
    _ChumpyCh.__module__, _ChumpyCh.__qualname__ = "chumpy.ch", "Ch"
    sys.modules.update({"chumpy": package, "chumpy.ch": module})
    try:
        yield
    finally:
        _ChumpyCh.__module__, _ChumpyCh.__qualname__ = __name__, "_ChumpyCh"
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def _mirror_indices(vertices: np.ndarray) -> np.ndarray:
    mirrored = vertices * np.array([-1.0, 1.0, 1.0])
    return cKDTree(vertices).query(mirrored)[1].astype(np.int64)


def smpl_model_dict(humanoid: Humanoid) -> dict[str, Any]:
    """The keys of the official SMPL v1.0 pickle; chumpy-typed where the official file is."""
    kintree = np.stack([np.array(C.SMPL_PARENTS), np.arange(24)]).astype(np.int64)
    kintree[0, 0] = 4294967295  # the root's parent, as the official files store it
    return {
        "v_template": _ChumpyCh(humanoid.vertices),
        "shapedirs": _ChumpyCh(humanoid.shapedirs),
        "posedirs": _ChumpyCh(humanoid.posedirs),
        "weights": _ChumpyCh(humanoid.smpl_weights),
        "weights_prior": humanoid.smpl_weights.copy(),
        "J_regressor": sp.csc_matrix(humanoid.smpl_joint_regressor),
        "J_regressor_prior": sp.csc_matrix(humanoid.smpl_joint_regressor),
        "J": humanoid.smpl_joints,
        "kintree_table": kintree,
        "f": humanoid.faces.astype(np.uint32),
        "vert_sym_idxs": _mirror_indices(humanoid.vertices),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
        "pose_training_info": {},
    }


def write_pickle(data: Any, path: Path, protocol: int = 2) -> None:
    """Write atomically (temporary name, then rename); protocol 2 by default, as the official files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with _as_chumpy_module(), tmp.open("wb") as handle:
        pickle.dump(data, handle, protocol=protocol)
    tmp.replace(path)


def write_synthetic_models(out_dir: Path | str, seed: int = 0) -> BodyModelPaths:
    """Write the synthetic SMPL, SKEL (male, female), HSMR keypoint pickles and keypoint-regressor files
    under `out_dir`."""
    paths = BodyModelPaths.from_root(out_dir)
    neutral = build_humanoid("neutral", seed=seed)
    write_pickle(smpl_model_dict(neutral), paths.smpl)
    # HSMR's 24 joints are SMPL's joints on the skin; the 19 extra keypoints are the humanoid's own.
    joints, extra = keypoint_sources(out_dir)
    write_pickle(sp.csc_matrix(neutral.smpl_joint_regressor), joints)
    write_pickle(neutral.keypoint_regressor[C.NUM_KEYPOINTS - NUM_EXTRA :].toarray(), extra)
    build_keypoint_regressor(joints, extra, paths.keypoint_regressor)
    for sex in ("male", "female"):
        rng = np.random.default_rng([seed, 1 if sex == "male" else 2])
        body = build_humanoid(sex, seed=seed)
        write_pickle(skel_model_dict(body, rng), paths.skel(sex))
        # SKEL's skin is its sex's SMPL mesh; motion sequences are posed with their gender's SMPL.
        write_pickle(smpl_model_dict(body), gendered_smpl_path(paths.smpl.parent, sex))
    return paths


def ensure_synthetic_models(root: Path | str) -> BodyModelPaths:
    """The models under `root`; the synthetic stand-ins are written there first if it holds none of them."""
    paths = BodyModelPaths.from_root(root)
    if not any(Path(path).exists() for path in (paths.smpl, paths.skel_male, paths.skel_female)):
        print(f"no body models under {root}: writing the synthetic stand-ins there", file=sys.stderr)
        write_synthetic_models(root)
    return paths
