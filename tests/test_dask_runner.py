"""The Dask task runner the conversion flow builds from its parameters, down to the SLURM job it submits."""

from __future__ import annotations

import sys

import dask_jobqueue
import numpy as np
import pytest
from prefect_dask import DaskTaskRunner

from flows.convert import build_task_runner

# The one-GPU-per-job recipe of the README, as `--dask-cluster-kwargs` JSON would give it. The scheduler
# listens on the loopback here: the test renders the job script and submits nothing.
GPU_WORKER_KWARGS = {
    "cores": 1,  # one task at a time per worker: its GPU holds one fitting batch
    "job_cpu": 8,  # ... and eight CPUs for torch's host-side work
    "memory": "64GB",
    "processes": 1,
    "walltime": "04:00:00",
    "job_extra_directives": ["--gres=gpu:1"],
    "scheduler_options": {"host": "127.0.0.1", "dashboard_address": None},
}


def test_the_flow_parameters_render_the_slurm_job_of_one_gpu_worker():
    runner = build_task_runner(
        "dask", dask_cluster_class="dask_jobqueue.SLURMCluster", dask_cluster_kwargs=GPU_WORKER_KWARGS
    )
    assert isinstance(runner, DaskTaskRunner)
    assert runner.cluster_class == "dask_jobqueue.SLURMCluster"
    with dask_jobqueue.SLURMCluster(**runner.cluster_kwargs) as cluster:
        script = cluster.job_script()
    directives = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --gres=gpu:1" in directives
    assert "#SBATCH --cpus-per-task=8" in directives
    assert "#SBATCH -t 04:00:00" in directives
    worker_command = script.strip().splitlines()[-1]
    assert "distributed.cli.dask_worker tcp://127.0.0.1:" in worker_command
    assert "--nthreads 1" in worker_command


def test_a_running_scheduler_is_joined_by_address():
    runner = build_task_runner("dask", dask_address="tcp://127.0.0.1:8786")
    assert runner.address == "tcp://127.0.0.1:8786"
    assert runner.cluster_class is None


def test_without_prefect_dask_the_error_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "prefect_dask", None)  # as if it were not installed
    with pytest.raises(RuntimeError, match="pip install prefect-dask"):
        build_task_runner("dask")


def test_unknown_runner_is_refused():
    with pytest.raises(ValueError, match="'threads' or 'dask'"):
        build_task_runner("processes")


def test_a_converter_travels_as_its_configuration_and_finds_the_process_models(model_paths, tmp_path):
    import cloudpickle

    from hsmr_data.conversion import ConvertConfig, Converter
    from hsmr_model.body_models import BodyModels

    config = ConvertConfig(
        dataset_dir=None, table_uri=str(tmp_path / "t"), models_root=str(model_paths.smpl.parent.parent)
    )
    converter = Converter(config)
    shipped = cloudpickle.dumps(converter)
    models = BodyModels.load(model_paths, config.skel_sex, config.fit.device)
    model_bytes = sum(t.numel() * t.element_size() for t in models.skel.state_dict().values())
    assert len(shipped) < 20_000 < model_bytes  # a task carries the configuration, not the models
    received = cloudpickle.loads(shipped)
    assert received.config == config and received.skel is converter.skel  # this process's models, reused


@pytest.fixture(scope="module")
def dask_cluster():
    """Two worker processes, one thread each, joined by address as prefect-dask's own tests do."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        yield cluster


@pytest.mark.slow
def test_the_flow_on_two_dask_worker_processes_writes_the_thread_runners_table(
    prefect_api, dask_cluster, model_paths, tmp_path_factory
):
    from flows.convert import convert_smpl_to_skel
    from hsmr_data import label_table
    from hsmr_data.conversion import ConvertOptions
    from tests.test_convert_flow import PEOPLE, PER_SHARD, synthetic_dataset, without_timings

    dataset_dir = synthetic_dataset(model_paths, tmp_path_factory)
    models = str(model_paths.smpl.parent.parent)
    tables = {name: str(tmp_path_factory.mktemp(f"dask-{name}") / "labels") for name in ("threads", "dask")}
    runners = {
        "threads": build_task_runner("threads"),
        "dask": build_task_runner("dask", dask_address=dask_cluster.scheduler_address),
    }
    reports = {
        name: convert_smpl_to_skel.with_options(task_runner=runners[name])(
            ConvertOptions(dataset_dir=str(dataset_dir), table_uri=tables[name], models_root=models, device="cpu")
        )
        for name in ("threads", "dask")
    }
    assert reports["dask"]["chunks"] == {"committed": PEOPLE // PER_SHARD, "skipped": 0, "empty": 0, "failed": 0}
    threads, dask = (without_timings(label_table.read_labels(tables[name])) for name in ("threads", "dask"))
    assert dask["sample_id"].to_pylist() == threads["sample_id"].to_pylist()  # every sample once, none twice
    for column in threads.column_names:
        ours, theirs = dask[column].to_pylist(), threads[column].to_pylist()
        if column in ("q", "betas", "trans", "pve_mean", "pve_max", "kp2d_err"):
            assert np.allclose(np.array(ours, float), np.array(theirs, float), atol=1e-5), column
        else:
            assert ours == theirs, column
