"""The SKEL authors' SMPL → SKEL fitter, reimplemented as the baseline to beat (benchmark and tests only).

Follows the SKEL authors' skel/alignment/aligner.py with its config.yaml:

- initialisation: q = 0 except q[0:3], which takes SMPL's global orientation axis-angle values as
  they are (the authors copy them into the Euler DoFs); β_SKEL = β_SMPL; translation = SMPL's;
- targets: the posed SMPL vertices and anat_J = J_regressor_osim·vertices;
- four stages, each 10 calls of `LBFGS.step` (max_iter 20, strong Wolfe, torch defaults otherwise):
  root only ([trans, q], q masked to q[0:3], torso vertices, vertex weight 300, lr 1,
  tolerance_change 1e-4) → upper limbs held ([q], q[0:3] and the lumbar twist held, SMPL torso and
  upper-arm vertices, joints but those past the knees and elbows, vertex 600, joints 500,
  pose 1e-4, lr 0.1) → root held ([q], vertices off the SMPL hips and shoulders, joints 1000) →
  free ([q], translation held, all vertices, only the scapula joints 14 and 19);
- losses: vertices Σ mask·‖skin − smpl‖² / (Σ mask · frames); joints: mean over (B, 24, 3) of the
  masked squared error; pose ‖q[:, 3:]‖ with `torch.linalg.norm(·, ord=2)` as they call it (the
  largest singular value of the batch's matrix; the Euclidean norm for one frame), not squared;
  β is never optimised;
- cost structure: a full SKEL forward of the batch per closure call plus, as their closure does
  for its viewer, a skeleton-mesh forward of one watched frame (here without the viewer, under
  no_grad since nothing differentiates it).

Left out on purpose: the in-place config update that makes stage 0 run with stage 3's settings
from the second batch on, the viewer window, psbody and chumpy, and the multi-batch crash.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from hsmr_model.skel_layer import SKELLayer


@dataclass(frozen=True)
class BaselineStage:
    """One stage of the authors' config.yaml."""

    mode: str  # root_only, fixed_upper_limbs, fixed_root, free
    lr: float
    tolerance_change: float
    vertex_weight: float
    joint_weight: float
    pose_weight: float


STAGES: tuple[BaselineStage, ...] = (
    BaselineStage("root_only", 1.0, 1e-4, 300.0, 0.0, 0.0),
    BaselineStage("fixed_upper_limbs", 0.1, 1e-7, 600.0, 500.0, 1e-4),
    BaselineStage("fixed_root", 0.1, 1e-7, 600.0, 1000.0, 1e-4),
    BaselineStage("free", 0.1, 1e-7, 600.0, 1000.0, 1e-4),
)
OUTER_STEPS = 10
MAX_ITER = 20


def _any_weight_above_half(smpl_weights: torch.Tensor, joints: list[int]) -> torch.Tensor:
    return (smpl_weights[:, joints] > 0.5).any(dim=1)


def stage_masks(stage: BaselineStage, smpl_weights: torch.Tensor):
    """Pose (46,), vertex (V,) and joint (24,) masks of a stage, as in the authors' `_get_masks`.

    Args:
        smpl_weights: (V, 24) the SMPL skinning weights.
    """
    pose = torch.ones(46, dtype=torch.bool)
    vertices = torch.ones(smpl_weights.shape[0], dtype=torch.bool)
    joints = torch.ones(24, dtype=torch.bool)
    if stage.mode == "root_only":
        pose[:] = False
        pose[:3] = True
        vertices = _any_weight_above_half(smpl_weights, [0, 3])
    elif stage.mode == "fixed_upper_limbs":
        vertices = _any_weight_above_half(smpl_weights, [0, 1, 2, 3, 6, 9, 12, 15, 16, 17])
        joints[[3, 4, 5, 8, 9, 10, 18, 23]] = False
        pose[:3] = False
        pose[19] = False
    elif stage.mode == "fixed_root":
        pose[:3] = False
        vertices = ~_any_weight_above_half(smpl_weights, [1, 2, 16, 17])
    elif stage.mode == "free":
        joints[:] = False
        joints[[19, 14]] = True
    else:
        raise ValueError(f"unknown stage mode {stage.mode!r}")
    return pose, vertices, joints


