"""The label-quality dashboard: one self-contained HTML page, round after round of the label table.

No server, no internet, no JavaScript: the charts are SVG written here, the gallery images are data
URIs, the style sheet is inline, so the file opens anywhere and can be archived with the table
version it describes. Per dataset and per committed round (label_table.round_versions):

- histograms of maxPVE, mean PVE, the keypoint reprojection error kp2d_err and max |β|;
- how many labels each filter rule rejected, and the share passing;
- how many labels each refinement round replaced (rows whose producing round changed from the round
  before, by sample_id) and by how much kp2d_err improved on them;
- where the truth is known (the synthetic world), the labels' 3D error against it
  (hsmr_data.truth_report.label_errors), and their joint-limit violations (Table 4's protocol);
- a gallery of the worst labels of the latest round (largest maxPVE, largest kp2d_err): the image
  crop with the dataset's keypoints beside the label's keypoints projected with its crop camera.

Elements carry stable ids and classes for tests and scrapers: every chart is an `svg.chart` with id
`{kind}-{dataset}[-{metric}]`, every bar a `rect.bar` with `data-round` and `data-value`, every
line a `path.line` with `data-series`, every gallery entry a `figure.gallery-item` with
`data-sample-id`. `summary` is the same content as plain numbers, for a Prefect artifact.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from itertools import pairwise, zip_longest
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from PIL import Image

from hsmr_data import label_table, layout
from hsmr_data.evaluate import SKEL_SEX, load_samples
from hsmr_data.records import PersonSample
from hsmr_data.synthetic.world import CROP_SIZE, crop_image, draw_keypoints
from hsmr_data.truth_report import label_errors
from hsmr_model import camera
from hsmr_model import metrics as M
from hsmr_model import skel_constants as C
from hsmr_model.model_files import BodyModelPaths, read_keypoint_regressor
from hsmr_model.regressor import VertexRegressor
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
ROUND_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")
VIOLATION_TOLERANCE_DEG = 10.0  # the bar chart shows Table 4's first column; the table shows all tolerances
DEFAULT_RELOAD_S = 5  # how often a live page reloads itself


@dataclass(frozen=True)
class DashboardConfig:
    table_uri: str
    dataset_dir: str | None = None  # shards for the gallery; its truth/ground_truth.parquet when present
    models_root: str = layout.DEFAULT.models
    truth_path: str | None = None  # defaults to dataset_dir/truth/ground_truth.parquet if that exists
    dataset: str = "synth"  # the name read_shards gives the samples of dataset_dir
    gallery_size: int = 8
    bins: int = 20
    run: str | None = None  # what is writing the page (a flow run's name), shown in its header
    # While a run is going: the page reloads itself every this many seconds. None: a finished page.
    live_seconds: int | None = None
    out_path: str = layout.DEFAULT.dashboard  # where `run` writes the page

    @property
    def truth(self) -> str | None:
        if self.truth_path:
            return self.truth_path
        default = Path(self.dataset_dir or "") / "truth" / "ground_truth.parquet"
        return str(default) if self.dataset_dir and default.exists() else None


@dataclass
class Dashboard:
    html: str
    summary: dict[str, Any]


# ------------------------------------------------------------------------------------ numbers
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


# ------------------------------------------------------------------------------------ SVG
_W, _H, _PAD_L, _PAD_B, _PAD_T = 390, 230, 44, 34, 44  # the legend has a row under the title


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return "–"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def _percent(share: float) -> str:
    return f"{100 * share:.1f}%" if math.isfinite(share) else "–"  # NaN: a round without labels of a dataset


def _colour(round_: int) -> str:
    return ROUND_COLOURS[round_ % len(ROUND_COLOURS)]


def _svg(chart_id: str, kind: str, title: str, body: list[str], legend: list[int]) -> str:
    """A chart frame: title, axes, the chart's marks and a legend of the rounds."""
    marks = [
        f'<svg class="chart {kind}" id="{html.escape(chart_id)}" xmlns="http://www.w3.org/2000/svg" '
        f'width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}" role="img" aria-label="{html.escape(title)}">',
        f'<text class="title" x="8" y="16">{html.escape(title)}</text>',
        f'<line class="axis" x1="{_PAD_L}" y1="{_H - _PAD_B}" x2="{_W - 8}" y2="{_H - _PAD_B}"/>',
        f'<line class="axis" x1="{_PAD_L}" y1="{_PAD_T}" x2="{_PAD_L}" y2="{_H - _PAD_B}"/>',
        *body,
    ]
    for i, round_ in enumerate(legend):
        x = _PAD_L + 70 * i
        marks.append(
            f'<rect class="legend" x="{x}" y="23" width="10" height="10" fill="{_colour(round_)}"/>'
            f'<text class="legend" x="{x + 14}" y="32">round {round_}</text>'
        )
    return "\n".join([*marks, "</svg>"])


