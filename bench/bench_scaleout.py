"""Scale-out on the engines users run, as ratios measured in one run on this machine.

- DDP: training images per second of the same run (tiny network, same global batch, same steps) in two
  gloo processes under torchrun vs one process; on the CPU the two processes share the cores one
  process would use, so this measures DDP's overhead more than a speed-up (on GPUs each rank has its own).
- Loader workers: training images per second with `loader_workers` processes building batches vs
  none (batches built in the training process between steps).
- Dask: conversion samples per second with 2 Dask worker processes vs 1 (a LocalCluster each), the
  convert-smpl-to-skel flow on a synthetic dataset of several shards.

    python bench/bench_scaleout.py --models storage/models --out storage/bench/scaleout.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from bench_train import make_index  # bench/ is on sys.path when a script runs
from results import write_result

from hsmr_data import train_run
from hsmr_data.layout import DEFAULT as STORAGE
from hsmr_data.synthetic.world import SynthConfig, generate_dataset
from hsmr_data.train_run import TrainingRun
from hsmr_data.training import TrainConfig
from hsmr_model.model_files import BodyModelPaths


def training_images_per_s(config: TrainConfig, nproc: int) -> float:
    """Images per second of a whole run (loader, steps, checkpoint at the end), from a fresh run folder."""
    spec = TrainingRun(config)
    started = time.perf_counter()
    result = train_run.launch(spec, nproc) if nproc > 1 else train_run.run(spec)
    return result["step"] * config.batch_size / (time.perf_counter() - started)


def conversion_samples_per_s(dataset_dir: Path, models: str, table: Path, workers: int) -> float:
    """The conversion flow on a Dask LocalCluster of `workers` single-threaded worker processes."""
    from distributed import LocalCluster

    from flows.convert import build_task_runner, convert_smpl_to_skel
    from hsmr_data.conversion import ConvertOptions

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        runner = build_task_runner("dask", dask_address=cluster.scheduler_address)
        started = time.perf_counter()
        report = convert_smpl_to_skel.with_options(task_runner=runner)(
            ConvertOptions(dataset_dir=str(dataset_dir), table_uri=str(table), models_root=models, device="cpu")
        )
        return report["summary"]["samples"] / (time.perf_counter() - started)


def task_bytes(models: str) -> int:
    """What a conversion task sends to a Dask worker: the pickled Converter (its configuration)."""
    import cloudpickle

    from hsmr_data.conversion import ConvertConfig, Converter

    return len(cloudpickle.dumps(Converter(ConvertConfig(dataset_dir=None, table_uri="t", models_root=models))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=STORAGE.models)
    parser.add_argument("--out", default=STORAGE.bench_file("scaleout.json"))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--loader-workers", type=int, default=2)
    parser.add_argument("--dataset-size", type=int, default=32)
    parser.add_argument("--skip-dask", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        index = make_index(args.models, folder, args.dataset_size)
        base = TrainConfig(
            indexes=(index,), out_dir="", models_root=args.models, device="cpu", steps=args.steps,
            batch_size=args.batch_size, checkpoint_every=args.steps, log_every=args.steps,
        )  # fmt: skip
        one = training_images_per_s(replace(base, out_dir=str(folder / "one")), 1)
        two = training_images_per_s(replace(base, out_dir=str(folder / "two")), 2)
        workers = training_images_per_s(
            replace(base, out_dir=str(folder / "workers"), loader_workers=args.loader_workers), 1
        )
        dask = {}
        if not args.skip_dask:
            dataset_dir = folder / "convert"  # several shards: one chunk each, for the workers to share
            generate_dataset(
                BodyModelPaths.from_root(args.models), dataset_dir, SynthConfig(count=24, shard_maxcount=4)
            )
            rates = {n: conversion_samples_per_s(dataset_dir, args.models, folder / f"labels-{n}", n) for n in (1, 2)}
            dask = {
                "bytes_shipped_per_task": task_bytes(args.models),
                "samples_per_s_1_worker": round(rates[1], 2),
                "samples_per_s_2_workers": round(rates[2], 2),
                "ratio_2_over_1": round(rates[2] / rates[1], 2),
            }
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "training": {
            "network": "tiny",
            "global_batch": args.batch_size,
            "steps": args.steps,
            "images_per_s_1_process": round(one, 2),
            "images_per_s_2_ddp_processes": round(two, 2),
            "ddp_ratio_2_over_1": round(two / one, 2),
            f"images_per_s_{args.loader_workers}_loader_workers": round(workers, 2),
            "loader_workers_ratio_over_none": round(workers / one, 2),
        },
        "dask_conversion": dask,
    }
    write_result(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    from flows.settings import local_prefect_settings

    with local_prefect_settings():
        main()
