"""SMPL pseudo ground truth for the synthetic world, made the way real datasets get theirs.

Real datasets carry SMPL fits to images: mostly close to the person, sometimes wrong in the ways
in-the-wild fitting goes wrong. Here SMPL is fitted to the true SKEL skin (closed-form start from
the SKEL bone rotations, then LBFGS on the vertices), and a share of the fits is then corrupted:
twists about bone axes that no real joint makes, knees and elbows bent backwards, limbs flipped in
depth (the 2D-ambiguous error), and gross failures. Each sample records its corruption kind and
level (the largest rotation applied, degrees).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import smplx
import torch

from hsmr_model import skel_constants as C
from hsmr_model.pose_transfer import skel_world_to_smpl_pose
from hsmr_model.rotations import axis_angle_to_matrix, matrix_to_axis_angle, rotation_between_vectors

CORRUPTION_KINDS = ("clean", "twist", "hyperextension", "depth_flip", "gross")
# SMPL joints (see C.SMPL_JOINT_NAMES) each corruption acts on.
_TWIST_JOINTS = (4, 5, 18, 19)  # knees and elbows: twisting them turns the shin or forearm about itself
_KNEES, _ELBOWS = (4, 5), (18, 19)
_LIMB_ROOTS = (1, 2, 16, 17)  # hips and shoulders: flipping them in depth keeps the 2D projection
_CHILD = {1: 4, 2: 5, 4: 7, 5: 8, 16: 18, 17: 19, 18: 20, 19: 21}


@dataclass
class SmplFit:
    """SMPL parameters in the camera frame, (N, ·) numpy, and the fit's vertex error to its target."""

    global_orient: np.ndarray  # (N, 3)
    body_pose: np.ndarray  # (N, 69)
    betas: np.ndarray  # (N, 10)
    transl: np.ndarray  # (N, 3)
    pve_mean: np.ndarray  # (N,) metres


@dataclass
class Corruption:
    kind: list[str]
    level_deg: np.ndarray  # (N,) 0 for clean


