"""The numbers of the label dashboard, per dataset and round of the label table: counts per filter
rule, medians and histograms of the label measures, what each round replaced, joint-limit violations
(Table 4's protocol) and, where the truth is known, the labels' 3D error against it. JSON-able dicts;
`hsmr_data.svg_charts` draws them and `hsmr_data.dashboard_html` lays them out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hsmr_data import label_table
from hsmr_data.truth_report import label_errors
from hsmr_model import metrics as M
from hsmr_model import skel_constants as C
from hsmr_model.skel_layer import SKELLayer


@dataclass(frozen=True)
class Measure:
    """A histogrammed label measure: its title, display unit, and whether its bins are logarithmic."""

    title: str
    unit: str
    log: bool = False


# Histogrammed label measures (measure_values keys). Log bins where the values span decades: maxPVE runs
# from 1.5 cm (a good fit) to 1.7 m (a gross failure), and a camera placed behind the body gives
# reprojection errors of 1e12 next to typical ones of 1e-4; linear bins would put nearly all in one.
MEASURES: dict[str, Measure] = {
    "pve_max": Measure("maxPVE", "cm", log=True),
    "pve_mean": Measure("mean PVE", "cm", log=True),
    "kp2d_err": Measure("keypoint reprojection error", "crop units²", log=True),
    "max_abs_beta": Measure("max |β|", ""),
}


@dataclass(frozen=True)
class Rule:
    """A filter rule: its verdict column, its key in the summary (rejected_{key}) and its title."""

    column: str
    key: str
    title: str


RULES = (
    Rule("pve_ok", "pve_max", "maxPVE"),
    Rule("betas_ok", "betas", "|β|"),
    Rule("keypoints_ok", "keypoints", "keypoints"),
)


VIOLATION_TOLERANCE_DEG = 10.0  # the bar chart shows Table 4's first column; the table shows all tolerances


def known_kp2d_err(labels: pa.Table) -> np.ndarray:
    """The labels' kp2d_err where it is known (null, stored for an unknown error, is left out)."""
    kp2d = np.asarray(labels.column("kp2d_err").to_numpy(zero_copy_only=False), np.float64)
    return kp2d[np.isfinite(kp2d)]


def measure_values(labels: pa.Table) -> dict[str, np.ndarray]:
    """The histogrammed measures of every label, in display units."""
    betas = np.asarray(labels.column("betas").combine_chunks().flatten().to_numpy(zero_copy_only=False))
    kp2d = known_kp2d_err(labels)
    return {
        "pve_max": np.asarray(labels.column("pve_max").to_numpy(), np.float64) * 100,
        "pve_mean": np.asarray(labels.column("pve_mean").to_numpy(), np.float64) * 100,
        "kp2d_err": kp2d,
        "max_abs_beta": np.abs(betas.reshape(labels.num_rows, -1)).max(1) if labels.num_rows else np.zeros(0),
    }


def label_stats(labels: pa.Table) -> dict[str, Any]:
    """Counts per filter rule and medians of the measures of one round's labels."""
    count = labels.num_rows
    stats: dict[str, Any] = {
        "samples": count,
        "passed": int(pc.sum(labels.column("passed")).as_py() or 0),
        **{f"rejected_{rule.key}": int(count - (pc.sum(labels.column(rule.column)).as_py() or 0)) for rule in RULES},
    }
    stats["share_passed"] = stats["passed"] / count if count else math.nan
    values = measure_values(labels)
    for name in ("pve_max", "pve_mean", "kp2d_err", "max_abs_beta"):
        stats[f"median_{name}"] = float(np.median(values[name])) if values[name].size else math.nan
    return stats


def replacement_stats(previous: pa.Table, current: pa.Table) -> dict[str, Any]:
    """What one round changed relative to the round before: labels replaced (same sample id, another
    producing round), labels new, and the kp2d_err improvement (old − new) of the replaced ones."""
    before = {r["sample_id"]: r for r in previous.select(["sample_id", "round", "kp2d_err"]).to_pylist()}
    replaced, improvement, inserted = 0, [], 0
    for row in current.select(["sample_id", "round", "kp2d_err"]).to_pylist():
        old = before.get(row["sample_id"])
        if old is None:
            inserted += 1
        elif old["round"] != row["round"]:
            replaced += 1
            if old["kp2d_err"] is not None and row["kp2d_err"] is not None:
                improvement.append(old["kp2d_err"] - row["kp2d_err"])
    gains = np.array(improvement, np.float64)
    return {
        "replaced": replaced,
        "inserted": inserted,
        "kp2d_err_improvement_mean": float(gains.mean()) if gains.size else math.nan,
        "kp2d_err_improvement_median": float(np.median(gains)) if gains.size else math.nan,
    }


