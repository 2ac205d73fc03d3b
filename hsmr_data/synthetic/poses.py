"""Random SKEL poses and shapes for synthetic data and demos."""

from __future__ import annotations

import numpy as np

from hsmr_model import skel_constants as C


def sample_skel_poses(count: int, rng: np.random.Generator, spread: float = 0.5) -> np.ndarray:
    """q drawn uniformly from the central `spread` fraction of every DoF's limits.

    The pelvis (unlimited) gets a free heading and a small tilt and list, so bodies stand upright.

    Returns:
        (count, 46) float64, inside the joint limits.
    """
    if not 0.0 < spread <= 1.0:
        raise ValueError(f"spread must be in (0, 1], got {spread}")
    lower, upper = C.dof_limits()
    limited = np.isfinite(lower)
    lower, upper = np.where(limited, lower, 0.0), np.where(limited, upper, 0.0)
    centre, half = (lower + upper) / 2, (upper - lower) / 2 * spread
    q = centre + half * rng.uniform(-1.0, 1.0, size=(count, C.NUM_DOFS))
    q[:, 0:2] = rng.uniform(-0.15, 0.15, size=(count, 2))
    q[:, 2] = rng.uniform(-np.pi, np.pi, size=count)
    return q


def sample_betas(count: int, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """β ~ N(0, scale²), clipped to ±3 (the range the quality filters keep). Returns (count, 10)."""
    return np.clip(rng.normal(scale=scale, size=(count, C.NUM_BETAS)), -3.0, 3.0)
