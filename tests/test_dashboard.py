"""The evaluation report and the label dashboard on a tiny synthetic world with a two-round label table.

Round 0 holds the true labels of six people, three of them spoilt (a knee bent backwards, a shape out
of range, a label far from its SMPL mesh); round 1 replaces those three with the truth. The page is
then opened in real headless Chromium: its DOM must hold the charts with bars of both rounds, and a
screenshot must show something.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from hsmr_data import dashboard as D
from hsmr_data import dashboard_stats, label_table, svg_charts
from hsmr_data import evaluate as E
from hsmr_data.cli import main
from hsmr_data.synthetic.world import SynthConfig, generate_dataset
from hsmr_data.truth_report import truth_label_rows

PEOPLE = 6
SPOILT = {0: "knee", 1: "betas", 2: "pve"}  # row index → what round 0 gets wrong


@pytest.fixture(scope="module")
def world(model_paths, tmp_path_factory):
    out = tmp_path_factory.mktemp("dashboard-world")
    generate_dataset(model_paths, out / "synth", SynthConfig(count=PEOPLE, batch_size=PEOPLE))
    truth = {row["sample_id"]: row for row in pq.read_table(out / "synth/truth/ground_truth.parquet").to_pylist()}
    ids = sorted(truth)
    uri = str(out / "labels")

    round0 = truth_label_rows(truth, ids, "synth/000000")
    round0["kp2d_err"] = np.full(PEOPLE, 0.01)
    for row, fault in SPOILT.items():
        round0["kp2d_err"][row] = 0.05
        if fault == "knee":
            round0["q"][row, 6] = np.radians(-25.0)  # right knee 25° backwards
        elif fault == "betas":
            round0["betas"][row, 0] = 3.5
            round0["betas_ok"][row] = round0["passed"][row] = False
        else:
            round0["pve_max"][row] = 0.08
            round0["q"][row, 29] += 0.5  # the right shoulder off by 29°
            round0["pve_ok"][row] = round0["passed"][row] = False
    label_table.commit_chunk(uri, round0, "convert/synth/000000")

    fixed = [ids[row] for row in SPOILT]
    round1 = truth_label_rows(truth, fixed, "skelify/1")
    round1["kp2d_err"] = np.full(len(fixed), 0.01)
    label_table.commit_round(uri, round1, 1)
    return {"dataset_dir": str(out / "synth"), "table": uri, "ids": ids, "truth": truth, "models": model_paths}


@pytest.fixture(scope="module")
def models_root(world):
    return str(world["models"].smpl.parent.parent)


@pytest.fixture(scope="module")
def page(world, models_root, tmp_path_factory):
    config = D.DashboardConfig(world["table"], world["dataset_dir"], models_root, gallery_size=4)
    path, summary = D.write_dashboard(config, tmp_path_factory.mktemp("page") / "dashboard.html")
    return path, summary


# --------------------------------------------------------------------------------- evaluation
def test_evaluation_scores_each_source_against_the_truth(world, models_root, tmp_path):
    # A network that predicts the truth, its camera left to the fit as for the pseudo-GT.
    ids, truth = world["ids"], world["truth"]
    predictions = tmp_path / "predictions.parquet"
    pq.write_table(
        pa.table(
            {
                "sample_id": ids,
                "step": [7] * len(ids),
                "q": [truth[i]["q"] for i in ids],
                "betas": [truth[i]["betas"] for i in ids],
                "cam_t": [[0.0, 0.0, 30.0]] * len(ids),
            }
        ),
        predictions,
    )
    config = E.EvalConfig(world["dataset_dir"], world["table"], models_root, predictions_path=str(predictions))
    report = E.evaluate(config)
    split = "normal" if report["samples"]["normal"] else "hard"
    assert sum(report["samples"].values()) == PEOPLE
    sources = report["sources"]
    assert list(sources) == ["smpl_pseudo_gt", "smpl_skel_fit", "refined_labels", "constant", "network"]

    refined = sources["refined_labels"]["splits"][split]
    assert refined["mpjpe_mm"] < 0.1 and refined["pa_mpvpe_mm"] < 0.1  # round 1 holds the truth everywhere
    assert refined["pck@0.05"] == 1.0  # the true crop camera projects onto the true keypoints
    network = sources["network"]["splits"][split]
    assert network["mpjpe_mm"] < 0.1 and network["pck@0.1"] > 0.95  # refitted camera, noisy keypoints

    fit = {s: sources["smpl_skel_fit"]["splits"][s] for s in E.SPLITS if report["samples"][s]}
    knee_share = sum(s["violations"]["right_knee"]["20"] * s["samples"] for s in fit.values()) / PEOPLE
    assert knee_share == pytest.approx(1 / PEOPLE)  # the knee 25° backwards, > 20° but not > 30°
    assert all(s["violations"]["right_knee"]["30"] == 0 for s in fit.values())
    assert sum(s["mpjpe_mm"] * s["samples"] for s in fit.values()) > 1.0
    assert sources["smpl_pseudo_gt"]["splits"][split]["mpjpe_mm"] > 1.0  # SMPL is not the SKEL body

    json_path, md_path = E.write_report(report, tmp_path / "report")
    markdown = md_path.read_text()
    for heading in ("Table 1", "Table 2", "Table 3", "Table 4", "network (step 7)", "refined labels (round 1)"):
        assert heading in markdown
    assert json_path.exists()


# --------------------------------------------------------------------------------- dashboard
def test_summary_counts_rules_replacements_truth_and_violations(page, world):
    _, summary = page
    assert summary["rounds"] == [0, 1]
    synth = summary["datasets"]["synth"]
    first, second = synth["rounds"][0], synth["rounds"][1]
    assert (first["samples"], first["passed"], first["rejected_betas"], first["rejected_pve_max"]) == (6, 4, 1, 1)
    assert (second["passed"], second["rejected_betas"], second["rejected_pve_max"]) == (6, 0, 0)
    replaced = synth["replacements"][1]
    assert (replaced["replaced"], replaced["inserted"]) == (3, 0)
    assert replaced["kp2d_err_improvement_median"] == pytest.approx(0.04)
    truth = synth["truth"]
    assert truth[1]["joint_error_mm"] < 0.1 < truth[0]["joint_error_mm"]
    assert synth["violations"][0]["right_knee"]["20"] == pytest.approx(1 / 6)
    assert synth["violations"][1]["right_knee"]["10"] == 0.0
    assert len(synth["gallery"]) == 4
    assert "| synth | 1 | 6 | 6 (100.0%) |" in D.summary_markdown(summary)


def test_log_histograms_keep_every_label_and_span_the_decades():
    values = {0: np.array([0.0, 1.5, 2.0, 30.0, 174.0]), 1: np.array([1.6, 1.7])}
    edges, counts = dashboard_stats.histogram_counts(values, bins=10, log=True)
    assert edges[0] == pytest.approx(1.5) and edges[-1] == pytest.approx(174.0)
    assert np.allclose(np.diff(np.log10(edges)), np.log10(174.0 / 1.5) / 10)  # even in log10
    assert counts[0].sum() == 5 and counts[1].sum() == 2  # the exact fit (0) counts in the first bin
    assert counts[0][0] == 3  # 0 (clipped up), 1.5 and 2.0: the first bin ends at 1.5·(174/1.5)^0.1 = 2.4
    chart = svg_charts.svg_histogram("hist-x", "maxPVE (cm)", values, 10, log=True)
    assert "log scale" in chart and chart.count('class="tick decade"') == 2  # 10 and 100 cm


def test_round_over_round_changes(page):
    _, summary = page
    change = summary["datasets"]["synth"]["changes"][1]
    assert change["passed"] == 2 and change["share_passed"] == pytest.approx(2 / 6)
    assert change["joint_error_mm"] < 0  # round 1 holds the truth: the error falls
    text = page[0].read_text()
    assert '<tr class="change-row" data-round="1">' in text and "+2" in text


def test_gallery_names_sample_dataset_round_and_failed_rule(page, world):
    text = page[0].read_text()
    assert "dataset synth, round 1 (skelify-round-1)" in text or "dataset synth, round 0 (smpl-fit)" in text
    assert "failed: " in text or "passed" in text


def test_a_live_page_reloads_and_says_what_it_shows(world, models_root, tmp_path):
    config = D.DashboardConfig(world["table"], None, models_root, run="convert-smpl-to-skel run x")
    live = D.LiveDashboard(config, tmp_path / "live.html", min_interval_s=3600)
    assert live.update() and not live.update()  # the second within the interval is skipped
    text = (tmp_path / "live.html").read_text()
    version = lt_version(world["table"])
    assert f'<meta http-equiv="refresh" content="{D.DEFAULT_RELOAD_S}">' in text
    assert f'data-version="{version}" data-live="1"' in text and "by convert-smpl-to-skel run x (live" in text
    final, _ = live.finish()
    assert "http-equiv" not in final.read_text() and 'data-live="0"' in final.read_text()
    assert "joint error vs truth" not in final.read_text()  # no truth table given: no truth columns


def lt_version(uri: str) -> int:
    return label_table.history(uri)[-1]["version"]


def test_page_is_self_contained(page):
    text = page[0].read_text()
    assert "<script" not in text and "<link" not in text
    # The only URL is the SVG namespace; images are inline.
    assert text.count("http") == text.count('xmlns="http://www.w3.org/2000/svg"')
    assert text.count('src="data:image/jpeg;base64,') == 4


def test_cli_writes_a_page_without_the_dataset(world, tmp_path, capsys):
    out = tmp_path / "page.html"
    assert main(["dashboard", "--table", world["table"], "--dataset-dir", "", "--out", str(out)]) == 0
    assert "| synth | 0 | 6 | 4 (66.7%) |" in capsys.readouterr().out
    text = out.read_text()
    assert 'id="hist-synth-max_abs_beta"' in text and "No images" in text and 'id="truth-synth"' not in text


class _ChartParser(HTMLParser):
    """Bars (chart id, round, height), lines (chart id, d) and gallery images of a DOM."""

    def __init__(self):
        super().__init__()
        self.chart: str | None = None
        self.charts: list[str] = []
        self.bars: list[tuple[str, int, float]] = []
        self.lines: list[tuple[str, str]] = []
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "svg" and "chart" in classes:
            self.chart = a["id"]
            self.charts.append(a["id"])
        elif tag == "rect" and "bar" in classes:
            self.bars.append((self.chart, int(a["data-round"]), float(a["height"])))
        elif tag == "path" and "line" in classes:
            self.lines.append((self.chart, a["d"]))
        elif tag == "img":
            self.images.append(a["src"])

    def handle_endtag(self, tag):
        if tag == "svg":
            self.chart = None


def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and not os.environ.get("CI"):
        pytest.skip("chromium is not installed (apt-get install chromium); CI installs it")
    assert found, "CI must have chromium: .ci/run installs it"
    return found


def _run_chromium(binary: str, profile, *args: str) -> subprocess.CompletedProcess:
    command = [
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}", *args,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


@pytest.mark.slow
def test_chromium_renders_charts_of_both_rounds_and_a_readable_screenshot(page, tmp_path):
    binary = _chromium()
    path = page[0]
    dom = _run_chromium(binary, tmp_path / "profile-dom", "--dump-dom", path.as_uri()).stdout
    charts = _ChartParser()
    charts.feed(dom)
    expected = [f"hist-synth-{name}" for name in dashboard_stats.MEASURES] + ["filters-synth", "violations-synth"]
    assert set(expected + ["replacements-synth", "truth-synth"]) <= set(charts.charts)
    for chart in expected:
        for round_ in (0, 1):
            heights = [h for c, r, h in charts.bars if c == chart and r == round_]
            assert heights, (chart, round_)
            if chart.startswith("hist-"):
                assert sum(heights) > 0, (chart, round_)
    assert any(h > 0 for c, r, h in charts.bars if c == "violations-synth" and r == 0)  # the backward knee
    assert [d.count("L") for c, d in charts.lines if c == "truth-synth"] == [1, 1]  # two rounds per line
    assert len(charts.images) == 4 and all(src.startswith("data:image/jpeg;base64,") for src in charts.images)

    screenshot = tmp_path / "dashboard.png"
    _run_chromium(binary, tmp_path / "profile-shot", f"--screenshot={screenshot}", "--window-size=1280,2000",
                  path.as_uri())  # fmt: skip
    image = np.asarray(Image.open(io.BytesIO(screenshot.read_bytes())).convert("RGB"))
    assert image.shape == (2000, 1280, 3)
    colours = np.unique(image.reshape(-1, 3), axis=0)
    assert len(colours) > 200  # text, bars in several colours and photos, not a blank page
    assert image.std() > 20


@pytest.mark.slow
def test_flow_writes_the_page_and_its_artifacts(prefect_api, world, models_root, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.dashboard import artifact_key, label_dashboard

    out = tmp_path / "page.html"
    config = D.DashboardConfig(world["table"], world["dataset_dir"], models_root, gallery_size=2, out_path=str(out))
    state = label_dashboard(config, return_state=True)
    assert state.is_completed(), state
    result = state.result()
    assert result["page"] == str(out.resolve()) and result["rounds"] == [0, 1]
    assert 'id="hist-synth-pve_max"' in out.read_text()

    key = artifact_key("label-dashboard", world["table"])
    assert key == "label-dashboard-labels"
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key, f"{key}-rounds"]))
        )
    by_key = {a.key: a for a in artifacts}
    assert set(by_key) == {key, f"{key}-rounds"}
    assert "| synth | 1 | 6 | 6 (100.0%) |" in by_key[key].data
    assert str(out.resolve()) in by_key[key].data


@pytest.mark.slow
def test_an_open_live_page_shows_a_round_committed_after_it_was_opened(world, models_root, tmp_path):
    """Chromium keeps the live page open (DevTools protocol on the loopback); a new round is committed and
    the page rewritten; after its own reload the open page shows the round."""
    import json
    import time
    import urllib.request

    from websockets.sync.client import connect

    binary = _chromium()
    table = str(tmp_path / "labels")
    shutil.copytree(world["table"], table)
    config = D.DashboardConfig(table, None, models_root, run="test run", live_seconds=1)
    live = D.LiveDashboard(config, tmp_path / "live.html")
    live.update()
    browser = subprocess.Popen(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--remote-debugging-port=0",
         "--remote-debugging-address=127.0.0.1", f"--user-data-dir={tmp_path / 'profile-live'}",
         (tmp_path / "live.html").as_uri()],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        line = ""
        while "DevTools listening on" not in line:
            line = browser.stdout.readline()
            assert line or browser.poll() is None, "chromium exited before listening"
        port = int(line.split("ws://127.0.0.1:")[1].split("/")[0])
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page_target = next(t for t in targets if t["type"] == "page")
        with connect(page_target["webSocketDebuggerUrl"], max_size=None) as devtools:
            calls = iter(range(1, 10_000))

            def rounds_shown() -> str:
                call = next(calls)
                expression = "document.getElementById('rounds') ? document.getElementById('rounds').textContent : ''"
                devtools.send(json.dumps({"id": call, "method": "Runtime.evaluate",
                                          "params": {"expression": expression}}))  # fmt: skip
                while True:
                    reply = json.loads(devtools.recv(timeout=10))
                    if reply.get("id") == call:
                        return reply["result"]["result"].get("value", "")

            deadline = time.monotonic() + 30
            while "Rounds: 0, 1." not in rounds_shown():
                assert time.monotonic() < deadline, "the live page never showed rounds 0 and 1"
                time.sleep(0.2)
            truth = world["truth"]
            round2 = truth_label_rows(truth, world["ids"][:2], "skelify/2")
            round2["kp2d_err"] = np.full(2, 0.001)
            label_table.commit_round(table, round2, 2)
            live.update(force=True)
            deadline = time.monotonic() + 30
            while "Rounds: 0, 1, 2." not in rounds_shown():
                assert time.monotonic() < deadline, "the open page did not reload to show round 2"
                time.sleep(0.2)
    finally:
        browser.kill()
        browser.wait(timeout=30)
