"""SKELify: fit SKEL (q, β) and the crop camera to 2D keypoints with LBFGS, batched.

The objective of HSMR's SKELify (as HSMR's code computes it), each term multiplied by the
square of its weight and averaged over the batch:

- reprojection: Σ_j c_j² · Σ_xy ρ((x̂_j − x_j) / s), ρ Geman–McClure with σ = 100, s the torso scale of
  the observed keypoints (mean 2D length of the OpenPose edges shoulder–hip on each side); keypoints
  37 and 38 (LSP neck and head-top) left out;
- shape prior ‖β‖²;
- joint-limit prior: mean over the limited DoFs of exp(l − q)² + exp(q − u)² (soft: non-zero inside
  the bounds too, so it also pulls towards the middle of the range);
- depth (camera stage only): (ẑ − t_z)², ẑ = f · 3D torso length / 2D torso length.

Two terms of ours, off in HSMR's stages, that keep a refinement near the prediction it starts from
(`ANCHORED_REFINER_STAGES`; chosen on the synthetic world by `hsmr study refine`):

- anchor: mean over the 44 keypoints of ‖k − k₀‖² in metres, both sets centred on their mean, k₀ the
  starting pose's: the 2D evidence may move the pose, but a move the keypoints do not ask for (depth,
  twists they cannot see) costs;
- shape to the start: ‖β − β₀‖² in place of ‖β‖², which drags every body towards the mean shape.

Hard joint limits (`SkelifyConfig.hard_limits`, on by default; HSMR has only the soft prior above): the
optimiser's free variable of each limited DoF is u, with q = mid + half_range · (1 − ε) · sin(u), so every
DoF stays inside its limits whatever LBFGS does (strong-Wolfe line search included, as the map is smooth),
and a starting pose outside its limits starts at the nearest bound. ε (`LIMIT_MARGIN`) keeps a float32 q at
a bound inside the float64 limits that Table 4's violations are measured against.

Keypoints are normalised crop coordinates (`camera.to_crop_coordinates`) whose confidences have had
the loader's floor applied (`filters.clean_confidences`). The 44 keypoints come from the skin through
the keypoint regressor: on the "support" path only the vertices the regressor uses are skinned
(`SKELLayer.keypoints`), on the "mesh" path the whole skin (the same numbers, several times the cost).

Every label, old or new, is placed and scored by one procedure (`Skelify.score`, the one conversion
uses for round 0): the camera translation of `camera.fit_translation` and the error of
`camera.reprojection_error`, never the optimiser's own camera, so a refined label's kp2d_err and the
label it would replace are comparable.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch

from hsmr_model import camera
from hsmr_model import skel_constants as C
from hsmr_model.devices import resolve_device
from hsmr_model.regressor import VertexRegressor
from hsmr_model.skel_layer import SKELLayer

GM_SIGMA = 100.0
EXCLUDED_KEYPOINTS = (37, 38)  # LSP neck and head-top
TORSO_EDGES = ((5, 12), (2, 9))  # OpenPose left shoulder–left hip, right shoulder–right hip
CAMERA_KEYPOINTS = (1, 2, 5, 8, 9, 12, 27, 28, 33, 34, 39, 40, 41)  # torso keypoints of the camera stage
# The limited DoFs are all but the pelvis's: a slice, so that no index tensor is sent to a GPU per evaluation.
_LIMITED = slice(C.LIMITED_DOFS[0], C.LIMITED_DOFS[-1] + 1)
assert C.LIMITED_DOFS == tuple(range(C.NUM_DOFS))[_LIMITED]
LIMIT_MARGIN = 1e-5  # relative: the reachable range is the limits shrunk by this share of the half range
MIN_TORSO_SCALE = 1e-2  # normalised units (a torso is ~0.3): a degenerate observation must not blow up ρ's input


@dataclass(frozen=True)
class Stage:
    """One LBFGS stage: `steps` optimiser steps with these weights (squared inside the objective)."""

    steps: int
    reprojection: float = 1.0
    shape: float = 0.0
    angle: float = 0.0
    depth: float = 0.0
    camera_only: bool = False  # optimise translation and global orientation on the torso keypoints only
    anchor: float = 0.0  # 3D keypoints near the starting pose's (ours, see the module docstring)
    shape_to_start: bool = False  # shape prior ‖β − β₀‖² rather than ‖β‖² (ours)


# The refiner HSMR runs inside training: one stage of 10 steps over everything.
REFINER_STAGES = (Stage(steps=10, reprojection=1.0, shape=5.0, angle=4.78 * 0.17),)
# Ours: the refiner's stage with the shape prior towards the prediction's β and a 3D anchor to its pose.
ANCHORED_REFINER_STAGES = (
    Stage(steps=10, reprojection=1.0, shape=5.0, angle=4.78 * 0.17, anchor=10.0, shape_to_start=True),
)
# The facts give the from-scratch angle weights "× 1.7 scale" but the refiner's 4.78 "× 0.17"; kept as read.
FROM_SCRATCH_ANGLE_SCALE = 1.7


def from_scratch_stages(steps: int = 30, angle_scale: float = FROM_SCRATCH_ANGLE_SCALE) -> tuple[Stage, ...]:
    """Full SKELify: a camera stage (translation and orientation, torso keypoints, depth term), then
    four stages over everything with decreasing shape and angle weights."""
    camera_stage = Stage(steps=steps, reprojection=1.78, depth=100.0, camera_only=True)
    weights = ((100.0, 404.0), (50.0, 404.0), (10.0, 57.4), (5.0, 4.78))
    return (camera_stage,) + tuple(Stage(steps, 1.0, shape, angle * angle_scale) for shape, angle in weights)


@dataclass(frozen=True)
class SkelifyConfig:
    """Stages and LBFGS settings (torch's defaults for max_iter and history, HSMR's tolerances)."""

    stages: tuple[Stage, ...] = REFINER_STAGES
    max_iter: int = 20  # LBFGS iterations per optimiser step
    history_size: int = 100
    tolerance_grad: float = 1e-7
    tolerance_change: float = 1e-9
    keypoint_path: str = "support"  # "support": skin the regressor's vertices only; "mesh": the whole skin
    hard_limits: bool = True  # limited DoFs optimised through q = mid + half_range·sin(u): never outside
    batch_size: int = 256  # samples per LBFGS problem (the loss is a batch mean, as in HSMR)
    device: str = "auto"  # "auto": CUDA when present


@dataclass
class SkelifyResult:
    """Per-sample results (N samples) on the CPU. LBFGS runs per batch, so iterations and convergence are the
    batch's."""

    q: torch.Tensor  # (N, 46)
    betas: torch.Tensor  # (N, 10)
    trans: torch.Tensor  # (N, 3) crop-camera translation of `Skelify.score`
    kp2d_err: torch.Tensor  # (N,) of `Skelify.score`, normalised crop units; NaN without confident keypoints
    iterations: torch.Tensor  # (N,) int: LBFGS iterations over all stages
    converged: torch.Tensor  # (N,) bool: a stage stopped on its tolerances before its last step
    seconds: torch.Tensor  # (N,) the sample's share of its batch's wall time

    @classmethod
    def concatenate(cls, parts: list[SkelifyResult]) -> SkelifyResult:
        return cls(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(cls)))


