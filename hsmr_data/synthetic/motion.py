"""Smooth synthetic motion sequences with their true SKEL parameters, written as AMASS-style files.

Three motions, each a smooth SKEL trajectory q(t) inside the joint limits:

- `walking`: a gait cycle (hips, knees, ankles, counter-swinging arms, pelvis bob and twist)
  along a circle; the heading (pelvis_rotation) turns through more than a full turn, so any
  fitter that returns angles in [−π, π) wraps and must be unwrapped;
- `sitting_down`: standing, then lowering into a chair (hips and knees to 90°, the trunk leaning
  forward and back), while the body turns slowly across heading ±180°;
- `yoga_flow`: standing → arms up → forward fold → warrior → tree → side bend → standing, from
  the hard archetypes of the synthetic world, blended with smoothstep transitions.

The true SKEL skin of each frame (the sequence's gender's SKEL, one β per sequence) is fitted with
the same gender's SMPL (pose and translation per frame, β shared: the synthetic SMPL and SKEL of one
sex share their shape directions, so SMPL's β is SKEL's), and the SMPL parameters are written the
way AMASS stores them: `poses` (T, 156) SMPL+H with zero hands, `betas` (16), `trans`, `gender`,
`mocap_framerate`, in `sequences/{name}.npz`. The frame is the models' own (Y up; real AMASS files
are Z up). The truth goes to `truth/{name}.npz` (q, betas, trans).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hsmr_data.synthetic.poses import HARD_ARCHETYPES, NATURAL_ARCHETYPES, sample_betas
from hsmr_data.synthetic.pseudo_gt import fit_smpl_to_vertices
from hsmr_model import skel_constants as C
from hsmr_model.body_models import BodyModels
from hsmr_model.model_files import BodyModelPaths, write_npz_atomically

MOTIONS = ("walking", "sitting_down", "yoga_flow")
MOTION_GENDERS = {"walking": "male", "sitting_down": "female", "yoga_flow": "male"}
FRAME_RATE = 30.0


@dataclass
class MotionTruth:
    """A motion's true SKEL parameters."""

    name: str
    gender: str
    q: np.ndarray  # (T, 46) inside the limits, pelvis angles continuous (unwrapped)
    betas: np.ndarray  # (10,)
    trans: np.ndarray  # (T, 3)
    frame_rate: float


def _dof(name: str) -> int:
    return C.DOF_NAMES.index(name)


def _pose(values: dict[str, float]) -> np.ndarray:
    q = np.zeros(C.NUM_DOFS)
    for name, degrees in values.items():
        q[_dof(name)] = np.radians(degrees)
    return q


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _clip_to_limits(q: np.ndarray) -> np.ndarray:
    lower, upper = C.dof_limits()
    return np.clip(q, lower, upper)


def walking(frames: int, frame_rate: float) -> tuple[np.ndarray, np.ndarray]:
    """q (T, 46) and translation (T, 3) of a walk along a circle, heading through 1.3 turns."""
    t = np.arange(frames) / frame_rate
    phase = 2 * np.pi * t / 1.1  # one gait cycle per 1.1 s
    q = np.repeat(_pose(NATURAL_ARCHETYPES["standing"])[None], frames, axis=0)
    for side, shift in (("r", 0.0), ("l", np.pi)):
        swing = np.sin(phase + shift)
        q[:, _dof(f"hip_flexion_{side}")] = np.radians(8 + 22 * swing)
        q[:, _dof(f"knee_angle_{side}")] = np.radians(5 + 25 * (1 + np.sin(phase + shift + 1.2)))
        q[:, _dof(f"ankle_angle_{side}")] = np.radians(10 * np.sin(phase + shift - 0.8))
        arm = -1.0 if side == "r" else 1.0
        q[:, _dof(f"shoulder_{side}_z")] = np.radians(arm * 18 * swing)
        q[:, _dof(f"elbow_flexion_{side}")] = np.radians(22 + 8 * np.sin(phase + shift))
    q[:, _dof("lumbar_twist")] = np.radians(6 * np.sin(phase))
    q[:, _dof("pelvis_list")] = np.radians(3 * np.sin(phase))
    heading = np.radians(-30.0) + 2 * np.pi * 1.3 * t / t[-1] if frames > 1 else np.zeros(frames)
    q[:, _dof("pelvis_rotation")] = heading
    speed = 1.2  # m/s along the facing direction (+Z turned by the heading)
    velocity = speed * np.stack([np.sin(heading), np.zeros(frames), np.cos(heading)], axis=1)
    trans = np.cumsum(velocity, axis=0) / frame_rate
    trans[:, 1] = 0.015 * np.sin(2 * phase)
    return q, trans


def sitting_down(frames: int, frame_rate: float) -> tuple[np.ndarray, np.ndarray]:
    """Standing, then sitting down in the middle half; the heading turns slowly across ±180°."""
    s = _smoothstep((np.linspace(0, 1, frames) - 0.25) / 0.5)[:, None]
    lean = np.sin(np.pi * s)  # the trunk leans forward while lowering, then sits back up
    standing = _pose(NATURAL_ARCHETYPES["standing"])
    sitting = _pose(NATURAL_ARCHETYPES["sitting"])
    q = standing + s * (sitting - standing)
    q[:, _dof("lumbar_extension")] += np.radians(25) * lean[:, 0]
    q[:, _dof("thorax_extension")] += np.radians(15) * lean[:, 0]
    q[:, _dof("head_extension")] -= np.radians(15) * lean[:, 0]
    q[:, _dof("pelvis_rotation")] = np.radians(np.linspace(160.0, 205.0, frames))
    trans = np.zeros((frames, 3))
    trans[:, 1] = -0.45 * s[:, 0]
    trans[:, 2] = -0.15 * s[:, 0]
    return q, trans


