"""HSMR training losses as pure, batched tensor functions.

L = w_orient·L_orient + w_body·L_body + w_β·L_β + w_3D·L_kp3D + w_2D·L_kp2D, with
- L_orient, L_body: squared error of the per-bone rotation matrices, bone 0 (the pelvis, i.e. the
  global orientation) apart from bones 1–23, masked by has_pose;
- L_β: squared error of β, masked by has_betas;
- L_kp3D: confidence-weighted L1 of the 44 keypoints, both sets centred on keypoint 39 (pelvis);
- L_kp2D: confidence-weighted L1 of the projected keypoints in normalised crop units;
- L_grid2D (optional): the same L1 for the keypoints the network reads from its token grid;
- L_heatmap (optional): the confidence-weighted KL divergence from a Gaussian around each 2D keypoint,
  spread over the grid's cells, to the network's distribution over those cells (dense supervision
  that teaches a backbone from scratch where the body parts are faster than the L1 of an average).

Each term is summed over its elements *and over the batch*, as in HMR2.0/HSMR: the weights of the
public configuration are tuned for these sums. The per-sample functions return (B,) so a caller can
reduce differently.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hsmr_model.camera import project
from hsmr_model.pose_repr import bone_rotations
from hsmr_model.regressor import VertexRegressor
from hsmr_model.skel_layer import SKELLayer

PELVIS_KEYPOINT = 39


@dataclass(frozen=True)
class LossWeights:
    """Defaults: the HSMR paper's public training configuration (joint-limit prior 0, so absent)."""

    kp3d: float = 0.05
    kp2d: float = 0.01
    orientation: float = 0.002
    body_pose: float = 0.001
    betas: float = 0.0005
    grid_kp2d: float = 0.0  # the 2D keypoints the network reads from its token grid, when it has them
    grid_heatmap: float = 0.0  # their distributions over the grid's cells


@dataclass
class GridKeypoints:
    """Keypoints a network reads from its token grid by a soft-argmax, with the distributions they come from."""

    positions: torch.Tensor  # (B, K, 2) normalised crop coordinates
    log_probabilities: torch.Tensor  # (B, K, N) over the cells
    cell_centres: torch.Tensor  # (N, 2)


@dataclass
class LossTargets:
    """Labels of a batch. Keypoints carry their confidence last; a confidence of 0 removes a keypoint."""

    q: torch.Tensor  # (B, 46)
    betas: torch.Tensor  # (B, 10)
    has_pose: torch.Tensor  # (B,) bool or 0/1
    has_betas: torch.Tensor  # (B,)
    keypoints_3d: torch.Tensor  # (B, K, 4)
    keypoints_2d: torch.Tensor  # (B, K, 3) normalised crop coordinates


def rotation_losses(
    predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared error of per-bone rotations, global orientation (bone 0) and body (bones 1–23) apart.

    Args:
        predicted, target: (B, 24, 3, 3); mask: (B,).
    Returns:
        orientation (B,), body (B,).
    """
    squared = ((predicted - target) ** 2).flatten(2).sum(-1) * mask.to(predicted.dtype)[:, None]  # (B, 24)
    return squared[:, 0], squared[:, 1:].sum(-1)


def betas_loss(predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Squared error of β: (B, 10), (B, 10), (B,) → (B,)."""
    return ((predicted - target) ** 2).sum(-1) * mask.to(predicted.dtype)


def keypoint_3d_loss(predicted: torch.Tensor, target: torch.Tensor, root: int = PELVIS_KEYPOINT) -> torch.Tensor:
    """Confidence-weighted L1 of root-centred 3D keypoints: (B, K, 3), (B, K, 4) → (B,).

    Centring on the root removes the translation, which the network does not predict in 3D.
    """
    predicted = predicted - predicted[:, root : root + 1]
    points = target[..., :3] - target[:, root : root + 1, :3]
    return (target[..., 3:] * (predicted - points).abs()).sum((1, 2))


def keypoint_2d_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Confidence-weighted L1 of 2D keypoints in normalised crop units: (B, K, 2), (B, K, 3) → (B,)."""
    return (target[..., 2:] * (predicted - target[..., :2]).abs()).sum((1, 2))


HEATMAP_SIGMA = 1 / 16  # of the crop side: half a cell of the 8-row token grid


def keypoint_heatmap_loss(
    log_probabilities: torch.Tensor, cell_centres: torch.Tensor, target: torch.Tensor, sigma: float = HEATMAP_SIGMA
) -> torch.Tensor:
    """Confidence-weighted KL(Gaussian target ‖ predicted) over grid cells.

    Args:
        log_probabilities: (B, K, N); cell_centres: (N, 2); target: (B, K, 3) x, y, confidence.
    Returns:
        (B,).
    """
    squared = ((cell_centres - target[..., None, :2]) ** 2).sum(-1)  # (B, K, N)
    log_target = torch.log_softmax(-squared / (2 * sigma**2), dim=-1)
    divergence = (log_target.exp() * (log_target - log_probabilities)).sum(-1)  # (B, K)
    return (target[..., 2] * divergence).sum(-1)


def predicted_keypoints(
    skel: SKELLayer, regressor: VertexRegressor, q: torch.Tensor, betas: torch.Tensor, cam_t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The 44 keypoints of the predicted body: 3D from the SKEL skin at zero translation (B, K, 3) and
    their projection through the crop camera placed by cam_t (B, K, 2)."""
    keypoints_3d = skel.keypoints(q, betas, None, regressor)
    return keypoints_3d, project(keypoints_3d, cam_t)


def hsmr_loss(
    rotations: torch.Tensor,
    betas: torch.Tensor,
    keypoints_3d: torch.Tensor,
    keypoints_2d: torch.Tensor,
    targets: LossTargets,
    weights: LossWeights | None = None,
    grid: GridKeypoints | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted training loss of a batch and its unweighted parts (each summed over the batch).

    Args:
        rotations: (B, 24, 3, 3) predicted per-bone rotations; betas: (B, 10);
        keypoints_3d: (B, K, 3) and keypoints_2d: (B, K, 2) from `predicted_keypoints`;
        grid: the keypoints the network read from its token grid, if it does.
    Returns:
        total (), parts {"orientation", "body_pose", "betas", "kp3d", "kp2d"} and, with a grid, "grid_kp2d"
        and "grid_heatmap".
    """
    weights = weights or LossWeights()
    orientation, body = rotation_losses(rotations, bone_rotations(targets.q.to(rotations.dtype)), targets.has_pose)
    parts = {
        "orientation": orientation.sum(),
        "body_pose": body.sum(),
        "betas": betas_loss(betas, targets.betas, targets.has_betas).sum(),
        "kp3d": keypoint_3d_loss(keypoints_3d, targets.keypoints_3d).sum(),
        "kp2d": keypoint_2d_loss(keypoints_2d, targets.keypoints_2d).sum(),
    }
    if grid is not None:
        parts["grid_kp2d"] = keypoint_2d_loss(grid.positions, targets.keypoints_2d).sum()
        parts["grid_heatmap"] = keypoint_heatmap_loss(
            grid.log_probabilities, grid.cell_centres, targets.keypoints_2d
        ).sum()
    total = sum(getattr(weights, name) * value for name, value in parts.items())  # parts are named as the weights
    return total, parts