def _y(value: float, top: float) -> float:
    return (_H - _PAD_B) - (value / top if top > 0 else 0.0) * (_H - _PAD_B - _PAD_T)


def _bar(x: float, width: float, value: float, top: float, round_: int, label: str) -> str:
    y = _y(value, top)
    return (
        f'<rect class="bar round-{round_}" data-round="{round_}" data-value="{value:.6g}" '
        f'x="{x:.2f}" y="{y:.2f}" width="{max(width, 0.5):.2f}" height="{(_H - _PAD_B) - y:.2f}" '
        f'fill="{_colour(round_)}"><title>{html.escape(label)}</title></rect>'
    )


def svg_histogram(
    chart_id: str, title: str, values_by_round: dict[int, np.ndarray], bins: int, log: bool = False
) -> str:
    """One histogram per round, bars of a bin side by side, on shared edges (logarithmic with `log`)."""
    edges, counts = histogram_counts(values_by_round, bins, log)
    top = max([int(c.max()) for c in counts.values() if c.size] + [1])
    slot = (_W - 8 - _PAD_L) / bins
    width = slot * 0.9 / max(len(counts), 1)
    body = []
    for b in range(bins):
        for i, (round_, count) in enumerate(counts.items()):
            label = f"round {round_}: {count[b]} in [{_fmt(edges[b])}, {_fmt(edges[b + 1])})"
            body.append(_bar(_PAD_L + b * slot + i * width, width, float(count[b]), top, round_, label))
    if log:
        title += " · log scale"
        # Decade ticks, so a reader sees where 1, 10, 100 cm fall on the logarithmic axis.
        span = np.log10(edges[-1]) - np.log10(edges[0])
        for decade in range(math.ceil(np.log10(edges[0])), math.floor(np.log10(edges[-1])) + 1):
            x = _PAD_L + (decade - np.log10(edges[0])) / span * (_W - 8 - _PAD_L)
            body.append(
                f'<line class="decade" x1="{x:.2f}" y1="{_H - _PAD_B}" x2="{x:.2f}" y2="{_H - _PAD_B + 4}"/>'
                f'<text class="tick decade" x="{x:.2f}" y="{_H - _PAD_B + 26}" text-anchor="middle">'
                f"{_fmt(10.0**decade)}</text>"
            )
    body += [
        f'<text class="tick" x="{_PAD_L}" y="{_H - _PAD_B + 14}">{_fmt(edges[0])}</text>',
        f'<text class="tick" x="{_W - 8}" y="{_H - _PAD_B + 14}" text-anchor="end">{_fmt(edges[-1])}</text>',
        f'<text class="tick" x="{_PAD_L - 4}" y="{_PAD_T + 4}" text-anchor="end">{top}</text>',
        f'<text class="tick" x="{_PAD_L - 4}" y="{_H - _PAD_B}" text-anchor="end">0</text>',
    ]
    return _svg(chart_id, "histogram", title, body, list(counts))


