"""Learning curves of training runs as a PNG: one panel per loss term, one line per run.

Drawn with PIL alone (no plotting library is a dependency). Each run's `metrics.jsonl` (the
Trainer's log) gives the points; a panel's y axis spans what its runs reached, so a term that grows
shows as a rising line.

    hsmr curves --run paper=storage/runs/a --run cpu=storage/runs/b --out curves.png
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

TERMS = ("loss", "kp3d", "kp2d", "body_pose", "orientation", "betas")
COLOURS = ((214, 39, 40), (31, 119, 180), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207))
PANEL = (420, 260)  # width, height in pixels
MARGIN = (56, 28, 14, 34)  # left, top, right, bottom


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl, in step order."""
    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return sorted(records, key=lambda record: record["step"])


def _ticks(low: float, high: float, count: int = 4) -> list[float]:
    return list(np.linspace(low, high, count + 1))


def _panel(draw: ImageDraw.ImageDraw, origin: tuple[int, int], term: str, runs: dict[str, list[dict]]) -> None:
    left, top = origin
    x0, y0 = left + MARGIN[0], top + MARGIN[1]
    x1, y1 = left + PANEL[0] - MARGIN[2], top + PANEL[1] - MARGIN[3]
    draw.text((left + MARGIN[0], top + 6), f"{term} (per batch)", fill=(0, 0, 0))
    draw.rectangle([x0, y0, x1, y1], outline=(120, 120, 120))
    series = {name: [(r["step"], r[term]) for r in records if term in r] for name, records in runs.items()}
    points = [p for values in series.values() for p in values]
    if not points:
        draw.text((x0 + 8, y0 + 8), "not logged", fill=(120, 120, 120))
        return
    steps, values = np.array([p[0] for p in points], float), np.array([p[1] for p in points], float)
    step_max = max(steps.max(), 1.0)
    low, high = float(values.min()), float(values.max())
    high = high if high > low else low + 1.0
    low, high = low - 0.05 * (high - low), high + 0.05 * (high - low)

    def to_pixel(step: float, value: float) -> tuple[float, float]:
        return x0 + (x1 - x0) * step / step_max, y1 - (y1 - y0) * (value - low) / (high - low)

    for value in _ticks(low, high):
        _, y = to_pixel(0, value)
        draw.line([x0 - 4, y, x0, y], fill=(120, 120, 120))
        draw.text((left + 4, y - 6), f"{value:.3g}", fill=(60, 60, 60))
    for step in _ticks(0, step_max):
        x, _ = to_pixel(step, low)
        draw.line([x, y1, x, y1 + 4], fill=(120, 120, 120))
        draw.text((x - 10, y1 + 6), f"{step:.0f}", fill=(60, 60, 60))
    for colour, values in zip(COLOURS, series.values(), strict=False):
        if len(values) > 1:
            draw.line([to_pixel(s, v) for s, v in values], fill=colour, width=2)


def plot_curves(runs: dict[str, str | Path], out: str | Path, terms: tuple[str, ...] = TERMS) -> Path:
    """One PNG of `terms` (2 panels a row) for the runs {label: metrics.jsonl or run folder}; the x axis is the step."""
    if not runs:
        raise ValueError("no run to plot")
    if len(runs) > len(COLOURS):
        raise ValueError(f"at most {len(COLOURS)} runs in one plot, got {len(runs)}")
    records = {}
    for name, path in runs.items():
        path = Path(path)
        records[name] = read_metrics(path / "metrics.jsonl" if path.is_dir() else path)
    columns, rows = 2, -(-len(terms) // 2)
    legend_height = 22 * len(runs) + 10
    image = Image.new("RGB", (columns * PANEL[0], rows * PANEL[1] + legend_height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for i, term in enumerate(terms):
        _panel(draw, ((i % columns) * PANEL[0], (i // columns) * PANEL[1]), term, records)
    for i, (colour, name) in enumerate(zip(COLOURS, records, strict=False)):
        y = rows * PANEL[1] + 6 + 22 * i
        draw.line([MARGIN[0], y + 7, MARGIN[0] + 30, y + 7], fill=colour, width=3)
        draw.text((MARGIN[0] + 40, y), name, fill=(0, 0, 0))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    return out