def fit_smpl_to_vertices(
    smpl: smplx.SMPL,
    target_vertices: torch.Tensor,
    skel_world_rotations: torch.Tensor,
    betas: torch.Tensor,
    max_iterations: int = 30,
    fit_betas: bool = True,
) -> SmplFit:
    """Fit SMPL (pose, shape, translation) to meshes of the same topology.

    Args:
        target_vertices: (B, 6890, 3); skel_world_rotations: (B, 24, 3, 3) of the body the mesh
            shows, for the closed-form start; betas: (B, 10) start for SMPL's shape, kept as it is
            when not `fit_betas` (a motion sequence's one shape).
    """
    global_orient, body_pose = skel_world_to_smpl_pose(skel_world_rotations)
    with torch.no_grad():
        start = smpl(global_orient=global_orient, body_pose=body_pose, betas=betas).vertices
    transl = (target_vertices - start).mean(1)
    params = [p.detach().clone().requires_grad_(True) for p in (global_orient, body_pose, betas, transl)]
    free = params if fit_betas else [params[0], params[1], params[3]]
    optimizer = torch.optim.LBFGS(
        free, lr=1.0, max_iter=max_iterations, line_search_fn="strong_wolfe", tolerance_change=1e-12
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        vertices = smpl(global_orient=params[0], body_pose=params[1], betas=params[2], transl=params[3]).vertices
        # Summed over the batch: each sample's gradient is its own, the line search is shared.
        loss = ((vertices - target_vertices) ** 2).sum(-1).mean(-1).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        vertices = smpl(global_orient=params[0], body_pose=params[1], betas=params[2], transl=params[3]).vertices
        pve = (vertices - target_vertices).norm(dim=-1).mean(-1)
    arrays = [p.detach().numpy().astype(np.float64) for p in params]
    return SmplFit(*arrays, pve_mean=pve.numpy().astype(np.float64))


def sample_corruptions(count: int, rng: np.random.Generator, hard: np.ndarray) -> list[str]:
    """Corruption kind per sample: half clean in the normal split, fewer in the hard one."""
    normal_p = np.array([0.55, 0.12, 0.12, 0.12, 0.09])
    hard_p = np.array([0.35, 0.17, 0.17, 0.16, 0.15])
    return [CORRUPTION_KINDS[rng.choice(len(CORRUPTION_KINDS), p=hard_p if h else normal_p)] for h in hard]


def _local_rotations(fit: SmplFit) -> np.ndarray:
    """(N, 24, 3, 3) SMPL local rotations, the root's being the global orientation."""
    axis_angle = np.concatenate([fit.global_orient, fit.body_pose], axis=1).reshape(-1, 24, 3)
    return axis_angle_to_matrix(torch.as_tensor(axis_angle)).numpy()


def _world_rotations(local: np.ndarray) -> np.ndarray:
    world = np.empty_like(local)
    for joint, parent in enumerate(C.SMPL_PARENTS):
        world[:, joint] = local[:, joint] if parent < 0 else world[:, parent] @ local[:, joint]
    return world


def _axis_rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    return axis_angle_to_matrix(torch.as_tensor(axis * np.radians(degrees))).numpy()


def corrupt(fit: SmplFit, kinds: list[str], rest_joints: np.ndarray, rng: np.random.Generator) -> Corruption:
    """Corrupt the fits in place, sample by sample, as `kinds` says.

    Args:
        rest_joints: (24, 3) SMPL joints in the rest pose (bone directions for twists and flips).
    """
    local = _local_rotations(fit)
    level = np.zeros(len(kinds))
    for i, kind in enumerate(kinds):
        if kind == "twist":
            joint = _TWIST_JOINTS[rng.integers(len(_TWIST_JOINTS))]
            bone = rest_joints[_CHILD[joint]] - rest_joints[joint]
            level[i] = rng.uniform(45.0, 120.0)
            local[i, joint] = local[i, joint] @ _axis_rotation(
                bone / np.linalg.norm(bone), level[i] * rng.choice([-1, 1])
            )
        elif kind == "hyperextension":
            level[i] = rng.uniform(25.0, 70.0)
            joints = _KNEES if rng.random() < 0.5 else _ELBOWS
            for joint in joints:
                # Knees flex about +x, the right elbow about +y and the left one about -y: bend the other way.
                axis = {4: [1, 0, 0], 5: [1, 0, 0], 18: [0, -1, 0], 19: [0, 1, 0]}[joint]
                local[i, joint] = _axis_rotation(np.asarray(axis, dtype=float), -level[i])
        elif kind == "depth_flip":
            joint = _LIMB_ROOTS[rng.integers(len(_LIMB_ROOTS))]
            world = _world_rotations(local[i : i + 1])[0]
            bone = world[joint] @ (rest_joints[_CHILD[joint]] - rest_joints[joint])
            mirrored = bone * np.array([1.0, 1.0, -1.0])  # same image direction, other side in depth
            flip = rotation_between_vectors(torch.as_tensor(bone), torch.as_tensor(mirrored)).numpy()
            local[i, joint] = world[joint].T @ flip @ world[joint] @ local[i, joint]
            level[i] = np.degrees(np.arccos(np.clip((np.trace(flip) - 1) / 2, -1, 1)))
        elif kind == "gross":
            noise = rng.normal(0.0, 0.8, size=(23, 3))
            local[i, 1:] = local[i, 1:] @ axis_angle_to_matrix(torch.as_tensor(noise)).numpy()
            level[i] = np.degrees(np.linalg.norm(noise, axis=1).max())
    axis_angle = matrix_to_axis_angle(torch.as_tensor(local)).numpy()
    fit.global_orient, fit.body_pose = axis_angle[:, 0], axis_angle[:, 1:].reshape(len(kinds), 69)
    return Corruption(kinds, level)