@dataclass
class BaselineResult:
    q: torch.Tensor  # (B, 46)
    betas: torch.Tensor  # (B, 10)
    trans: torch.Tensor  # (B, 3)
    closure_calls: int
    seconds: float


def fit_baseline(
    skel: SKELLayer,
    osim_regressor: torch.Tensor,
    smpl_weights: torch.Tensor,
    smpl_vertices: torch.Tensor,
    global_orient: torch.Tensor,
    smpl_betas: torch.Tensor,
    smpl_transl: torch.Tensor,
    skeleton_mesh_per_closure: bool = True,
) -> BaselineResult:
    """Fit one batch the way the SKEL authors do.

    Args:
        osim_regressor: (24, V) dense J_regressor_osim; smpl_weights: (V, 24);
        smpl_vertices: (B, V, 3); global_orient: (B, 3) axis-angle; smpl_betas: (B, 10); smpl_transl: (B, 3).
    """
    start = time.perf_counter()
    device = smpl_vertices.device
    batch = smpl_vertices.shape[0]
    targets = (smpl_vertices, torch.einsum("jv,bvc->bjc", osim_regressor.to(device), smpl_vertices))
    q = torch.zeros(batch, 46, device=device)
    q[:, :3] = global_orient
    q.requires_grad_(True)
    betas = smpl_betas.detach().clone()
    trans = smpl_transl.detach().clone().requires_grad_(True)
    calls = 0
    for stage in STAGES:
        masks = [m.to(device) for m in stage_masks(stage, smpl_weights.cpu())]
        params = [trans, q] if stage.mode == "root_only" else [q]
        optimizer = torch.optim.LBFGS(
            params,
            lr=stage.lr,
            max_iter=MAX_ITER,
            line_search_fn="strong_wolfe",
            tolerance_change=stage.tolerance_change,
        )
        closure = _stage_closure(skel, stage, masks, optimizer, (q, betas, trans), targets, skeleton_mesh_per_closure)
        for _ in range(OUTER_STEPS):
            optimizer.step(closure)
        calls += closure.calls
    return BaselineResult(q.detach(), betas, trans.detach(), calls, time.perf_counter() - start)


def _stage_closure(skel, stage, masks, optimizer, params, targets, skeleton_mesh_per_closure):
    """The LBFGS closure of one stage: masked pose, full forward, the authors' three losses."""
    q, betas, trans = params
    smpl_vertices, anatomical_joints = targets
    batch = q.shape[0]
    pose_mask, vertex_mask, joint_mask = masks
    pose_mask, vertex_mask = pose_mask.float(), vertex_mask.float()[None, :, None]
    joint_mask = joint_mask.float()[None, :, None].expand(batch, -1, 3)
    q_start = q.detach().clone()

    def closure() -> torch.Tensor:
        closure.calls += 1
        optimizer.zero_grad()
        if skeleton_mesh_per_closure:
            with torch.no_grad():
                skel(q[:1], betas[:1], trans[:1], skeleton_mesh=True)
        poses = q * pose_mask + q_start * (1 - pose_mask)
        out = skel(poses, betas, trans)
        vertex_loss = (vertex_mask * (out.skin_verts - smpl_vertices) ** 2).sum() / (vertex_mask.sum() * batch)
        joint_loss = (joint_mask * (out.joints - anatomical_joints) ** 2).mean()
        pose_loss = torch.linalg.norm(poses[:, 3:], ord=2)
        loss = stage.vertex_weight * vertex_loss + stage.joint_weight * joint_loss + stage.pose_weight * pose_loss
        loss.backward()
        return loss

    closure.calls = 0
    return closure
