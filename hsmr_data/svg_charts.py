"""The dashboard's charts as inline SVG (no JavaScript, no external files): histograms, grouped bars
and lines, one colour per round. Every chart is an `svg.chart` with its id, every bar a `rect.bar`
with `data-round` and `data-value`, every line a `path.line` with `data-series`.
"""

from __future__ import annotations

import html
import math

import numpy as np

from hsmr_data.dashboard_stats import histogram_counts

ROUND_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")


_W, _H, _PAD_L, _PAD_B, _PAD_T = 390, 230, 44, 34, 44  # the legend has a row under the title


def format_value(value: float) -> str:
    if not math.isfinite(value):
        return "–"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def format_share(share: float) -> str:
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
            label = f"round {round_}: {count[b]} in [{format_value(edges[b])}, {format_value(edges[b + 1])})"
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
                f"{format_value(10.0**decade)}</text>"
            )
    body += [
        f'<text class="tick" x="{_PAD_L}" y="{_H - _PAD_B + 14}">{format_value(edges[0])}</text>',
        f'<text class="tick" x="{_W - 8}" y="{_H - _PAD_B + 14}" text-anchor="end">{format_value(edges[-1])}</text>',
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
            body.append(_bar(x, width, value, top, round_, f"round {round_}, {category}: {format_value(values[c])}"))
        body.append(
            f'<text class="tick" x="{_PAD_L + (c + 0.5) * slot:.1f}" y="{_H - _PAD_B + 14}" '
            f'text-anchor="middle">{html.escape(category)}</text>'
        )
    body.append(f'<text class="tick" x="{_PAD_L - 4}" y="{_PAD_T + 4}" text-anchor="end">{format_value(top)}</text>')
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
            f"{format_value(v)}</title></circle>"
            for x, y, v, r in points
        ]
        body.append(f'<text class="series" x="{_PAD_L + 110 * s}" y="32" fill="{colour}">{html.escape(name)}</text>')
    body += [
        f'<text class="tick" x="{_PAD_L + 30 + i * step:.1f}" y="{_H - _PAD_B + 14}" text-anchor="middle">'
        f"round {r}</text>"
        for i, r in enumerate(rounds)
    ]
    body.append(f'<text class="tick" x="{_PAD_L - 4}" y="{_PAD_T + 4}" text-anchor="end">{format_value(top)}</text>')
    return _svg(chart_id, "lines", title, body, [])
