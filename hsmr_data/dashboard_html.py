"""The dashboard page as HTML: per dataset a section of tables and charts, the gallery of the worst
labels (the crop with the dataset's keypoints beside the label's projected ones, as data URIs) and
the page around them (inline style, a meta refresh while a run writes it).
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from itertools import zip_longest
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from hsmr_data.dashboard_stats import MEASURES, RULES, VIOLATION_TOLERANCE_DEG, measure_values
from hsmr_data.geometry import crop_image, crop_pixels, crop_side, draw_keypoints, normalised_keypoints
from hsmr_data.records import PersonSample
from hsmr_data.svg_charts import format_share, format_value, svg_grouped_bars, svg_histogram, svg_lines
from hsmr_model import camera
from hsmr_model import metrics as M
from hsmr_model.body_models import BodyModels
from hsmr_model.camera import CROP_SIZE
from hsmr_model.regressor import VertexRegressor
from hsmr_model.skel_layer import SKELLayer


def label_keypoints_in_crop(skel: SKELLayer, regressor: VertexRegressor, rows: list[dict]) -> np.ndarray:
    """The labels' 44 keypoints projected with their crop cameras, in crop pixels with confidence 1: (N, 44, 3)."""
    q = torch.as_tensor([r["q"] for r in rows], dtype=torch.float32)
    betas = torch.as_tensor([r["betas"] for r in rows], dtype=torch.float32)
    trans = torch.as_tensor([r["trans"] for r in rows], dtype=torch.float32)
    with torch.no_grad():
        points = skel.keypoints(q, betas, None, regressor)
    pixels = crop_pixels(camera.project(points, trans).numpy())
    return np.concatenate([pixels, np.ones((*pixels.shape[:2], 1))], axis=-1)


def gallery_tile(sample: PersonSample, label_keypoints: np.ndarray) -> np.ndarray:
    """The crop twice, side by side: the dataset's keypoints, then the label's projected ones."""
    side = crop_side(sample.scale)
    with Image.open(io.BytesIO(sample.image_jpeg)) as image:
        crop = crop_image(image, sample.center, side)
    observed = crop_pixels(normalised_keypoints(sample.keypoints_2d, sample.center, side))
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


NO_IMAGES = '<p class="note">No images: give the dataset folder to see the worst labels.</p>'


def gallery_html(dataset: str, rows: list[dict], samples: dict[str, PersonSample], models: BodyModels) -> str:
    rows = [r for r in rows if r["sample_id"] in samples]
    if not rows:
        return NO_IMAGES
    projected = label_keypoints_in_crop(models.skel, models.keypoints, rows)
    figures = []
    for row, keypoints in zip(rows, projected, strict=True):
        failed = [rule.title for rule in RULES if not row[rule.column]]
        kp2d = "–" if row["kp2d_err"] is None else format_value(row["kp2d_err"])
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


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "dataset"


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
            k, s["samples"], s["passed"], format_share(s["share_passed"]),
            s["rejected_pve_max"], s["rejected_betas"], s["rejected_keypoints"],
            format_value(s["median_pve_max"]), format_value(s["median_kp2d_err"]),
            r.get("replaced", "–"), r.get("inserted", "–"),
            format_value(r.get("kp2d_err_improvement_median", math.nan)),
        ] + ([format_value(t.get("joint_error_mm", math.nan))] if truth else [])  # fmt: skip
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
        + "".join(f"<td>{format_share(shares[t])}</td>" for t in tolerances)
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


def render_page(
    table_uri: str,
    run: str | None,
    live_seconds: int | None,
    sections: list[str],
    rounds: list[int],
    version: int,
    written: str,
) -> str:
    """The page of `table_uri` written by `run`; with `live_seconds` it reloads itself that often (a meta
    refresh: the page stays script-free)."""
    refresh = f'<meta http-equiv="refresh" content="{live_seconds}">' if live_seconds else ""
    state = (
        f"live: a run is writing this page, it reloads every {live_seconds} s"
        if live_seconds
        else "final: the run that wrote it has ended"
    )
    status = (
        f'<p class="status" id="status" data-version="{version}" data-live="{int(bool(live_seconds))}">'
        f"Table version {version}, written {html.escape(written)}"
        f"{f' by {html.escape(run)}' if run else ''} ({state}).</p>"
    )
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8">{refresh}'
        f"<title>Label quality: {html.escape(table_uri)}</title><style>{_STYLE}</style></head><body>"
        f'<h1 id="title">Label quality of <code>{html.escape(table_uri)}</code></h1>{status}'
        f'<p class="note" id="rounds">Rounds: {", ".join(map(str, rounds))}. Each round shows the table as it '
        "stood after that round's last commit.</p>" + "".join(sections) + "</body></html>\n"
    )
