"""The convert-smpl-to-skel flow on a tiny synthetic dataset, against Prefect's test harness."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from flows.convert import convert_smpl_to_skel
from flows.settings import unset_defaults
from hsmr_data import conversion, label_table
from hsmr_data.conversion import ConvertConfig, ConvertOptions
from hsmr_data.synthetic.world import SynthConfig, generate_dataset

# Four shards of one person: enough chunks to resume and to kill between, little fitting. The other
# conversion test modules use the same dataset through `synthetic_dataset`.
PEOPLE, PER_SHARD = 4, 1


def synthetic_dataset(model_paths, tmp_path_factory) -> Path:
    """The tiny synthetic dataset, made once per session: rendering people is the costly part."""
    out = tmp_path_factory.getbasetemp() / f"synth-{PEOPLE}x{PER_SHARD}"
    if not (out / "manifest.json").exists():
        generate_dataset(model_paths, out, SynthConfig(count=PEOPLE, batch_size=PEOPLE, shard_maxcount=PER_SHARD))
    return out


@pytest.fixture(scope="module")
def dataset_dir(model_paths, tmp_path_factory):
    return synthetic_dataset(model_paths, tmp_path_factory)


@pytest.fixture(scope="module")
def flow_parameters(model_paths, dataset_dir, tmp_path_factory):
    return {
        "dataset_dir": str(dataset_dir),
        "table_uri": str(tmp_path_factory.mktemp("labels") / "synth"),
        "models_root": str(model_paths.smpl.parent.parent),
    }


@pytest.fixture(scope="module")
def first_run(prefect_api, flow_parameters):
    """The flow's first run: its final state (the report is its result)."""
    return convert_smpl_to_skel(ConvertOptions(**flow_parameters), return_state=True)


def without_timings(labels: pa.Table) -> pa.Table:
    return labels.drop_columns(["fit_seconds"]).sort_by("sample_id")


@pytest.mark.slow
def test_flow_writes_one_row_per_sample_and_reports_every_chunk(first_run, flow_parameters, dataset_dir):
    assert first_run.is_completed(), first_run
    report = first_run.result()
    chunks = PEOPLE // PER_SHARD
    assert report["chunks"] == {"committed": chunks, "skipped": 0, "empty": 0, "failed": 0}

    labels = label_table.read_labels(flow_parameters["table_uri"])
    truth_ids = pq.read_table(dataset_dir / "truth" / "ground_truth.parquet").column("sample_id").to_pylist()
    assert labels.column("sample_id").to_pylist() == sorted(truth_ids)
    assert report["summary"] == conversion.summarize(labels)
    assert report["summary"]["samples"] == PEOPLE


@pytest.mark.slow
def test_flow_publishes_quality_table_markdown_full_progress_and_the_dashboard(first_run, flow_parameters):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.settings import artifact_key

    flow_run_id = first_run.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    by_key = {artifact.key: artifact for artifact in artifacts}
    # The dashboard next to the table: rewritten as chunks committed, final at the end, linked in the UI.
    page = Path(flow_parameters["table_uri"] + "-dashboard.html")
    assert page.resolve().as_uri() in by_key.pop(artifact_key("dashboard-link", flow_parameters["table_uri"])).data
    assert 'data-live="0"' in page.read_text() and 'id="hist-synth-pve_max"' in page.read_text()
    by_type = {artifact.type: artifact for artifact in by_key.values()}
    assert set(by_type) == {"table", "markdown", "progress"}
    assert by_type["progress"].data == pytest.approx(100.0)
    assert by_type["table"].key == "convert-synth-label-quality"
    assert "rejected: maxPVE > 6 cm" in by_type["table"].data
    assert f"labels: {PEOPLE}," in by_type["markdown"].data


@pytest.mark.slow
def test_second_run_skips_every_chunk_and_leaves_the_table_version(first_run, flow_parameters):
    uri = flow_parameters["table_uri"]
    version_before = DeltaTable(uri).version()
    labels_before = label_table.read_labels(uri)

    report = convert_smpl_to_skel(ConvertOptions(**flow_parameters))

    assert report["chunks"] == {"committed": 0, "skipped": PEOPLE // PER_SHARD, "empty": 0, "failed": 0}
    assert DeltaTable(uri).version() == version_before == report["table_version"]
    assert label_table.read_labels(uri).equals(labels_before)


@pytest.mark.slow
def test_flow_table_equals_the_plain_conversion(first_run, flow_parameters, tmp_path):
    plain = ConvertConfig(
        dataset_dir=flow_parameters["dataset_dir"],
        table_uri=str(tmp_path / "plain"),
        models_root=flow_parameters["models_root"],
    )
    conversion.convert_dataset(plain)

    from_flow = without_timings(label_table.read_labels(flow_parameters["table_uri"]))
    from_plain = without_timings(label_table.read_labels(plain.table_uri))
    assert from_flow.num_rows == PEOPLE
    assert from_flow.equals(from_plain)


@pytest.mark.slow
def test_duckdb_reads_the_table_without_project_code(first_run, flow_parameters):
    labels = DeltaTable(flow_parameters["table_uri"]).to_pyarrow_dataset()
    connection = duckdb.connect()
    connection.register("labels", labels)

    assert connection.execute("select count(*) from labels").fetchone()[0] == PEOPLE
    passed, failing_pve = connection.execute(
        "select count(*) filter (where passed), count(*) filter (where pve_max > 0.06) from labels"
    ).fetchone()
    summary = first_run.result()["summary"]
    assert passed == summary["passed"]
    assert failing_pve == summary["rejected_pve_max"]
    ids = connection.execute("select sample_id from labels where passed order by sample_id").fetchall()
    assert len(ids) == passed and all(sample_id.startswith("synth-") for (sample_id,) in ids)


@pytest.mark.slow
def test_failing_chunk_is_retried_then_fails_the_run_and_a_rerun_completes_the_table(
    prefect_api, flow_parameters, monkeypatch, tmp_path
):
    parameters = {**flow_parameters, "table_uri": str(tmp_path / "labels")}
    broken = conversion.list_chunks(ConvertConfig(parameters["dataset_dir"], parameters["table_uri"]))[1]
    attempts = []
    real_convert_chunk = conversion.convert_chunk

    def convert_chunk_failing_on_one_shard(converter, chunk):
        if chunk == broken:
            attempts.append(chunk)
            raise OSError("disk went away")
        return real_convert_chunk(converter, chunk)

    monkeypatch.setattr(conversion, "convert_chunk", convert_chunk_failing_on_one_shard)
    state = convert_smpl_to_skel(ConvertOptions(**parameters), return_state=True)

    assert state.is_failed()
    assert len(attempts) == 3  # the first try and two retries
    with pytest.raises(RuntimeError, match=re.escape(broken.id)):
        state.result()
    assert label_table.read_labels(parameters["table_uri"]).num_rows == PEOPLE - PER_SHARD

    monkeypatch.setattr(conversion, "convert_chunk", real_convert_chunk)
    report = convert_smpl_to_skel(ConvertOptions(**parameters))
    assert report["chunks"] == {"committed": 1, "skipped": PEOPLE // PER_SHARD - 1, "empty": 0, "failed": 0}
    assert label_table.read_labels(parameters["table_uri"]).num_rows == PEOPLE


def test_local_prefect_settings_leave_what_the_user_set():
    defaults = unset_defaults({"PREFECT_HOME": "/elsewhere"})
    assert "PREFECT_HOME" not in defaults
    assert defaults["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert float(defaults["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]) > 20  # Prefect's default
