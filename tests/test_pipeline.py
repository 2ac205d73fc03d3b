"""The whole pipeline flow on a tiny synthetic world, under the Prefect test API."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from flows.pipeline import pipeline_paths
from hsmr_data import label_table


@pytest.fixture
def torch_threads_restored():
    """The demo's cpu recipe sets the process to one torch thread (a training run owns its process); the
    tests after this one keep their own count."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_pipeline_runs_every_step_and_a_rerun_redoes_nothing(
    prefect_api, model_paths, tmp_path, torch_threads_restored
):
    from flows.pipeline import PipelineOptions, pipeline

    root = tmp_path / "storage"
    shutil.copytree(model_paths.smpl.parent.parent, root / "models")
    settings = dict(root=str(root), count=8, train_steps=4, batch_size=2, refine_warmup=2, refine_every=2)
    result = pipeline(PipelineOptions(**settings))
    paths = pipeline_paths(root)

    assert label_table.read_labels(paths["table"]).num_rows == 6  # 8 people: 1 held out for val, 1 for test
    assert Path(result["export_index"]).is_file() and Path(result["checkpoint"]).is_file()
    assert [r["status"] for r in result["refinement_rounds_in_training"]] == ["committed"]
    report = json.loads(Path(result["report_json"]).read_text())
    assert report and Path(result["report"]).read_text().startswith("# Evaluation")
    held_out = json.loads(Path(result["test_report_json"]).read_text())
    assert list(held_out["sources"]) == ["smpl_pseudo_gt", "constant", "network"]
    assert sum(held_out["samples"].values()) == 1 and "test" in held_out["dataset_dir"]
    page = Path(result["dashboard"]).read_text()
    assert "<svg" in page and "round 0" in page

    versions = label_table.history(paths["table"])[-1]["version"]
    again = pipeline(PipelineOptions(**{**settings, "train_steps": 4}))
    assert label_table.history(paths["table"])[-1]["version"] == versions  # nothing committed twice
    assert again["refine_round"]["status"] == "skipped"


def test_a_dataset_of_another_size_is_not_silently_reused(tmp_path):
    from flows.pipeline import ensure_dataset

    (tmp_path / "synth").mkdir()
    manifest = tmp_path / "synth" / "manifest.json"
    manifest.write_text(json.dumps({"config": {"count": 5, "seed": 0, "test_fraction": 0.1}}))
    with pytest.raises(ValueError, match="5 people"):
        ensure_dataset(str(tmp_path / "synth"), str(tmp_path / "models"), count=8, seed=0)
    assert ensure_dataset(str(tmp_path / "synth"), str(tmp_path / "models"), count=5, seed=0)["generated"] is False
    manifest.write_text(json.dumps({"config": {"count": 5, "seed": 0}}))  # from before the held-out splits
    with pytest.raises(ValueError, match="test share 0"):
        ensure_dataset(str(tmp_path / "synth"), str(tmp_path / "models"), count=5, seed=0)
