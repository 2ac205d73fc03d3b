"""HSMR's quality filters for SKEL pseudo-labels, batched over samples.

Three rules, each kept as its own verdict so the label table and dashboards can tell *why* a sample
was dropped, not only that it was:

- `pve_ok`: the SKEL fit is close to the SMPL mesh (max per-vertex error within `max_pve_max`);
- `betas_ok`: the shape is plausible (every |β| within `max_abs_beta`);
- `keypoints_ok`: the person is seen well enough (at least `min_keypoints` keypoints with
  confidence > 0, after the loader's rule that confidences below `keypoint_conf_floor` count as 0).

Boundaries follow the paper's wording ("maxPVE > 6 cm", "any |β| > 3", "fewer than 4 keypoints with
confidence > 0" drop a sample), so a value exactly at a threshold passes. NaN or inf never passes.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from hsmr_model import skel_constants as C


@dataclass(frozen=True)
class FilterConfig:
    """Thresholds of the quality filters (HSMR's defaults)."""

    max_pve_max: float = 0.06  # metres
    max_abs_beta: float = 3.0
    min_keypoints: int = 4
    keypoint_conf_floor: float = 0.3


@dataclass(frozen=True)
class FilterVerdicts:
    """Per-sample verdicts of every rule, all arrays of shape (N,)."""

    num_keypoints: np.ndarray  # int32: keypoints with confidence > 0 after the floor
    pve_ok: np.ndarray  # bool
    betas_ok: np.ndarray  # bool
    keypoints_ok: np.ndarray  # bool
    passed: np.ndarray  # bool: all rules

    def columns(self) -> dict[str, np.ndarray]:
        """The verdicts as named columns (the label table's column names)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def summary(self) -> dict[str, int]:
        """Counts for dashboards: samples, how many each rule rejected, how many passed.

        A sample can fail several rules, so the rejections may add up to more than `total - passed`.
        """
        return {
            "total": int(self.passed.size),
            "rejected_pve": int(np.count_nonzero(~self.pve_ok)),
            "rejected_betas": int(np.count_nonzero(~self.betas_ok)),
            "rejected_keypoints": int(np.count_nonzero(~self.keypoints_ok)),
            "passed": int(np.count_nonzero(self.passed)),
        }


def clean_confidences(conf: np.ndarray, floor: float = FilterConfig.keypoint_conf_floor) -> np.ndarray:
    """Keypoint confidences with the HSMR loader's rule applied: below `floor` (or NaN) becomes 0.

    Returns a new array; the input is left alone because callers keep the raw keypoints.
    """
    conf = np.asarray(conf, dtype=np.float32)
    # `~(conf >= floor)` also catches NaN, which the loader zeroes before anything else.
    return np.where(~(conf >= floor), np.float32(0.0), conf)


def count_keypoints(conf: np.ndarray) -> np.ndarray:
    """Number of keypoints with confidence > 0 per sample, (N, K) → (N,) int32."""
    return np.count_nonzero(np.asarray(conf) > 0, axis=-1).astype(np.int32)


def apply_filters(
    pve_max: np.ndarray,
    betas: np.ndarray,
    keypoint_conf: np.ndarray,
    config: FilterConfig = FilterConfig(),
) -> FilterVerdicts:
    """Every rule's verdict for N samples.

    pve_max: (N,) metres; betas: (N, 10); keypoint_conf: (N, 44) raw confidences of the 2D keypoints
    (the floor is applied here).
    """
    # Compared in their own precision: float32 0.06 is above float64 0.06, and must still pass.
    pve_max = np.asarray(pve_max)
    betas = np.asarray(betas)
    keypoint_conf = np.asarray(keypoint_conf)
    n = pve_max.shape[0] if pve_max.ndim == 1 else -1
    _check_shape("pve_max", pve_max, (n,))
    _check_shape("betas", betas, (n, C.NUM_BETAS))
    _check_shape("keypoint_conf", keypoint_conf, (n, C.NUM_KEYPOINTS))

    num_keypoints = count_keypoints(clean_confidences(keypoint_conf, config.keypoint_conf_floor))
    pve_ok, betas_ok = mesh_verdicts(pve_max, betas, config)
    keypoints_ok = num_keypoints >= config.min_keypoints
    return FilterVerdicts(
        num_keypoints=num_keypoints,
        pve_ok=pve_ok,
        betas_ok=betas_ok,
        keypoints_ok=keypoints_ok,
        passed=pve_ok & betas_ok & keypoints_ok,
    )


def mesh_verdicts(pve_max: np.ndarray, betas: np.ndarray, config: FilterConfig) -> tuple[np.ndarray, np.ndarray]:
    """The two rules that need no image, `pve_ok` and `betas_ok`, for pve_max (N,) and betas (N, 10)."""
    pve_ok = np.isfinite(pve_max) & (pve_max <= config.max_pve_max)
    betas_ok = np.all(np.isfinite(betas) & (np.abs(betas) <= config.max_abs_beta), axis=1)
    return pve_ok, betas_ok


def _check_shape(name: str, array: np.ndarray, expected: tuple[int, ...]) -> None:
    """Raise a ValueError naming the argument when its shape is not `expected` (-1: any N)."""
    ok = array.ndim == len(expected) and all(e in (-1, s) for e, s in zip(expected, array.shape, strict=True))
    if not ok:
        shown = tuple("N" if e == -1 else e for e in expected)
        raise ValueError(f"{name}: expected shape {shown} with the same N for every input, got {array.shape}")
