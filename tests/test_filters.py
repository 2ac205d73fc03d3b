"""Quality filters: each rule at its boundaries, NaN, the confidence floor, and the counts."""

from __future__ import annotations

import numpy as np
import pytest

from hsmr_data.filters import FilterConfig, apply_filters, clean_confidences, count_keypoints
from hsmr_data.label_table import LABEL_SCHEMA


def _conf(*visible: float, n_keypoints: int = 44) -> np.ndarray:
    """One sample's confidences: the given values first, zeros after."""
    conf = np.zeros(n_keypoints, np.float32)
    conf[: len(visible)] = visible
    return conf


def _good(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs of `n` samples that pass every rule; tests spoil one thing at a time."""
    return np.full(n, 0.01), np.zeros((n, 10)), np.ones((n, 44))


def test_clean_confidences_zeroes_below_the_floor_and_nan():
    raw = np.array([[0.29, 0.3, 0.31, np.nan, -1.0, 1.0]], np.float32)
    cleaned = clean_confidences(raw)
    np.testing.assert_array_equal(cleaned, np.array([[0.0, 0.3, 0.31, 0.0, 0.0, 1.0]], np.float32))
    assert np.isnan(raw[0, 3]), "the input must not be modified"
    np.testing.assert_array_equal(count_keypoints(cleaned), [3])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threshold", [0.06, 0.07])  # as float64, float32(0.07) is above 0.07
def test_pve_max_exactly_at_the_threshold_passes_in_either_precision(dtype, threshold):
    pve, betas, conf = _good(5)
    at = dtype(threshold)
    pve = np.array([at, np.nextafter(at, dtype(1)), np.nan, np.inf, 0.0], dtype)
    verdicts = apply_filters(pve, betas, conf, FilterConfig(max_pve_max=threshold))
    np.testing.assert_array_equal(verdicts.pve_ok, [True, False, False, False, True])
    np.testing.assert_array_equal(verdicts.passed, verdicts.pve_ok)


def test_betas_rule_uses_every_component_and_rejects_nan():
    pve, betas, conf = _good(5)
    betas[0, 9] = 3.0
    betas[1, 0] = -3.0
    betas[2, 4] = 3.0001
    betas[3, 7] = np.nan
    betas[4, 2] = -3.5
    verdicts = apply_filters(pve, betas, conf)
    np.testing.assert_array_equal(verdicts.betas_ok, [True, True, False, False, False])
    assert verdicts.pve_ok.all() and verdicts.keypoints_ok.all()


def test_keypoints_rule_counts_only_confidences_at_or_above_the_floor():
    pve, betas, _ = _good(4)
    conf = np.stack(
        [
            _conf(0.3, 0.3, 0.3, 0.3),  # exactly 4 at the floor: kept
            _conf(0.9, 0.9, 0.9),  # 3: dropped
            _conf(0.9, 0.9, 0.9, 0.29),  # the fourth is below the floor: dropped
            _conf(0.9, 0.9, 0.9, np.nan, 0.5),  # NaN counts as 0: 4 left, kept
        ]
    )
    verdicts = apply_filters(pve, betas, conf)
    np.testing.assert_array_equal(verdicts.num_keypoints, [4, 3, 3, 4])
    np.testing.assert_array_equal(verdicts.keypoints_ok, [True, False, False, True])
    assert verdicts.num_keypoints.dtype == np.int32


def test_config_thresholds_are_used():
    pve, betas, conf = _good(1)
    pve[:] = 0.07
    betas[0, 0] = 2.5
    conf[0, 3:] = 0.2  # 3 keypoints at 1.0, the rest visible only under a floor of 0.1
    strict = FilterConfig(max_pve_max=0.08, max_abs_beta=2.0, min_keypoints=44, keypoint_conf_floor=0.1)
    verdicts = apply_filters(pve, betas, conf, strict)
    assert (verdicts.pve_ok[0], verdicts.betas_ok[0], verdicts.keypoints_ok[0]) == (True, False, True)
    assert verdicts.num_keypoints[0] == 44


def test_summary_counts_each_rule_and_the_passes():
    pve, betas, conf = _good(6)
    pve[0] = 0.1  # pve only
    betas[1, 0] = 4.0  # betas only
    conf[2, 2:] = 0.0  # keypoints only
    pve[3], betas[3, 0] = 0.1, 4.0  # two rules at once
    verdicts = apply_filters(pve, betas, conf)
    assert verdicts.summary() == {
        "total": 6,
        "rejected_pve": 2,
        "rejected_betas": 2,
        "rejected_keypoints": 1,
        "passed": 2,
    }
    np.testing.assert_array_equal(verdicts.passed, [False, False, False, False, True, True])


def test_columns_are_label_table_columns():
    verdicts = apply_filters(*_good(2))
    columns = verdicts.columns()
    assert set(columns) == {"num_keypoints", "pve_ok", "betas_ok", "keypoints_ok", "passed"}
    assert set(columns) <= set(LABEL_SCHEMA.names)
    assert all(len(column) == 2 for column in columns.values())


@pytest.mark.parametrize(
    ("name", "shape"),
    [("pve_max", (3, 1)), ("betas", (3, 9)), ("keypoint_conf", (3, 44, 3)), ("keypoint_conf", (2, 44))],
)
def test_shape_errors_name_the_argument(name, shape):
    inputs = dict(zip(("pve_max", "betas", "keypoint_conf"), _good(3), strict=True))
    inputs[name] = np.zeros(shape)
    with pytest.raises(ValueError, match=name):
        apply_filters(**inputs)
