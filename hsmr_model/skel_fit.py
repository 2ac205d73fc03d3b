"""Batched SMPL → SKEL fitting: a closed-form initialisation from the SMPL pose, then a few
Levenberg–Marquardt steps per sample.

Targets per sample: the posed SMPL vertices (B, 6890, 3) and the anatomical joints
J_regressor_osim·vertices (B, 24, 3). Unknowns: q (B, 46), β (B, 10), translation (B, 3).

Initialisation: closed form from the SMPL pose and shape (`skel_fit_init`). On the synthetic models
this lands at ~3.4 cm mean vertex error, which the optimisation takes to ~1 cm.

Optimisation. Levenberg–Marquardt on a well-spread subset of the vertices (128 by default) plus
the 24 joints, per sample (own damping, own acceptance, own stopping) but batched: every
evaluation is one forward and backward pass for all samples still running. The gradient is
exact (autograd); the Gauss–Newton curvature comes from analytic Jacobians (exact for the
joints; for the skin, blended vertices are turned as a whole about each joint and the pose
correctives' derivatives are left out), so a few steps suffice (`skel_fit_jacobians`). Loss per sample, in cm²:
mean squared vertex distance + mean squared anatomical-joint distance + small pose and shape
priors. The joint limits are hard bounds (projected steps, DoFs at a bound held while the
gradient pushes outward). The PVE figures are measured on the whole mesh for the returned
parameters.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields

import numpy as np
import torch

from hsmr_model import skel_constants as C
from hsmr_model.devices import resolve_device
from hsmr_model.skel_fit_init import SmplToSkel, initial_parameters, limits_tensor
from hsmr_model.skel_fit_jacobians import NUM_PARAMS, PosedBody, SkinPart, pose_body, residual_jacobians
from hsmr_model.skel_layer import SKELLayer
from hsmr_model.smpl_layer import SmplParams


# ----------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class SkelFitConfig:
    """Weights and schedule of the fit. Losses are in cm²; the weights multiply them."""

    iterations: int = 12  # at most this many Levenberg–Marquardt evaluations per sample
    tolerance: float = 1e-3  # done when an accepted step lowers the loss by less than this (relative)
    subset_size: int = 128  # vertices the optimisation sees (farthest-point spread); the PVE uses all
    joint_weight: float = 1.0
    pose_weight: float = 1e-3  # per rad² of q[3:]
    shape_weight: float = 1e-3  # per unit² of β
    initial_damping: float = 1e-3
    batch_size: int | None = None  # None: chosen by `batch_size_for`
    device: str = "auto"  # "auto": CUDA when present, else the CPU


@dataclass
class SkelFitResult:
    """Per-sample fit results (N samples), numpy arrays."""

    q: np.ndarray  # (N, 46) inside the joint limits, the unlimited pelvis angles in [−π, π)
    betas: np.ndarray  # (N, 10)
    trans: np.ndarray  # (N, 3)
    pve_mean: np.ndarray  # (N,) mean per-vertex distance SKEL–SMPL, metres
    pve_max: np.ndarray  # (N,) max over the vertices of that distance, metres
    iterations: np.ndarray  # (N,) Levenberg–Marquardt evaluations after the initial one
    seconds: np.ndarray  # (N,) the sample's share of its batch's wall time
    converged: np.ndarray  # (N,) bool: the tolerance was met within `iterations`

    @classmethod
    def concatenate(cls, parts: list[SkelFitResult]) -> SkelFitResult:
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)))


# ----------------------------------------------------------------------------------- the fit
_CM2 = 1e4  # m² → cm²: losses of order one, so float32 tolerances mean something


@dataclass(frozen=True)
class FitTargets:
    """What a batch is fitted to."""

    vertices: torch.Tensor  # (B, N, 3) on the fitting subset
    joints: torch.Tensor  # (B, 24, 3) anatomical joints
    guide: FitGuide | None = None

    def __getitem__(self, index: torch.Tensor) -> FitTargets:
        return FitTargets(self.vertices[index], self.joints[index], None if self.guide is None else self.guide[index])


@dataclass(frozen=True)
class FitGuide:
    """Optional guidance of a batch, for sequences: a start, a pull towards anchors, held parameters.

    The anchor term adds Σ_k weight[b, k]·(x[b, k] − anchor[b, k])² (cm², weights per unit² of the
    parameter) to sample b's loss: a temporal smoothness term when the anchors are a frame's
    neighbours. Held parameters keep their start values exactly (a sequence's shared β).
    """

    start: torch.Tensor  # (B, 59) x = [q | β | trans] to start from, instead of the closed-form initialisation
    anchor: torch.Tensor | None = None  # (B, 59)
    anchor_weight: torch.Tensor | None = None  # (B, 59), zero where there is no pull
    held: torch.Tensor | None = None  # (59,) bool

    def __getitem__(self, index: torch.Tensor) -> FitGuide:
        def pick(value: torch.Tensor | None) -> torch.Tensor | None:
            return None if value is None else value[index]

        return FitGuide(self.start[index], pick(self.anchor), pick(self.anchor_weight), self.held)

    def to(self, device: torch.device) -> FitGuide:
        def move(value: torch.Tensor | None, dtype: torch.dtype | None = torch.float32) -> torch.Tensor | None:
            return None if value is None else value.to(device, dtype)

        return FitGuide(move(self.start), move(self.anchor), move(self.anchor_weight), move(self.held, None))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """The anchor term (B,) at x (B, 59); zero without anchors."""
        if self.anchor is None:
            return x.new_zeros(x.shape[0])
        return (self.anchor_weight * (x - self.anchor).square()).sum(-1)


def split_params(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (B, 59) → q (B, 46), β (B, 10), trans (B, 3)."""
    return x[:, : C.NUM_DOFS], x[:, C.NUM_DOFS : C.NUM_DOFS + C.NUM_BETAS], x[:, C.NUM_DOFS + C.NUM_BETAS :]


def fitting_loss(
    body: PosedBody, q: torch.Tensor, betas: torch.Tensor, targets: FitTargets, config: SkelFitConfig
) -> torch.Tensor:
    """Per-sample loss in cm²: mean squared vertex and joint distances plus small pose and shape priors.

    Returns:
        (B,).
    """
    vertices = (body.skin - targets.vertices).square().sum(-1).mean(-1)
    joints = (body.joints - targets.joints).square().sum(-1).mean(-1)
    priors = config.pose_weight * q[:, 3:].square().sum(-1) + config.shape_weight * betas.square().sum(-1)
    return _CM2 * (vertices + config.joint_weight * joints) + priors


def gauss_newton_hessian(
    skin_jacobian: torch.Tensor, joint_jacobian: torch.Tensor, config: SkelFitConfig
) -> torch.Tensor:
    """Gauss–Newton approximation of the Hessian of `fitting_loss`.

    Args:
        skin_jacobian: (B, 59, 3, N); joint_jacobian: (B, 59, 3, 24).
    Returns:
        (B, 59, 59).
    """
    skin = skin_jacobian.flatten(2)
    joints = joint_jacobian.flatten(2)
    hessian = (2 * _CM2 / skin_jacobian.shape[-1]) * (skin @ skin.transpose(1, 2))
    hessian = hessian + (2 * _CM2 * config.joint_weight / joint_jacobian.shape[-1]) * (joints @ joints.transpose(1, 2))
    prior = torch.zeros(NUM_PARAMS, dtype=hessian.dtype, device=hessian.device)
    prior[3 : C.NUM_DOFS] = 2 * config.pose_weight
    prior[C.NUM_DOFS : C.NUM_DOFS + C.NUM_BETAS] = 2 * config.shape_weight
    return hessian + torch.diag(prior)


def evaluate(skel: SKELLayer, part: SkinPart, x: torch.Tensor, targets: FitTargets, config: SkelFitConfig):
    """Loss (B,), its exact gradient (B, 59) and the Gauss–Newton Hessian (B, 59, 59) at x (B, 59)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        q, betas, trans = split_params(x)
        body = pose_body(skel, part, q, betas, trans)
        loss = fitting_loss(body, q, betas, targets, config)
        if targets.guide is not None:
            loss = loss + targets.guide.loss(x)
        (gradient,) = torch.autograd.grad(loss.sum(), x)
    detached = PosedBody(*(getattr(body, f.name).detach() for f in fields(body)))
    skin_jacobian, joint_jacobian = residual_jacobians(skel, part, detached, q.detach())
    hessian = gauss_newton_hessian(skin_jacobian, joint_jacobian, config)
    if targets.guide is not None and targets.guide.anchor_weight is not None:
        hessian = hessian + torch.diag_embed(2 * targets.guide.anchor_weight)
    return loss.detach(), gradient, hessian


def damped_step(
    x: torch.Tensor,
    gradient: torch.Tensor,
    hessian: torch.Tensor,
    damping: torch.Tensor,
    held_params: torch.Tensor | None = None,
) -> torch.Tensor:
    """Levenberg–Marquardt step inside the joint limits (projected, bound-constrained).

    DoFs at a limit whose gradient pushes outward are held; the rest take the damped
    Gauss–Newton step (H + μ·diag H)·δ = −g, and the result is clamped into the limits.

    Args:
        x, gradient: (B, 59); hessian: (B, 59, 59); damping: (B,); held_params: (59,) bool, always held.
    Returns:
        the trial point (B, 59).
    """
    q = x[:, : C.NUM_DOFS]
    lower, upper = limits_tensor(q)
    held = torch.zeros_like(x, dtype=torch.bool)
    held[:, : C.NUM_DOFS] = ((q <= lower) & (gradient[:, : C.NUM_DOFS] > 0)) | (
        (q >= upper) & (gradient[:, : C.NUM_DOFS] < 0)
    )
    if held_params is not None:
        held |= held_params
    free = (~held).to(x.dtype)
    diagonal = hessian.diagonal(dim1=-2, dim2=-1)
    system = hessian * free[:, :, None] * free[:, None, :] + torch.diag_embed(
        free * damping[:, None] * (diagonal + 1e-6) + (1 - free)
    )
    factor, _ = torch.linalg.cholesky_ex(system)
    step = torch.cholesky_solve(-(gradient * free)[..., None], factor)[..., 0]
    trial = x + step
    trial[:, : C.NUM_DOFS] = torch.clamp(trial[:, : C.NUM_DOFS], lower, upper)
    return trial


@dataclass(frozen=True)
class SolverState:
    """Per-sample Levenberg–Marquardt state."""

    x: torch.Tensor  # (B, 59)
    loss: torch.Tensor  # (B,)
    iterations: torch.Tensor  # (B,) int64: evaluations after the first
    converged: torch.Tensor  # (B,) bool


def levenberg_marquardt(
    skel: SKELLayer, part: SkinPart, x: torch.Tensor, targets: FitTargets, config: SkelFitConfig
) -> SolverState:
    """Batched, per-sample Levenberg–Marquardt with exact gradients and approximate Gauss–Newton curvature.

    Every sample keeps its own damping μ, accepts a step only when its loss drops, and leaves the
    batch once an accepted step lowers its loss by less than `config.tolerance` (relative); only
    the samples still running are evaluated.
    """
    batch = x.shape[0]
    loss, gradient, hessian = evaluate(skel, part, x, targets, config)
    x = x.clone()
    damping = torch.full((batch,), config.initial_damping, dtype=x.dtype, device=x.device)
    iterations = torch.zeros(batch, dtype=torch.int64, device=x.device)
    running = torch.ones(batch, dtype=torch.bool, device=x.device)
    converged = torch.zeros_like(running)
    for _ in range(config.iterations):
        active = running.nonzero()[:, 0]
        if active.numel() == 0:
            break
        held = None if targets.guide is None else targets.guide.held
        trial = damped_step(x[active], gradient[active], hessian[active], damping[active], held)
        trial_loss, trial_gradient, trial_hessian = evaluate(skel, part, trial, targets[active], config)
        iterations[active] += 1
        better = trial_loss < loss[active]
        accepted = active[better]
        decrease = (loss[accepted] - trial_loss[better]) / loss[accepted].clamp_min(1e-12)
        x[accepted], loss[accepted] = trial[better], trial_loss[better]
        gradient[accepted], hessian[accepted] = trial_gradient[better], trial_hessian[better]
        damping[accepted] = (damping[accepted] / 3).clamp_min(1e-7)
        damping[active[~better]] *= 4
        done = accepted[decrease < config.tolerance]
        converged[done], running[done] = True, False
        running[damping > 1e8] = False  # no step length lowers the loss any more
    return SolverState(x, loss, iterations, converged)


# ---------------------------------------------------------------------------------- entry points
BYTES_PER_SAMPLE_CUDA = 8 << 20  # generous: Jacobians on the subset and the full-mesh evaluation


def batch_size_for(config: SkelFitConfig, device: torch.device) -> int:
    """`config.batch_size`, else 512 on the CPU and what half the free memory holds on CUDA (64 to 8192)."""
    if config.batch_size is not None:
        return config.batch_size
    if device.type != "cuda":
        return 512
    free, _ = torch.cuda.mem_get_info(device)
    return int(min(max(free // 2 // BYTES_PER_SAMPLE_CUDA, 64), 8192))


def vertex_errors(skel: SKELLayer, x: torch.Tensor, smpl_vertices: torch.Tensor) -> torch.Tensor:
    """Per-vertex distance between the SKEL skin of x = [q | β | trans] and the SMPL vertices. (B, V), metres."""
    q, betas, trans = split_params(x)
    # Not .norm(dim=-1): the skin is a channels-first view, and a norm over its strided last dimension is
    # ten times slower than the sum of squares.
    return (pose_body(skel, SkinPart.of(skel), q, betas, trans).skin - smpl_vertices).square().sum(-1).sqrt()


@torch.no_grad()
def fit_skel_to_smpl(
    skel: SKELLayer,
    link: SmplToSkel,
    smpl_vertices: torch.Tensor,
    osim_joints: torch.Tensor | None,
    smpl_params: SmplParams,
    config: SkelFitConfig = SkelFitConfig(),
    guide: FitGuide | None = None,
) -> SkelFitResult:
    """Fit SKEL to one batch of posed SMPL meshes (see the module docstring).

    `skel` and `link` must be on the device `config.device` resolves to (`fit_in_batches` moves them).

    Args:
        smpl_vertices: (B, 6890, 3); osim_joints: (B, 24, 3) J_regressor_osim·vertices, or None to
            regress them here; smpl_params: the SMPL parameters the vertices came from;
        guide: an optional start, anchors and held parameters (sequence conversion), on any device.
    """
    device = resolve_device(config.device)
    start = time.perf_counter()
    vertices = smpl_vertices.to(device, torch.float32)
    joints = link.osim_regressor(vertices) if osim_joints is None else osim_joints.to(device, torch.float32)
    if guide is None:
        x = initial_parameters(skel, link, smpl_params.to(device), joints)
    else:
        guide = guide.to(device)
        x = guide.start
    subset = link.vertex_order[: config.subset_size]
    targets = FitTargets(vertices[:, subset], joints, guide)
    state = levenberg_marquardt(skel, SkinPart.of(skel, subset), x, targets, config)
    errors = vertex_errors(skel, state.x, vertices)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / vertices.shape[0]
    q, betas, trans = split_params(state.x)
    q = torch.cat([torch.remainder(q[:, :3] + math.pi, 2 * math.pi) - math.pi, q[:, 3:]], dim=1)  # pelvis: [−π, π)
    q, betas, trans = q.cpu().numpy(), betas.cpu().numpy(), trans.cpu().numpy()
    return SkelFitResult(
        q=q,
        betas=betas,
        trans=trans,
        pve_mean=errors.mean(-1).cpu().numpy(),
        pve_max=errors.max(-1).values.cpu().numpy(),
        iterations=state.iterations.cpu().numpy(),
        seconds=np.full(vertices.shape[0], seconds),
        converged=state.converged.cpu().numpy(),
    )


def fit_in_batches(
    skel: SKELLayer,
    link: SmplToSkel,
    smpl_vertices: torch.Tensor,
    osim_joints: torch.Tensor | None,
    smpl_params: SmplParams,
    config: SkelFitConfig = SkelFitConfig(),
) -> SkelFitResult:
    """`fit_skel_to_smpl` over N samples in batches of `batch_size_for(config, device)`.

    Moves `skel` to the device; the inputs may stay on the CPU (each batch is moved in turn).

    Args:
        smpl_vertices: (N, 6890, 3); osim_joints: (N, 24, 3) or None; smpl_params: N samples.
    """
    device = resolve_device(config.device)
    skel.to(device)
    link = link.to(device)
    size = batch_size_for(config, device)
    parts = []
    for first in range(0, smpl_vertices.shape[0], size):
        chunk = slice(first, first + size)
        joints = None if osim_joints is None else osim_joints[chunk]
        parts.append(fit_skel_to_smpl(skel, link, smpl_vertices[chunk], joints, smpl_params[chunk], config))
    return SkelFitResult.concatenate(parts)
