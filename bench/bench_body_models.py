"""SKEL forward throughput: ours vs the body-models package, measured in the same run.

Bodies per second at batch 1, 64 and 1024, for the full skin mesh and for joints only, on the CPU
and, where one is present, on CUDA. Results go to a JSON file; the ratio (ours / reference) is the
figure to quote, since absolute times depend on the machine.

    python bench/bench_body_models.py --models storage/models --out storage/bench/body_models.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from results import write_result  # bench/ is on sys.path when a script runs

from hsmr_data.synthetic.poses import sample_betas, sample_skel_poses
from hsmr_model.model_files import BodyModelPaths
from hsmr_model.skel_layer import SKELLayer

BATCHES = (1, 64, 1024)


def _time_per_call(fn, device: torch.device, min_seconds: float, max_repeats: int) -> float:
    """Median seconds per call, after one warm-up call."""
    fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < max_repeats and (len(samples) < 3 or time.perf_counter() - start < min_seconds):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def _bench_batch(ours, reference, batch: int, rng, device: torch.device, min_seconds: float) -> list[dict]:
    from body_models.skel._pose import unpack_pose

    q = torch.as_tensor(sample_skel_poses(batch, rng), dtype=torch.float32, device=device)
    betas = torch.as_tensor(sample_betas(batch, rng), dtype=torch.float32, device=device)
    trans = torch.zeros(batch, 3, device=device)
    body_pose, head_pose = unpack_pose(torch, q)
    cases = {
        "full_mesh": (
            lambda: ours(q, betas, trans),
            lambda: reference.forward_vertices(body_pose, head_pose, shape=betas, global_translation=trans),
        ),
        "joints_only": (
            lambda: ours.joints(q, betas, trans),
            lambda: reference.forward_skeleton(body_pose, head_pose, shape=betas, global_translation=trans),
        ),
    }
    rows = []
    for path, (ours_fn, reference_fn) in cases.items():
        with torch.no_grad():
            ours_s = _time_per_call(ours_fn, device, min_seconds, max_repeats=200)
            reference_s = _time_per_call(reference_fn, device, min_seconds, max_repeats=200)
        rows.append(
            {
                "device": device.type,
                "path": path,
                "batch": batch,
                "ours_bodies_per_s": round(batch / ours_s, 1),
                "reference_bodies_per_s": round(batch / reference_s, 1),
                "ratio_ours_over_reference": round(reference_s / ours_s, 3),
            }
        )
        print(json.dumps(rows[-1]))
    return rows


def bench_device(skel_path: Path, device: torch.device, min_seconds: float) -> list[dict]:
    from body_models.skel.torch import SKEL

    ours = SKELLayer.from_file(skel_path).to(device)
    reference = SKEL(model_path=skel_path, gender="male").to(device)
    rng = np.random.default_rng(0)
    return [row for batch in BATCHES for row in _bench_batch(ours, reference, batch, rng, device, min_seconds)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="storage/models")
    parser.add_argument("--out", default="storage/bench/body_models.json")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="time spent per measurement")
    args = parser.parse_args()

    skel_path = BodyModelPaths.from_root(args.models).skel_male
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = [row for device in devices for row in bench_device(skel_path, device, args.min_seconds)]
    result = {
        "what": "SKEL forward, bodies per second, ours vs body-models (same run, same synthetic skel_male.pkl)",
        "reference": "body-models 0.26.2 (body_models.skel.torch.SKEL)",
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "results": rows,
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
