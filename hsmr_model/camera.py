"""The crop camera of HMR2.0/HSMR and the one procedure that places a label in it.

Keypoints live in normalised crop coordinates (pixel − centre) / box side ∈ [−0.5, 0.5]; the camera
has focal length 5000/256 in those units and its principal point at 0. A label (q, β) is placed by
the camera translation that best reprojects its 3D keypoints onto the 2D ones, and scored by the
confidence-weighted reprojection error: the old and the new label of a refinement round are both
placed and scored by these functions, so their errors are comparable.
"""

from __future__ import annotations

import torch

CROP_SIZE = 256
FOCAL_PIXELS = 5000.0
FOCAL_NORMALISED = FOCAL_PIXELS / CROP_SIZE
# Depth of a weak-perspective camera with scale 0.9 (the HSMR head's mean camera): 2·5000/(256·0.9).
DEFAULT_DEPTH = 2 * FOCAL_PIXELS / (CROP_SIZE * 0.9)


def to_crop_coordinates(keypoints_px: torch.Tensor, center: torch.Tensor, box_side: torch.Tensor) -> torch.Tensor:
    """Pixel keypoints (B, K, 3) → normalised crop coordinates, confidence kept: (B, K, 3)."""
    xy = (keypoints_px[..., :2] - center[:, None]) / box_side[:, None, None]
    return torch.cat([xy, keypoints_px[..., 2:]], dim=-1)


def project(points: torch.Tensor, trans: torch.Tensor, focal: float = FOCAL_NORMALISED) -> torch.Tensor:
    """Perspective projection of (B, K, 3) points translated by (B, 3), principal point 0: (B, K, 2)."""
    moved = points + trans[:, None]
    return focal * moved[..., :2] / moved[..., 2:].clamp_min(1e-6)


def reprojection_error(predicted_2d: torch.Tensor, keypoints: torch.Tensor) -> torch.Tensor:
    """Σ c·‖x − x̂‖² / Σ c per sample (SKELify's kp2d_err), normalised units: (B, K, 2), (B, K, 3) → (B,).
    NaN where no keypoint has confidence."""
    conf = keypoints[..., 2]
    squared = ((predicted_2d - keypoints[..., :2]) ** 2).sum(-1)
    total = conf.sum(-1)
    return torch.where(total > 0, (conf * squared).sum(-1) / total.clamp_min(1e-12), torch.nan)


def fit_translation(
    points: torch.Tensor,
    keypoints: torch.Tensor,
    focal: float = FOCAL_NORMALISED,
    iterations: int = 5,
    prior_weight: float = 1e-6,
) -> torch.Tensor:
    """Camera translation that best reprojects `points` onto `keypoints` (confidence-weighted).

    A linear least-squares start (f·(X + t) − x·(Z + t_z) = 0 per coordinate), then Gauss–Newton on
    the reprojection error. A faint prior towards (0, 0, DEFAULT_DEPTH) keeps samples with fewer
    than two confident keypoints well posed.

    Args:
        points: (B, K, 3) model-frame 3D keypoints; keypoints: (B, K, 3) normalised x, y, confidence.
    Returns:
        (B, 3).
    """
    dtype = points.dtype
    points, keypoints = points.double(), keypoints.double()
    conf = keypoints[..., 2].clamp_min(0)
    x, y = keypoints[..., 0], keypoints[..., 1]
    big_x, big_y, big_z = points.unbind(-1)
    zero, f = torch.zeros_like(x), torch.full_like(x, focal)
    rows = torch.stack([torch.stack([f, zero, -x], -1), torch.stack([zero, f, -y], -1)], dim=2)  # (B, K, 2, 3)
    rhs = torch.stack([x * big_z - f * big_x, y * big_z - f * big_y], dim=2)  # (B, K, 2)
    prior = torch.tensor([0.0, 0.0, DEFAULT_DEPTH], dtype=points.dtype, device=points.device)
    linear = _in_front(_weighted_solve(rows, rhs, conf, prior, prior_weight * focal**2), points)
    # The algebraic solution weights each keypoint by its depth and can land next to the body when
    # the keypoints disagree with it; the weak-perspective guess cannot. Start from the better one.
    guesses = torch.stack([linear, _in_front(_weak_perspective_guess(points, keypoints, focal), points)])
    errors = torch.stack([_weighted_residual(points, guess, keypoints, focal) for guess in guesses])
    error, best = errors.min(0)
    trans = guesses[best, torch.arange(len(best))]
    for _ in range(iterations):
        moved = points + trans[:, None]
        depth = moved[..., 2]
        residual = torch.stack([focal * moved[..., 0] / depth - x, focal * moved[..., 1] / depth - y], dim=2)
        inv = f / depth
        jacobian = torch.stack(
            [
                torch.stack([inv, zero, -inv * moved[..., 0] / depth], -1),
                torch.stack([zero, inv, -inv * moved[..., 1] / depth], -1),
            ],
            dim=2,
        )
        step = _weighted_solve(jacobian, -residual, conf, trans.new_zeros(3), prior_weight)
        candidate = _in_front(trans + step, points)
        candidate_error = _weighted_residual(points, candidate, keypoints, focal)
        # A Gauss-Newton step can overshoot on a label that fits badly: keep only steps that help.
        better = candidate_error < error
        trans = torch.where(better[:, None], candidate, trans)
        error = torch.where(better, candidate_error, error)
    return trans.to(dtype)