def svg_grouped_bars(
    chart_id: str, title: str, categories: list[str], values_by_round: dict[int, list[float]], top: float | None = None
) -> str:
    """Bars per category, one per round; `top` fixes the scale (1 for shares), else the largest value."""
    finite = [v for values in values_by_round.values() for v in values if math.isfinite(v)]
    top = top if top is not None else max(finite + [1e-12])
    slot = (_W - 8 - _PAD_L) / max(len(categories), 1)
    width = slot * 0.8 / max(len(values_by_round), 1)
    body = []
    for c, category in enumerate(categories):
        for i, (round_, values) in enumerate(values_by_round.items()):
            value = values[c] if math.isfinite(values[c]) else 0.0
            x = _PAD_L + c * slot + slot * 0.1 + i * width
            body.append(_bar(x, width, value, top, round_, f"round {round_}, {category}: {_fmt(values[c])}"))
        body.append(
            f'<text class="tick" x="{_PAD_L + (c + 0.5) * slot:.1f}" y="{_H - _PAD_B + 14}" '
            f'text-anchor="middle">{html.escape(category)}</text>'
        )
    body.append(f'<text class="tick" x="{_PAD_L - 4}" y="{_PAD_T + 4}" text-anchor="end">{_fmt(top)}</text>')
    return _svg(chart_id, "bars", title, body, list(values_by_round))


def svg_lines(chart_id: str, title: str, rounds: list[int], series: dict[str, list[float]]) -> str:
    """A line per series over the rounds (x), points marked; NaN points are skipped."""
    finite = [v for values in series.values() for v in values if math.isfinite(v)]
    top = max(finite + [1e-12]) * 1.1
    step = (_W - _PAD_L - 60) / max(len(rounds) - 1, 1)  # 30 px inside each end: room for the labels
    body = []
    for s, (name, values) in enumerate(series.items()):
        colour = ROUND_COLOURS[-1 - s]
        points = [
            (_PAD_L + 30 + i * step, _y(v, top), v, r)
            for i, (r, v) in enumerate(zip(rounds, values, strict=True))
            if math.isfinite(v)
        ]
        if not points:
            continue
        path = " ".join(f"{'M' if i == 0 else 'L'} {x:.2f} {y:.2f}" for i, (x, y, _, _) in enumerate(points))
        body.append(
            f'<path class="line" data-series="{html.escape(name)}" d="{path}" stroke="{colour}" '
            'fill="none" stroke-width="2"/>'
        )
        body += [
            f'<circle class="point" data-series="{html.escape(name)}" data-round="{r}" data-value="{v:.6g}" '
            f'cx="{x:.2f}" cy="{y:.2f}" r="4" fill="{colour}"><title>{html.escape(name)}, round {r}: '
            f"{_fmt(v)}</title></circle>"
            for x, y, v, r in points
        ]
        body.append(f'<text class="series" x="{_PAD_L + 110 * s}" y="32" fill="{colour}">{html.escape(name)}</text>')
    body += [
        f'<text class="tick" x="{_PAD_L + 30 + i * step:.1f}" y="{_H - _PAD_B + 14}" text-anchor="middle">'
        f"round {r}</text>"
        for i, r in enumerate(rounds)
    ]
    body.append(f'<text class="tick" x="{_PAD_L - 4}" y="{_PAD_T + 4}" text-anchor="end">{_fmt(top)}</text>')
    return _svg(chart_id, "lines", title, body, [])


# ------------------------------------------------------------------------------------ gallery
@dataclass
class GalleryModels:
    """What drawing a label needs: the SKEL layer and the keypoint regressor."""

    skel: SKELLayer
    keypoints: VertexRegressor

    @classmethod
    def load(cls, models_root: str) -> GalleryModels:
        paths = BodyModelPaths.from_root(models_root)
        regressor = VertexRegressor.from_sparse(read_keypoint_regressor(paths.keypoint_regressor).matrix)
        return cls(SKELLayer.from_file(paths.skel(SKEL_SEX)), regressor)


def label_keypoints_in_crop(skel: SKELLayer, regressor: VertexRegressor, rows: list[dict]) -> np.ndarray:
    """The labels' 44 keypoints projected with their crop cameras, in crop pixels with confidence 1: (N, 44, 3)."""
    q = torch.as_tensor([r["q"] for r in rows], dtype=torch.float32)
    betas = torch.as_tensor([r["betas"] for r in rows], dtype=torch.float32)
    trans = torch.as_tensor([r["trans"] for r in rows], dtype=torch.float32)
    with torch.no_grad():
        points = skel.keypoints(q, betas, None, regressor)
    pixels = (camera.project(points, trans).numpy() + 0.5) * CROP_SIZE
    return np.concatenate([pixels, np.ones((*pixels.shape[:2], 1))], axis=-1)


