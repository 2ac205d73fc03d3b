"""Inference throughput of `hsmr predict`'s network step, in images per second, measured in one run.

For each network size asked for: a freshly initialised network saved as a checkpoint and loaded by
`hsmr_data.predict.Predictor` (the path `hsmr predict` takes), then `Predictor.run` on random 256²
crops (the network, bf16 on CUDA, and the SKEL keypoints of its output), batched and one crop at a
time; the ratio says what batching buys. Cropping and JPEG decoding are not included.

    python bench/bench_predict.py --models storage/models --out storage/bench/predict.json
    python bench/bench_predict.py --device cuda --sizes tiny,B,H --batch-size 64    # on a GPU
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from results import write_result  # bench/ is on sys.path when a script runs

from hsmr_data.layout import DEFAULT as STORAGE
from hsmr_data.predict import Crop, PredictConfig, Predictor
from hsmr_model.network import HSMRNetwork, network_config


def fresh_checkpoint(size: str, folder: Path) -> Path:
    """A checkpoint of an untrained network of `size`, in the Trainer's layout."""
    path = folder / f"{size}.pt"
    model = HSMRNetwork(network_config(size))
    torch.save({"model": model.state_dict(), "step": 0, "config": {"size": size, "pose_target": "88d"}}, path)
    return path


def throughput(predictor: Predictor, crops: list[Crop], repeats: int) -> float:
    predictor.run(crops)  # warm-up: allocation, kernel selection
    if predictor.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        predictor.run(crops)
    if predictor.device.type == "cuda":
        torch.cuda.synchronize()
    return repeats * len(crops) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=STORAGE.models)
    parser.add_argument("--out", default=STORAGE.bench_file("predict.json"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    crops = [
        Crop(str(i), "bench", rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), np.zeros(2), 256.0)
        for i in range(args.batch_size)
    ]
    sizes = {}
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes.split(","):
            config = PredictConfig(str(fresh_checkpoint(size, Path(folder))), args.models, args.batch_size, args.device)
            predictor = Predictor(config)
            batched = throughput(predictor, crops, args.repeats)
            single = throughput(predictor, crops[:1], args.repeats * 4)
            sizes[size] = {
                "images_per_s": round(batched, 2),
                "images_per_s_one_at_a_time": round(single, 2),
                "batching_speedup": round(batched / single, 2),
                "bf16": predictor.amp_dtype is not None,
            }
    result = {
        "machine": {
            "platform": platform.platform(),
            "device": args.device,
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        },
        "batch_size": args.batch_size,
        "sizes": sizes,
    }
    write_result(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