def violation_stats(labels: pa.Table) -> dict[str, dict[str, float]]:
    """Table 4 shares of the labels' poses: part → {tolerance: share with violation > 0}."""
    q = np.asarray(labels.column("q").combine_chunks().flatten().to_numpy(), np.float64).reshape(-1, C.NUM_DOFS)
    shares = M.violation_shares(lambda t: M.skel_violations(q, t))
    return {part: {f"{t:g}": share for t, share in by_tol.items()} for part, by_tol in shares.items()}


def truth_stats(labels: pa.Table, truth_path: str, skel: SKELLayer) -> dict[str, float] | None:
    """Mean 3D error of the labels against the true bodies, or None when no label has a known truth."""
    known = set(pq.read_table(truth_path, columns=["sample_id"]).column("sample_id").to_pylist())
    labels = labels.filter(pc.is_in(labels.column("sample_id"), pa.array(sorted(known), pa.string())))
    if labels.num_rows == 0:
        return None
    errors = label_errors(labels, truth_path, skel)
    passed = errors.passed.astype(bool)
    return {
        "samples": len(errors.sample_id),
        "joint_error_mm": float(errors.joint_error_mm.mean()),
        "joint_error_mm_passed": float(errors.joint_error_mm[passed].mean()) if passed.any() else math.nan,
        "q_error_deg": float(errors.q_error_deg.mean()),
    }


def histogram_counts(
    values_by_round: dict[int, np.ndarray], bins: int, log: bool = False
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Bin edges shared by the rounds (the pooled range), and each round's counts.

    `log`: edges evenly spaced in log10 over the positive values; values at or below 0 (an exact fit)
    are counted in the first bin, so no label drops out of the chart.
    """
    pooled = np.concatenate([v for v in values_by_round.values() if v.size] or [np.zeros(1)])
    if log:
        positive = pooled[pooled > 0]
        low, high = (np.log10(positive.min()), np.log10(positive.max())) if positive.size else (0.0, 0.0)
        edges = np.logspace(low, high if high > low else low + 1.0, bins + 1)
        clipped = {k: np.clip(v, edges[0], edges[-1]) for k, v in values_by_round.items()}
        return edges, {k: np.histogram(v, edges)[0] for k, v in clipped.items()}
    low, high = float(pooled.min()), float(pooled.max())
    edges = np.linspace(low, high if high > low else low + 1.0, bins + 1)
    return edges, {k: np.histogram(v, edges)[0] for k, v in values_by_round.items()}


def rounds_of(table_uri: str) -> dict[int, pa.Table]:
    """The label table as it stood after each committed round, oldest first."""
    return {k: label_table.read_labels(table_uri, round=k) for k in sorted(label_table.round_versions(table_uri))}


def dataset_summary(by_round: dict[int, pa.Table], truth: str | None, skel: SKELLayer | None) -> dict[str, Any]:
    """Every number the page shows for one dataset, by round (JSON-able)."""
    summary: dict[str, Any] = {
        "rounds": {k: label_stats(t) for k, t in by_round.items()},
        "replacements": {b: replacement_stats(by_round[a], by_round[b]) for a, b in pairwise(by_round)},
        "violations": {k: violation_stats(t) for k, t in by_round.items()},
    }
    if truth is not None and skel is not None:
        summary["truth"] = {k: truth_stats(t, truth, skel) for k, t in by_round.items()}
    summary["changes"] = {b: round_change(summary, a, b) for a, b in pairwise(by_round)}
    return summary


def round_change(summary: dict[str, Any], before: int, after: int) -> dict[str, float]:
    """Round `after` minus round `before`: labels passing, their share, the medians, the error vs the truth."""
    old, new = summary["rounds"][before], summary["rounds"][after]
    change = {
        "passed": float(new["passed"] - old["passed"]),
        "share_passed": new["share_passed"] - old["share_passed"],
        **{f"median_{m}": new[f"median_{m}"] - old[f"median_{m}"] for m in ("pve_max", "kp2d_err", "max_abs_beta")},
    }
    truth = summary.get("truth") or {}
    if truth.get(before) and truth.get(after):
        change["joint_error_mm"] = truth[after]["joint_error_mm"] - truth[before]["joint_error_mm"]
    return change
