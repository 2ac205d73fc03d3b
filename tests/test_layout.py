"""The storage layout: every default path comes from one DataRoot, and the paths are the ones the
README, the Makefile and existing data folders use."""

from hsmr_data.layout import DEFAULT, DataRoot


def test_default_layout_is_the_documented_storage_tree():
    assert DEFAULT.models == "storage/models"
    assert DEFAULT.dataset() == "storage/datasets/synth"
    assert DEFAULT.table() == "storage/labels/synth"
    assert DEFAULT.shards == "storage/shards"
    assert DEFAULT.run() == "storage/runs/hsmr-demo"
    assert DEFAULT.run_predictions() == "storage/runs/hsmr-demo/predictions.parquet"
    assert DEFAULT.dashboard == "storage/reports/label_dashboard.html"
    assert DEFAULT.quarantine("coco") == "storage/quarantine/coco"
    assert DEFAULT.prefect_home == "storage/prefect"


def test_another_root_moves_every_path_and_the_flows_follow_it(tmp_path):
    from flows.pipeline import pipeline_paths
    from flows.settings import DEFAULT_PREFECT_HOME, REPO_ROOT

    root = DataRoot(str(tmp_path))
    paths = pipeline_paths(tmp_path)
    assert paths["table"] == root.table() == str(tmp_path / "labels" / "synth")
    assert paths["run"] == root.run() and paths["test_reports"] == str(tmp_path / "reports" / "test")
    assert all(path.startswith(str(tmp_path)) for path in paths.values())
    assert DEFAULT_PREFECT_HOME == REPO_ROOT / "storage" / "prefect"
