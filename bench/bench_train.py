"""Training throughput and whether the loader keeps up, measured in one run.

- Training: images per second of full training steps (forward, SKEL keypoints, losses, backward,
  AdamW) for each network size asked for, on random crops with labels of the right shapes.
- Loader: samples per second of `TrainingBatches` (read from the tars, JPEG decode, augmentation)
  on the exported shards of a small synthetic dataset made here. The ratio loader / training (tiny,
  same machine) says whether data loading is the bottleneck: above 1 it is not.

    python bench/bench_train.py --models storage/models --out storage/bench/train.json
    python bench/bench_train.py --threads 1 --sizes tiny,small --steps 30   # `make bench`: under a minute on a CPU
    python bench/bench_train.py --device cuda --sizes tiny,B,H --batch-size 32   # on a GPU
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

import pyarrow.parquet as pq
import torch
from results import write_result  # bench/ is on sys.path when a script runs

from hsmr_data import export
from hsmr_data import label_table as lt
from hsmr_data.layout import DEFAULT as STORAGE
from hsmr_data.synthetic.world import SynthConfig, generate_dataset
from hsmr_data.train_data import AugmentConfig, MixedSampler, ShardDataset, TrainingBatches
from hsmr_data.training import TrainConfig, Trainer
from hsmr_data.truth_report import truth_label_rows
from hsmr_model import skel_constants as C
from hsmr_model.model_files import BodyModelPaths


def make_index(models: str, folder: Path, count: int) -> str:
    """A synthetic dataset labelled with its truth and exported: the shards a loader reads."""
    generate_dataset(BodyModelPaths.from_root(models), folder / "synth", SynthConfig(count=count))
    truth = {row["sample_id"]: row for row in pq.read_table(folder / "synth/truth/ground_truth.parquet").to_pylist()}
    rows = truth_label_rows(truth, sorted(truth), "bench")
    lt.commit_chunk(str(folder / "labels"), lt.validate_rows(rows), "bench")
    return export.export_shards(str(folder / "labels"), {"synth": str(folder / "synth")}, folder / "shards").index


def loader_throughput(index: str, batch_size: int, batches: int) -> float:
    data = TrainingBatches(
        [ShardDataset.from_index(index)], MixedSampler([len(ShardDataset.from_index(index))], [1.0], batch_size),
        AugmentConfig(),
    )  # fmt: skip
    data[0]
    start = time.perf_counter()
    for step in range(1, batches + 1):
        data[step]
    return batches * batch_size / (time.perf_counter() - start)


def random_batch(batch_size: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        "images": torch.rand(batch_size, 3, 256, 256, generator=generator),
        "q": torch.zeros(batch_size, C.NUM_DOFS),
        "betas": torch.zeros(batch_size, C.NUM_BETAS),
        "has_pose": torch.ones(batch_size),
        "has_betas": torch.ones(batch_size),
        "keypoints_3d": torch.rand(batch_size, 44, 4, generator=generator),
        "keypoints_2d": torch.rand(batch_size, 44, 3, generator=generator) - 0.5,
        "meta": [{"sample_id": str(i), "dataset": "b", "flipped": False, "rotation_deg": 0} for i in range(batch_size)],
    }  # fmt: skip


def training_throughput(config: TrainConfig, batch: dict, steps: int) -> float:
    trainer = Trainer(config)
    trainer.train_step(batch)  # warm-up: allocation, autotuning
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(batch)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return steps * len(batch["meta"]) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=STORAGE.models)
    parser.add_argument("--out", default=STORAGE.bench_file("train.json"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default="tiny")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--dataset-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        index = make_index(args.models, Path(folder), args.dataset_size)
        base = TrainConfig(indexes=(index,), out_dir=folder, models_root=args.models, device=args.device)
        batch = random_batch(args.batch_size)
        training = {}
        for size in args.sizes.split(","):
            config = replace(base, size=size, batch_size=args.batch_size)
            training[size] = round(training_throughput(config, batch, args.steps), 2)
        loader = round(loader_throughput(index, args.batch_size, args.steps), 2)
    result = {
        "machine": {
            "platform": platform.platform(),
            "device": args.device,
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        },  # fmt: skip
        "batch_size": args.batch_size,
        "training_images_per_s": training,
        "loader_samples_per_s_one_process": loader,
        "loader_over_tiny_training": round(loader / training["tiny"], 2) if "tiny" in training else None,
    }
    write_result(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