def gallery_tile(sample: PersonSample, label_keypoints: np.ndarray) -> np.ndarray:
    """The crop twice, side by side: the dataset's keypoints, then the label's projected ones."""
    image = np.asarray(Image.open(io.BytesIO(sample.image_jpeg)).convert("RGB"))
    side = float(sample.scale.max()) * 200.0
    crop = crop_image(image, sample.center, side)
    observed = sample.keypoints_2d.astype(np.float64).copy()
    observed[:, :2] = (observed[:, :2] - sample.center) * CROP_SIZE / side + CROP_SIZE / 2
    return np.concatenate([draw_keypoints(crop, observed), draw_keypoints(crop, label_keypoints)], axis=1)


def data_uri(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def worst_rows(labels: pa.Table, count: int) -> list[dict]:
    """Up to `count` labels, alternately the largest maxPVE and the largest kp2d_err, each once."""
    rows = labels.to_pylist()
    by_pve = sorted(rows, key=lambda r: -r["pve_max"])
    by_kp2d = sorted((r for r in rows if r["kp2d_err"] is not None), key=lambda r: -r["kp2d_err"])
    chosen: dict[str, dict] = {}
    for pair in zip_longest(by_pve, by_kp2d):
        for row in pair:
            if row is not None and len(chosen) < count:
                chosen.setdefault(row["sample_id"], row)
    return list(chosen.values())


_NO_IMAGES = '<p class="note">No images: give the dataset folder to see the worst labels.</p>'


def gallery_html(dataset: str, rows: list[dict], samples: dict[str, PersonSample], models: GalleryModels) -> str:
    rows = [r for r in rows if r["sample_id"] in samples]
    if not rows:
        return _NO_IMAGES
    projected = label_keypoints_in_crop(models.skel, models.keypoints, rows)
    figures = []
    for row, keypoints in zip(rows, projected, strict=True):
        failed = [rule.title for rule in RULES if not row[rule.column]]
        kp2d = "–" if row["kp2d_err"] is None else _fmt(row["kp2d_err"])
        caption = (
            f"<b>{html.escape(row['sample_id'])}</b><br>dataset {html.escape(row['dataset'])}, round {row['round']} "
            f"({html.escape(row['source'])})<br>maxPVE {row['pve_max'] * 100:.1f} cm, kp2d_err {kp2d}, "
            f"{'failed: ' + ', '.join(failed) if failed else 'passed'}"
        )
        figures.append(
            f'<figure class="gallery-item" data-sample-id="{html.escape(row["sample_id"])}">'
            f'<img src="{data_uri(gallery_tile(samples[row["sample_id"]], keypoints))}" '
            f'alt="crop of {html.escape(row["sample_id"])}" width="{2 * CROP_SIZE}" height="{CROP_SIZE}">'
            f"<figcaption>{caption}</figcaption></figure>"
        )
    return f'<div class="gallery" id="gallery-{_slug(dataset)}">' + "".join(figures) + "</div>"


# ------------------------------------------------------------------------------------ the page
def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "dataset"


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


def _signed(value: float, digits: str = ".3g") -> str:
    return f"{value:+{digits}}" if math.isfinite(value) else "–"


def _has_truth(summary: dict[str, Any]) -> bool:
    return any(t is not None for t in (summary.get("truth") or {}).values())


def _stats_table(summary: dict[str, Any]) -> str:
    truth = _has_truth(summary)  # the truth column only where a truth table exists (the synthetic world)
    head = (
        "<tr><th>round</th><th>labels</th><th>passed</th><th>share passed</th>"
        + "".join(f"<th>rejected: {rule.title}</th>" for rule in RULES)
        + "<th>median maxPVE (cm)</th><th>median kp2d_err</th><th>replaced</th><th>new</th>"
        "<th>median kp2d_err gain</th>" + ("<th>joint error vs truth (mm)</th>" if truth else "") + "</tr>"
    )
    rows = []
    for k, s in summary["rounds"].items():
        r = summary["replacements"].get(k, {})
        t = (summary.get("truth") or {}).get(k) or {}
        cells = [
            k, s["samples"], s["passed"], _percent(s["share_passed"]),
            s["rejected_pve_max"], s["rejected_betas"], s["rejected_keypoints"],
            _fmt(s["median_pve_max"]), _fmt(s["median_kp2d_err"]),
            r.get("replaced", "–"), r.get("inserted", "–"), _fmt(r.get("kp2d_err_improvement_median", math.nan)),
        ] + ([_fmt(t.get("joint_error_mm", math.nan))] if truth else [])  # fmt: skip
        rows.append(f'<tr class="round-row" data-round="{k}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f'<table class="stats">{head}{"".join(rows)}</table>'


def _change_table(summary: dict[str, Any]) -> str:
    """Round over round: what each round changed against the one before it."""
    if not summary["changes"]:
        return '<p class="note">One round so far: changes appear from the next round on.</p>'
    truth = _has_truth(summary)
    head = (
        "<tr><th>round</th><th>passed</th><th>share passed</th><th>median maxPVE (cm)</th>"
        "<th>median kp2d_err</th><th>median max |β|</th>"
        + ("<th>joint error vs truth (mm)</th>" if truth else "")
        + "</tr>"
    )
    rows = []
    for k, c in summary["changes"].items():
        cells = [
            k, _signed(c["passed"], ".0f"), _signed(100 * c["share_passed"], ".1f") + " pp",
            _signed(c["median_pve_max"]), _signed(c["median_kp2d_err"]), _signed(c["median_max_abs_beta"]),
        ] + ([_signed(c.get("joint_error_mm", math.nan))] if truth else [])  # fmt: skip
        rows.append(f'<tr class="change-row" data-round="{k}">' + "".join(f"<td>{x}</td>" for x in cells) + "</tr>")
    return f'<table class="changes">{head}{"".join(rows)}</table>'


def _violation_table(summary: dict[str, Any]) -> str:
    tolerances = [f"{t:g}" for t in M.VIOLATION_TOLERANCES_DEG]
    head = "<tr><th>round</th><th>part</th>" + "".join(f"<th>&gt;{t}°</th>" for t in tolerances) + "</tr>"
    rows = [
        f"<tr><td>{k}</td><td>{part.replace('_', ' ')}</td>"
        + "".join(f"<td>{_percent(shares[t])}</td>" for t in tolerances)
        + "</tr>"
        for k, by_part in summary["violations"].items()
        for part, shares in by_part.items()
    ]
    return f'<table class="violations">{head}{"".join(rows)}</table>'


def dataset_section(
    dataset: str,
    by_round: dict[int, pa.Table],
    summary: dict[str, Any],
    bins: int,
    gallery: str,
) -> str:
    slug = _slug(dataset)
    values = {k: measure_values(t) for k, t in by_round.items()}
    charts = [
        svg_histogram(
            f"hist-{slug}-{name}",
            f"{measure.title}{f' ({measure.unit})' if measure.unit else ''}",
            {k: v[name] for k, v in values.items()},
            bins,
            measure.log,
        )
        for name, measure in MEASURES.items()
    ]
    stats = summary["rounds"]
    charts.append(
        svg_grouped_bars(
            f"filters-{slug}",
            "rejected by each rule / passed (share of labels)",
            [rule.title for rule in RULES] + ["passed"],
            {
                k: [s[f"rejected_{rule.key}"] / max(s["samples"], 1) for rule in RULES] + [s["share_passed"]]
                for k, s in stats.items()
            },
            top=1.0,
        )
    )
    if summary["replacements"]:
        charts.append(
            svg_grouped_bars(
                f"replacements-{slug}",
                "labels replaced by the round, and new ones",
                ["replaced", "new"],
                {k: [float(r["replaced"]), float(r["inserted"])] for k, r in summary["replacements"].items()},
            )
        )
    charts.append(
        svg_grouped_bars(
            f"violations-{slug}",
            f"joint-limit violations > {VIOLATION_TOLERANCE_DEG:g}° (share)",
            [part.replace("_", " ") for part in M.LIMB_PARTS],
            {
                k: [v[part][f"{VIOLATION_TOLERANCE_DEG:g}"] for part in M.LIMB_PARTS]
                for k, v in summary["violations"].items()
            },
            top=1.0,
        )
    )
    truth = summary.get("truth")
    if _has_truth(summary):
        rounds = list(truth)
        charts.append(
            svg_lines(
                f"truth-{slug}",
                "label error vs the true body: mean joint error (mm)",
                rounds,
                {
                    "all labels": [(truth[k] or {}).get("joint_error_mm", math.nan) for k in rounds],
                    "passed": [(truth[k] or {}).get("joint_error_mm_passed", math.nan) for k in rounds],
                },
            )
        )
    return (
        f'<section class="dataset" id="dataset-{slug}"><h2>{html.escape(dataset)}</h2>'
        f"{_stats_table(summary)}"
        f"<h3>Change from the round before</h3>{_change_table(summary)}"
        f'<div class="charts">{"".join(charts)}</div>'
        f"<h3>Joint-limit violations of the labels</h3>{_violation_table(summary)}"
        f"<h3>Worst labels of the latest round</h3>"
        "<p class=\"note\">Left: the dataset's 2D keypoints. Right: the label's keypoints projected with its crop "
        "camera. Right side red, left side blue.</p>"
        f"{gallery}</section>"
    )


_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { font-size: 22px; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 4px; }
table { border-collapse: collapse; margin: 8px 0 16px; } th, td { border: 1px solid #ddd; padding: 3px 8px; }
th { background: #f3f3f3; font-weight: 600; } td { text-align: right; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
svg.chart { border: 1px solid #e3e3e3; background: #fcfcfc; }
svg .title { font-size: 13px; font-weight: 600; } svg .tick, svg .legend, svg .series { font-size: 11px; }
svg .axis { stroke: #888; }
.gallery { display: flex; flex-wrap: wrap; gap: 12px; }
.gallery-item { margin: 0; } .gallery-item figcaption { font-size: 12px; max-width: 512px; }
.note { color: #666; } .status { color: #444; font-size: 13px; }
"""


def render_page(config: DashboardConfig, sections: list[str], rounds: list[int], version: int, written: str) -> str:
    """The page; with `config.live_seconds` it reloads itself (a meta refresh: the page stays script-free)."""
    refresh = f'<meta http-equiv="refresh" content="{config.live_seconds}">' if config.live_seconds else ""
    state = (
        f"live: a run is writing this page, it reloads every {config.live_seconds} s"
        if config.live_seconds
        else "final: the run that wrote it has ended"
    )
    status = (
        f'<p class="status" id="status" data-version="{version}" data-live="{int(bool(config.live_seconds))}">'
        f"Table version {version}, written {html.escape(written)}"
        f"{f' by {html.escape(config.run)}' if config.run else ''} ({state}).</p>"
    )
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8">{refresh}'
        f"<title>Label quality: {html.escape(config.table_uri)}</title><style>{_STYLE}</style></head><body>"
        f'<h1 id="title">Label quality of <code>{html.escape(config.table_uri)}</code></h1>{status}'
        f'<p class="note" id="rounds">Rounds: {", ".join(map(str, rounds))}. Each round shows the table as it '
        "stood after that round's last commit.</p>" + "".join(sections) + "</body></html>\n"
    )


def build_dashboard(config: DashboardConfig) -> Dashboard:
    """The page and its summary from the label table (and the dataset and truth, when given)."""
    tables = rounds_of(config.table_uri)
    if not tables:
        raise ValueError(f"{config.table_uri} has no committed round")
    latest = tables[max(tables)]
    datasets = sorted(set(latest.column("dataset").to_pylist()))
    needs_models = config.dataset_dir is not None or config.truth is not None
    models = GalleryModels.load(config.models_root) if needs_models else None
    samples = load_samples(config.dataset_dir, config.dataset) if config.dataset_dir else {}

    sections, summaries = [], {}
    for dataset in datasets:
        by_round = {k: t.filter(pc.equal(t.column("dataset"), dataset)) for k, t in tables.items()}
        summary = dataset_summary(by_round, config.truth, models.skel if models else None)
        worst = worst_rows(by_round[max(by_round)], config.gallery_size)
        gallery = gallery_html(dataset, worst, samples, models) if models and samples else _NO_IMAGES
        summary["gallery"] = [r["sample_id"] for r in worst if r["sample_id"] in samples]
        sections.append(dataset_section(dataset, by_round, summary, config.bins, gallery))
        summaries[dataset] = summary
    version = label_table.history(config.table_uri)[-1]["version"]
    written = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    summary = {
        "table_uri": config.table_uri,
        "table_version": version,
        "written": written,
        "rounds": list(tables),
        "datasets": summaries,
    }
    return Dashboard(render_page(config, sections, list(tables), version, written), summary)


def write_dashboard(config: DashboardConfig, out_path: str | Path) -> tuple[Path, dict[str, Any]]:
    """Build the page and write it atomically (a reader never sees half a page)."""
    dashboard = build_dashboard(config)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(dashboard.html, encoding="utf-8")
    tmp.replace(out)
    return out, dashboard.summary


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary as markdown: one row per dataset and round."""
    lines = [
        f"# Label quality: `{summary['table_uri']}`",
        "",
        "| dataset | round | labels | passed | rejected maxPVE | rejected β | rejected keypoints | "
        "median maxPVE (cm) | median kp2d_err | replaced | median kp2d_err gain | joint error vs truth (mm) |",
        "| --- |" + " --- |" * 11,
    ]
    for dataset, s in summary["datasets"].items():
        for k, r in s["rounds"].items():
            rep = s["replacements"].get(k, {})
            truth = (s.get("truth") or {}).get(k) or {}
            cells = [
                dataset, k, r["samples"], f"{r['passed']} ({_percent(r['share_passed'])})",
                r["rejected_pve_max"], r["rejected_betas"], r["rejected_keypoints"],
                _fmt(r["median_pve_max"]), _fmt(r["median_kp2d_err"]), rep.get("replaced", "–"),
                _fmt(rep.get("kp2d_err_improvement_median", math.nan)), _fmt(truth.get("joint_error_mm", math.nan)),
            ]  # fmt: skip
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def page_next_to(table_uri: str) -> Path | None:
    """Where a flow writes the dashboard of a local table by default: `{table}-dashboard.html` beside it
    (like the round statistics in `{table}-rounds/`); None for a table at a remote URI."""
    if "://" in table_uri and not table_uri.startswith("file://"):
        return None
    return Path(table_uri.removeprefix("file://").rstrip("/") + "-dashboard.html")


class LiveDashboard:
    """The page rewritten while a run goes: after each commit (`update`), at most every `min_interval_s`
    so that many small chunks do not spend their time on pages, and once more at the end (`finish`),
    without the reload. Every write is atomic (`write_dashboard`), so an open page never reads half a file.
    """

    def __init__(self, config: DashboardConfig, out_path: str | Path, min_interval_s: float = 10.0):
        self.config, self.out_path, self.min_interval_s = config, Path(out_path), min_interval_s
        self._last = -math.inf

    def update(self, force: bool = False) -> bool:
        """Rewrite the live page unless one was written less than `min_interval_s` ago; whether it wrote."""
        if not force and time.monotonic() - self._last < self.min_interval_s:
            return False
        live = replace(self.config, live_seconds=self.config.live_seconds or DEFAULT_RELOAD_S)
        write_dashboard(live, self.out_path)
        self._last = time.monotonic()
        return True

    def finish(self) -> tuple[Path, dict[str, Any]]:
        """The final page: no reload, the table as the run left it."""
        return write_dashboard(replace(self.config, live_seconds=None), self.out_path)


DEMO = DashboardConfig(layout.DEFAULT.table(), layout.DEFAULT.dataset())  # the demo's table and its dataset
WRITER_FIELDS = ("run", "live_seconds")  # set by the code that writes a page, not options of the step


def run(config: DashboardConfig) -> tuple[Path, dict[str, Any]]:
    """Write the page to `config.out_path`: the front door of `hsmr dashboard` and the label-dashboard flow.
    An empty `dataset_dir` means none (no gallery, no truth)."""
    return write_dashboard(replace(config, dataset_dir=config.dataset_dir or None), config.out_path)
