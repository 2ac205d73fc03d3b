"""The Dask task runner the conversion flow builds from its parameters, down to the SLURM job it submits."""

from __future__ import annotations

import sys

import dask_jobqueue
import pytest
from prefect_dask import DaskTaskRunner

from flows.convert import build_task_runner

# The one-GPU-per-job recipe of the README, as `--dask-cluster-kwargs` JSON would give it. The scheduler
# listens on the loopback here: the test renders the job script and submits nothing.
GPU_WORKER_KWARGS = {
    "cores": 8,
    "memory": "64GB",
    "processes": 1,
    "walltime": "04:00:00",
    "job_extra_directives": ["--gres=gpu:1"],
    "worker_extra_args": ["--resources", "GPU=1"],
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
    assert "--resources GPU=1" in worker_command and "--nthreads 8" in worker_command


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