def _weak_perspective_guess(points: torch.Tensor, keypoints: torch.Tensor, focal: float) -> torch.Tensor:
    """Depth from the ratio of 3D to 2D spread about the confidence-weighted centroids, x and y from
    the centroids: (B, 3). Falls back to DEFAULT_DEPTH where the keypoints have no spread."""
    conf = keypoints[..., 2].clamp_min(0)
    total = conf.sum(-1, keepdim=True).clamp_min(1e-12)
    centre_3d = (conf[..., None] * points).sum(1) / total
    centre_2d = (conf[..., None] * keypoints[..., :2]).sum(1) / total

    def spread(values: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        return ((conf * ((values - centre[:, None]) ** 2).sum(-1)).sum(-1) / total[:, 0]).sqrt()

    spread_3d, spread_2d = spread(points[..., :2], centre_3d[:, :2]), spread(keypoints[..., :2], centre_2d)
    depth = torch.where(spread_2d > 1e-9, focal * spread_3d / spread_2d.clamp_min(1e-9), DEFAULT_DEPTH)
    xy = centre_2d * depth[:, None] / focal - centre_3d[:, :2]
    return torch.cat([xy, (depth - centre_3d[:, 2])[:, None]], dim=-1)


def _in_front(trans: torch.Tensor, points: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
    """Push a translation back until every point is at least `margin` in front of the camera."""
    nearest = (points[..., 2] + trans[:, None, 2]).min(-1).values
    return trans + torch.stack([torch.zeros_like(nearest)] * 2 + [(margin - nearest).clamp_min(0)], dim=-1)


def _weighted_residual(points, trans, keypoints, focal) -> torch.Tensor:
    """Σ c·‖π(X + t) − x‖² per sample: (B,)."""
    squared = ((project(points, trans, focal) - keypoints[..., :2]) ** 2).sum(-1)
    return (keypoints[..., 2].clamp_min(0) * squared).sum(-1)


def _weighted_solve(rows, rhs, weights, prior, prior_weight) -> torch.Tensor:
    """argmin_t Σ w‖A t − b‖² + λ‖t − prior‖² per sample: A (B, K, 2, 3), b (B, K, 2), w (B, K) → (B, 3)."""
    weighted = rows * weights[..., None, None]
    normal = torch.einsum("bkri,bkrj->bij", weighted, rows) + prior_weight * torch.eye(3, dtype=rows.dtype)
    target = torch.einsum("bkri,bkr->bi", weighted, rhs) + prior_weight * prior
    return torch.linalg.solve(normal, target)