# ----------------------------------------------------------------------------------- pure terms
def geman_mcclure(x: torch.Tensor, sigma: float = GM_SIGMA) -> torch.Tensor:
    """ρ(x) = σ²x² / (σ² + x²), elementwise."""
    squared = x.square()
    return sigma**2 * squared / (sigma**2 + squared)


def torso_scale(keypoints: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """Mean 2D length of the torso edges seen in `keypoints` (both ends confident); `fallback` where none is.

    Args:
        keypoints: (B, K, 3) x, y, confidence; fallback: (B,).
    Returns:
        (B,), at least MIN_TORSO_SCALE.
    """
    first, second = (list(ends) for ends in zip(*TORSO_EDGES, strict=True))
    lengths = (keypoints[:, first, :2] - keypoints[:, second, :2]).norm(dim=-1)  # (B, 2)
    seen = (keypoints[:, first, 2] > 0) & (keypoints[:, second, 2] > 0)
    count = seen.sum(-1)
    mean = (lengths * seen).sum(-1) / count.clamp_min(1)
    return torch.where(count > 0, mean, fallback).clamp_min(MIN_TORSO_SCALE)


def _torso_edges(points: torch.Tensor) -> torch.Tensor:
    """The torso edges of keypoints, end minus start: (B, K, D) → (B, 2, D) (no index tensor: see _LIMITED)."""
    return torch.stack([points[:, first] - points[:, second] for first, second in TORSO_EDGES], dim=1)


def model_torso_scale(projected: torch.Tensor) -> torch.Tensor:
    """Mean 2D torso-edge length of projected model keypoints: (B, K, 2) → (B,)."""
    return _torso_edges(projected).norm(dim=-1).mean(-1)


def reprojection_term(
    projected: torch.Tensor, keypoints: torch.Tensor, scale: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Σ_j m_j c_j² Σ_xy ρ((x̂ − x) / s) per sample.

    Args:
        projected: (B, K, 2); keypoints: (B, K, 3); scale: (B,); mask: (K,) 0/1, which keypoints count.
    Returns:
        (B,).
    """
    residual = (projected - keypoints[..., :2]) / scale[:, None, None]
    weight = (keypoints[..., 2] * mask).square()
    return (weight * geman_mcclure(residual).sum(-1)).sum(-1)


def shape_prior(betas: torch.Tensor) -> torch.Tensor:
    """‖β‖² per sample: (B, 10) → (B,)."""
    return betas.square().sum(-1)


def joint_limit_prior(q: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """Mean over the limited DoFs of exp(l − q)² + exp(q − u)².

    Args:
        q: (B, 46); lower, upper: (D,) limits of the DoFs C.LIMITED_DOFS.
    Returns:
        (B,).
    """
    limited = q[:, _LIMITED]
    return (torch.exp(lower - limited).square() + torch.exp(limited - upper).square()).mean(-1)


def anchor_term(points: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of centred 3D keypoints to the centred starting ones: (B, K, 3), (B, K, 3) → (B,)."""
    offsets = (points - points.mean(1, keepdim=True)) - (start - start.mean(1, keepdim=True))
    return offsets.square().sum(-1).mean(-1)


def depth_term(points: torch.Tensor, trans: torch.Tensor, scale: torch.Tensor, focal: float) -> torch.Tensor:
    """(ẑ − t_z)², ẑ = f · mean 3D torso-edge length / the observed 2D torso scale.

    Args:
        points: (B, K, 3) model keypoints; trans: (B, 3); scale: (B,) `torso_scale` of the observation.
    Returns:
        (B,).
    """
    length_3d = _torso_edges(points).norm(dim=-1).mean(-1)
    return (focal * length_3d / scale - trans[:, 2]).square()


def keypoint_mask(stage: Stage, device: torch.device) -> torch.Tensor:
    """(44,) 0/1: the torso keypoints for a camera stage, else all but the excluded ones."""
    if stage.camera_only:
        mask = torch.zeros(C.NUM_KEYPOINTS, device=device)
        mask[list(CAMERA_KEYPOINTS)] = 1.0
    else:
        mask = torch.ones(C.NUM_KEYPOINTS, device=device)
    mask[list(EXCLUDED_KEYPOINTS)] = 0.0
    return mask


def bounded_dofs(free: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """q = mid + half_range·(1 − LIMIT_MARGIN)·sin(u): unconstrained u (B, D) → DoFs inside [lower, upper] (D,)."""
    middle, half = (upper + lower) / 2, (upper - lower) / 2 * (1 - LIMIT_MARGIN)
    return middle + half * torch.sin(free)


def unbounded_dofs(q: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """The u of `bounded_dofs` for DoFs q (B, D), those outside the limits taken at the nearest bound."""
    middle, half = (upper + lower) / 2, (upper - lower) / 2 * (1 - LIMIT_MARGIN)
    return torch.asin(((q - middle) / half).clamp(-1.0, 1.0))


def limit_tensors(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper limits (D,) of the DoFs C.LIMITED_DOFS, float32."""
    lower, upper = C.dof_limits()
    index = list(C.LIMITED_DOFS)
    return tuple(torch.as_tensor(bound[index], dtype=torch.float32, device=device) for bound in (lower, upper))


# --------------------------------------------------------------------------------------- driver
@dataclass
class Problem:
    """One batch being optimised: the free tensors and what the objective compares them with."""

    orient: torch.Tensor  # (B, 3) q[0:3]
    body: torch.Tensor  # (B, 43) q[3:46], or their u of `bounded_dofs` with hard limits
    betas: torch.Tensor  # (B, 10)
    trans: torch.Tensor  # (B, 3) the optimiser's camera translation
    keypoints: torch.Tensor  # (B, 44, 3)
    scale: torch.Tensor  # (B,)
    start_points: torch.Tensor  # (B, 44, 3) the starting pose's keypoints (anchor term)
    start_betas: torch.Tensor  # (B, 10)
    limits: tuple[torch.Tensor, torch.Tensor] = field(repr=False)
    hard_limits: bool = False

    def q(self) -> torch.Tensor:
        body = bounded_dofs(self.body, *self.limits) if self.hard_limits else self.body
        return torch.cat([self.orient, body], dim=1)

    def free(self, stage: Stage) -> list[torch.Tensor]:
        return [self.orient, self.trans] if stage.camera_only else [self.orient, self.body, self.betas, self.trans]


class Skelify:
    """SKELify on a SKEL layer and keypoint regressor, moved once to the configured device."""

    def __init__(self, skel: SKELLayer, regressor: VertexRegressor, config: SkelifyConfig = SkelifyConfig()):
        if config.keypoint_path not in ("support", "mesh"):
            raise ValueError(f"keypoint_path must be 'support' or 'mesh', got {config.keypoint_path!r}")
        self.config = config
        self.device = resolve_device(config.device)
        self.skel = skel.to(self.device)
        self.regressor = regressor.to(self.device)

    def keypoints_3d(self, q: torch.Tensor, betas: torch.Tensor) -> torch.Tensor:
        """The 44 model keypoints at zero translation: (B, 46), (B, 10) → (B, 44, 3)."""
        if self.config.keypoint_path == "support":
            return self.skel.keypoints(q, betas, None, self.regressor)
        return self.regressor(self.skel(q, betas).skin_verts)

    @torch.no_grad()
    def score(self, q: torch.Tensor, betas: torch.Tensor, keypoints: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Place labels in the crop camera and score them: the procedure of every kp2d_err in the label table.

        Args:
            q: (N, 46); betas: (N, 10); keypoints: (N, 44, 3) normalised, confidences floored.
        Returns:
            translation (N, 3) and kp2d_err (N,), on the CPU, float32.
        """
        translations, errors = [], []
        for part in range(0, q.shape[0], self.config.batch_size):
            rows = slice(part, part + self.config.batch_size)
            q_part, betas_part = (t[rows].to(self.device, torch.float32) for t in (q, betas))
            points = self.keypoints_3d(q_part, betas_part).cpu()
            observed = keypoints[rows].float().cpu()
            trans = camera.fit_translation(points, observed)
            translations.append(trans)
            errors.append(camera.reprojection_error(camera.project(points, trans), observed))
        return torch.cat(translations), torch.cat(errors)

    def fit(
        self,
        q: torch.Tensor,
        betas: torch.Tensor,
        keypoints: torch.Tensor,
        on_batch: Callable[[int], None] | None = None,
    ) -> SkelifyResult:
        """SKELify N samples from (q, β) in batches of config.batch_size; each label is then scored by `score`.

        Args:
            q: (N, 46); betas: (N, 10) the starting point (e.g. the network's prediction);
            keypoints: (N, 44, 3) normalised, confidences floored.
            on_batch: called with each finished batch's size (a progress bar's update).
        """
        parts = []
        for part in range(0, q.shape[0], self.config.batch_size):
            rows = slice(part, part + self.config.batch_size)
            parts.append(self._fit_batch(q[rows], betas[rows], keypoints[rows]))
            if on_batch is not None:
                on_batch(parts[-1].q.shape[0])
        return SkelifyResult.concatenate(parts)

    def _fit_batch(self, q: torch.Tensor, betas: torch.Tensor, keypoints: torch.Tensor) -> SkelifyResult:
        started = time.perf_counter()
        problem = self.start(q, betas, keypoints)
        iterations, converged = 0, False
        for stage in self.config.stages:
            stage_iterations, stage_converged = self._run_stage(problem, stage)
            iterations += stage_iterations
            converged = converged or stage_converged
        q_fit, betas_fit = problem.q().detach(), problem.betas.detach()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        trans, kp2d_err = self.score(q_fit, betas_fit, keypoints)
        count = q.shape[0]
        return SkelifyResult(
            q=q_fit.cpu(),
            betas=betas_fit.cpu(),
            trans=trans,
            kp2d_err=kp2d_err,
            iterations=torch.full((count,), iterations, dtype=torch.int32),
            converged=torch.full((count,), converged, dtype=torch.bool),
            seconds=torch.full((count,), (time.perf_counter() - started) / count),
        )

    @torch.no_grad()
    def start(self, q: torch.Tensor, betas: torch.Tensor, keypoints: torch.Tensor) -> Problem:
        """Free tensors at the starting point; the camera starts at the fitted placement (a network's camera
        belongs to its augmented crop), the torso scale falls back to the starting projection's."""
        q, betas = q.to(self.device, torch.float32), betas.to(self.device, torch.float32)
        keypoints = keypoints.to(self.device, torch.float32)
        points = self.keypoints_3d(q, betas)
        trans = camera.fit_translation(points.cpu(), keypoints.cpu()).to(self.device)
        scale = torso_scale(keypoints, model_torso_scale(camera.project(points, trans)))
        limits = limit_tensors(self.device)
        body = unbounded_dofs(q[:, _LIMITED], *limits) if self.config.hard_limits else q[:, 3:]
        return Problem(
            orient=q[:, :3].clone().requires_grad_(True),
            body=body.clone().requires_grad_(True),
            betas=betas.clone().requires_grad_(True),
            # LBFGS flattens gradients with view(): the solver's translation comes back transposed.
            trans=trans.contiguous().clone().requires_grad_(True),
            keypoints=keypoints,
            scale=scale,
            start_points=points,
            start_betas=betas,
            limits=limits,
            hard_limits=self.config.hard_limits,
        )

    def objective(self, problem: Problem, stage: Stage, mask: torch.Tensor) -> torch.Tensor:
        """The batch-mean SKELify loss of `stage` at the problem's current parameters (a scalar)."""
        q = problem.q()
        points = self.keypoints_3d(q, problem.betas)
        projected = camera.project(points, problem.trans)
        loss = stage.reprojection**2 * reprojection_term(projected, problem.keypoints, problem.scale, mask)
        if stage.shape:
            shape = problem.betas - problem.start_betas if stage.shape_to_start else problem.betas
            loss = loss + stage.shape**2 * shape_prior(shape)
        if stage.anchor:
            loss = loss + stage.anchor**2 * anchor_term(points, problem.start_points)
        if stage.angle:
            loss = loss + stage.angle**2 * joint_limit_prior(q, *problem.limits)
        if stage.depth:
            loss = loss + stage.depth**2 * depth_term(points, problem.trans, problem.scale, camera.FOCAL_NORMALISED)
        return loss.mean()

    def _run_stage(self, problem: Problem, stage: Stage) -> tuple[int, bool]:
        """`stage.steps` LBFGS steps, stopping early on HSMR's tolerances; returns (iterations, stopped early)."""
        config = self.config
        free = problem.free(stage)
        optimizer = torch.optim.LBFGS(
            free,
            lr=1.0,
            max_iter=config.max_iter,
            history_size=config.history_size,
            tolerance_grad=config.tolerance_grad,
            tolerance_change=config.tolerance_change,
            line_search_fn="strong_wolfe",
        )
        mask = keypoint_mask(stage, self.device)

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = self.objective(problem, stage, mask)
            loss.backward()
            return loss

        previous, stopped = None, False
        for _ in range(stage.steps):
            loss = float(optimizer.step(closure).detach())
            small_change = previous is not None and abs(previous - loss) / max(abs(previous), abs(loss), 1.0) < (
                config.tolerance_change
            )
            flat = all(t.grad is None or t.grad.abs().max() < config.tolerance_grad for t in free)
            if small_change or flat:
                stopped = True
                break
            previous = loss
        state = optimizer.state[optimizer.param_groups[0]["params"][0]]
        return int(state.get("n_iter", 0)), stopped
