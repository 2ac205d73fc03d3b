"""The label-quality dashboard: one self-contained HTML page, round after round of the label table.

No server, no internet, no JavaScript: the charts are inline SVG (`svg_charts`), the gallery
images are data URIs, the style sheet is inline (`dashboard_html`), so the file opens anywhere and
can be archived with the table version it describes. Per dataset and per committed round (label_table.round_versions):

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
`data-sample-id`. `summary` is the same content as plain numbers (`dashboard_stats`), for a Prefect
artifact. This module holds the step's entry points: build, write, and the page kept live during a run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from hsmr_data import label_table, layout
from hsmr_data.dashboard_html import NO_IMAGES, dataset_section, gallery_html, render_page, worst_rows
from hsmr_data.dashboard_stats import dataset_summary, rounds_of
from hsmr_data.evaluate import load_samples
from hsmr_data.svg_charts import format_share, format_value
from hsmr_model.body_models import BodyModels
from hsmr_model.model_files import BodyModelPaths

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


def build_dashboard(config: DashboardConfig) -> Dashboard:
    """The page and its summary from the label table (and the dataset and truth, when given)."""
    tables = rounds_of(config.table_uri)
    if not tables:
        raise ValueError(f"{config.table_uri} has no committed round")
    latest = tables[max(tables)]
    datasets = sorted(set(latest.column("dataset").to_pylist()))
    needs_models = config.dataset_dir is not None or config.truth is not None
    models = BodyModels.load(BodyModelPaths.from_root(config.models_root)) if needs_models else None
    samples = load_samples(config.dataset_dir, config.dataset) if config.dataset_dir else {}

    sections, summaries = [], {}
    for dataset in datasets:
        by_round = {k: t.filter(pc.equal(t.column("dataset"), dataset)) for k, t in tables.items()}
        summary = dataset_summary(by_round, config.truth, models.skel if models else None)
        worst = worst_rows(by_round[max(by_round)], config.gallery_size)
        gallery = gallery_html(dataset, worst, samples, models) if models and samples else NO_IMAGES
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
    page = render_page(config.table_uri, config.run, config.live_seconds, sections, list(tables), version, written)
    return Dashboard(page, summary)


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
                dataset, k, r["samples"], f"{r['passed']} ({format_share(r['share_passed'])})",
                r["rejected_pve_max"], r["rejected_betas"], r["rejected_keypoints"],
                format_value(r["median_pve_max"]), format_value(r["median_kp2d_err"]), rep.get("replaced", "–"),
                format_value(rep.get("kp2d_err_improvement_median", math.nan)),
                format_value(truth.get("joint_error_mm", math.nan)),
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