_YOGA_KEYS = (
    NATURAL_ARCHETYPES["standing"],
    {"shoulder_r_x": -85, "shoulder_l_x": 85},
    HARD_ARCHETYPES["forward_fold"],
    HARD_ARCHETYPES["warrior"],
    HARD_ARCHETYPES["tree"],
    HARD_ARCHETYPES["side_bend"],
    NATURAL_ARCHETYPES["standing"],
)


def yoga_flow(frames: int, frame_rate: float) -> tuple[np.ndarray, np.ndarray]:
    """A flow through yoga poses, each transition a smoothstep; the pelvis tilts in the forward fold."""
    keys = np.stack([_clip_to_limits(_pose(values)) for values in _YOGA_KEYS])
    position = np.linspace(0, len(keys) - 1, frames)
    segment = np.minimum(position.astype(int), len(keys) - 2)
    blend = _smoothstep(position - segment)[:, None]
    q = keys[segment] + blend * (keys[segment + 1] - keys[segment])
    fold = q[:, _dof("hip_flexion_r")].clip(0) * (q[:, _dof("hip_flexion_l")] > np.radians(45))
    q[:, _dof("pelvis_tilt")] = -0.5 * fold  # the whole body bends forward with both hips
    q[:, _dof("pelvis_rotation")] = np.radians(40.0)
    trans = np.zeros((frames, 3))
    trans[:, 1] = -0.2 * np.sin(fold)
    return q, trans


_GENERATORS = {"walking": walking, "sitting_down": sitting_down, "yoga_flow": yoga_flow}


def motion_truth(name: str, frames: int, rng: np.random.Generator, frame_rate: float = FRAME_RATE) -> MotionTruth:
    """The true SKEL parameters of one motion (q inside the joint limits, β ~ N(0, 1) clipped to ±2)."""
    if name not in _GENERATORS:
        raise ValueError(f"unknown motion {name!r}; choose from {MOTIONS}")
    q, trans = _GENERATORS[name](frames, frame_rate)
    pelvis = q[:, :3].copy()
    q = _clip_to_limits(q)
    q[:, :3] = pelvis
    betas = sample_betas(1, rng, scale=1.0)[0].clip(-2.0, 2.0)
    return MotionTruth(name, MOTION_GENDERS[name], q, betas, trans, frame_rate)


@torch.no_grad()
def smpl_motion(paths: BodyModelPaths, truth: MotionTruth, iterations: int = 15) -> dict[str, np.ndarray]:
    """The AMASS-style arrays of a motion: its true SKEL skin fitted with the same gender's SMPL."""
    models = BodyModels.load(paths, truth.gender, smpl_gender=truth.gender)
    skel, smpl = models.skel, models.smpl
    q = torch.as_tensor(truth.q, dtype=torch.float32)
    betas = torch.as_tensor(truth.betas, dtype=torch.float32).expand(len(q), -1)
    trans = torch.as_tensor(truth.trans, dtype=torch.float32)
    skin = skel(q, betas, trans).skin_verts
    _, world_r, _, _ = skel.pose_skeleton(q, skel.rest_joints(betas))
    fit = fit_smpl_to_vertices(smpl, skin, world_r, betas, iterations, fit_betas=False)
    poses = np.zeros((len(q), 156))
    poses[:, :3], poses[:, 3:66] = fit.global_orient, fit.body_pose[:, :63]  # SMPL+H: 21 body joints, then hands
    return {
        "poses": poses,
        "betas": np.concatenate([truth.betas, np.zeros(6)]),  # AMASS stores 16
        "trans": fit.transl,
        "gender": np.array(truth.gender),
        "mocap_framerate": np.array(truth.frame_rate),
        "smpl_fit_pve_mean": fit.pve_mean,
    }


def write_motion_sequences(
    paths: BodyModelPaths,
    out_dir: Path | str,
    frames: int = 150,
    seed: int = 0,
    names: tuple[str, ...] = MOTIONS,
    smpl_iterations: int = 15,
) -> list[Path]:
    """Write `sequences/{name}.npz` (AMASS-style) and `truth/{name}.npz` per motion; returns the sequence files."""
    out_dir = Path(out_dir)
    written = []
    for index, name in enumerate(names):
        truth = motion_truth(name, frames, np.random.default_rng([seed, index]))
        arrays = smpl_motion(paths, truth, smpl_iterations)
        smpl_pve = arrays.pop("smpl_fit_pve_mean")
        write_npz_atomically(out_dir / "sequences" / f"{name}.npz", **arrays)
        write_npz_atomically(
            out_dir / "truth" / f"{name}.npz",
            q=truth.q,
            betas=truth.betas,
            trans=truth.trans,
            gender=np.array(truth.gender),
            frame_rate=np.array(truth.frame_rate),
            smpl_fit_pve_mean=smpl_pve,
        )
        written.append(out_dir / "sequences" / f"{name}.npz")
    return written


def read_truth(path: Path | str) -> MotionTruth:
    """The truth file `write_motion_sequences` writes next to a sequence (`truth/{name}.npz`)."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as data:
        return MotionTruth(
            path.stem, str(data["gender"]), data["q"], data["betas"], data["trans"], float(data["frame_rate"])
        )
