"""SKEL forward throughput: ours vs the body-models package, measured in the same run.

Bodies per second at batch 1, 64 and 1024, for the full skin mesh and for joints only, on the CPU
and, where one is present, on CUDA. Results go to a JSON file; the ratio (ours / reference) is the
figure to quote, since absolute times depend on the machine.

The bound of the full-mesh pass: its arithmetic (`mesh_work`: the shape, pose-corrective, skinning
and SMPL-joint GEMMs, counted from the model's sizes) over the device's measured GEMM rate, and the
mesh tensors it must write (skin, shaped template and pose offsets, float32) over the measured copy
bandwidth; the larger time is the bound, and the bench reports which fraction of it the pass reaches.

    python bench/bench_body_models.py --models storage/models --out storage/bench/body_models.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from results import write_result  # bench/ is on sys.path when a script runs
from torch.utils._python_dispatch import TorchDispatchMode

from hsmr_data.layout import DEFAULT as STORAGE
from hsmr_data.synthetic.poses import sample_betas, sample_skel_poses
from hsmr_model.model_files import BodyModelPaths
from hsmr_model.skel_layer import SKELLayer

BATCHES = (1, 64, 1024)


def _seconds(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _time_per_call(fn, device: torch.device, min_seconds: float, max_repeats: int) -> float:
    """Median seconds per call, after one warm-up call."""
    fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < max_repeats and (len(samples) < 3 or time.perf_counter() - start < min_seconds):
        samples.append(_seconds(fn, device))
    return statistics.median(samples)


def _time_pair(ours, reference, device: torch.device, min_seconds: float, max_repeats: int) -> tuple[float, float]:
    """Median seconds per call of each, the calls alternating (a machine whose load changes slows both alike)."""
    ours(), reference()
    samples: list[tuple[float, float]] = []
    start = time.perf_counter()
    while len(samples) < max_repeats and (len(samples) < 3 or time.perf_counter() - start < 2 * min_seconds):
        samples.append((_seconds(ours, device), _seconds(reference, device)))
    return tuple(statistics.median(side) for side in zip(*samples, strict=True))


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
            ours_s, reference_s = _time_pair(ours_fn, reference_fn, device, min_seconds, max_repeats=200)
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


class _OpCounter(TorchDispatchMode):
    """Counts the aten operations (views included) that reach torch's dispatcher."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def torch_ops_per_call(skel_path: Path, batch: int = 64) -> dict:
    """aten operations one call of each path issues, ours and the reference's: on small batches each costs
    a dispatch, so their number, not arithmetic, bounds the joints-only pass."""
    from body_models.skel._pose import unpack_pose
    from body_models.skel.torch import SKEL

    ours, reference = SKELLayer.from_file(skel_path), SKEL(model_path=skel_path, gender="male")
    rng = np.random.default_rng(0)
    q = torch.as_tensor(sample_skel_poses(batch, rng), dtype=torch.float32)
    betas = torch.as_tensor(sample_betas(batch, rng), dtype=torch.float32)
    trans = torch.zeros(batch, 3)
    body_pose, head_pose = unpack_pose(torch, q)
    calls = {
        "full_mesh": lambda: ours(q, betas, trans),
        "joints_only": lambda: ours.joints(q, betas, trans),
        "reference_joints_only": lambda: reference.forward_skeleton(
            body_pose, head_pose, shape=betas, global_translation=trans
        ),
    }
    counts = {"batch": batch}
    for path, call in calls.items():
        with torch.no_grad(), _OpCounter() as counter:
            call()
        counts[path] = counter.count
    return counts


def mesh_work(ours: SKELLayer) -> dict:
    """FLOPs and the bytes of output one full-mesh body costs at least (float32)."""
    vertices = ours.skin_template.shape[0]
    feature_rows = ours.posedirs_cf.shape[0]
    multiply_adds_per_vertex = (
        3 * 10  # shape blend
        + 3 * feature_rows  # pose correctives (only the SMPL joints some bone drives)
        + 12 * ours.skin_weights.shape[1]  # blending the bone transforms
        + 12  # applying the blended transform
        + 3 * ours.smpl_joint_regressor.shape[0]  # SMPL joints
    )
    return {"flops_per_body": 2 * vertices * multiply_adds_per_vertex, "output_bytes_per_body": 4 * 3 * 3 * vertices}


def device_rates(device: torch.device, min_seconds: float) -> dict:
    """Measured float32 GEMM rate (FLOP/s) and copy bandwidth (bytes/s, read + write) of `device`."""
    size = 2048
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    gemm_s = _time_per_call(lambda: a @ b, device, min_seconds, max_repeats=50)
    source = torch.randn(64 << 20, device=device)  # 256 MiB, far beyond the caches
    target = torch.empty_like(source)
    copy_s = _time_per_call(lambda: target.copy_(source), device, min_seconds, max_repeats=50)
    return {"gemm_flops_per_s": 2 * size**3 / gemm_s, "copy_bytes_per_s": 2 * 4 * source.numel() / copy_s}


def mesh_bound(work: dict, rates: dict, rows: list[dict]) -> list[dict]:
    """Bodies per second the full-mesh pass could reach at most, and the fraction of it reached."""
    compute_s = work["flops_per_body"] / rates["gemm_flops_per_s"]
    memory_s = work["output_bytes_per_body"] / rates["copy_bytes_per_s"]
    bound = 1 / max(compute_s, memory_s)
    return [
        {
            "batch": row["batch"],
            "bound_bodies_per_s": round(bound, 1),
            "bound_by": "arithmetic" if compute_s >= memory_s else "memory",
            "ours_fraction_of_bound": round(row["ours_bodies_per_s"] / bound, 3),
        }
        for row in rows
        if row["path"] == "full_mesh"
    ]


def bench_device(skel_path: Path, device: torch.device, min_seconds: float) -> list[dict]:
    from body_models.skel.torch import SKEL

    ours = SKELLayer.from_file(skel_path).to(device)
    reference = SKEL(model_path=skel_path, gender="male").to(device)
    rng = np.random.default_rng(0)
    return [row for batch in BATCHES for row in _bench_batch(ours, reference, batch, rng, device, min_seconds)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=STORAGE.models)
    parser.add_argument("--out", default=STORAGE.bench_file("body_models.json"))
    parser.add_argument("--min-seconds", type=float, default=1.0, help="time spent per measurement")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    skel_path = BodyModelPaths.from_root(args.models).skel_male
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows, bounds = [], {}
    work = mesh_work(SKELLayer.from_file(skel_path))
    for device in devices:
        device_rows = bench_device(skel_path, device, args.min_seconds)
        rates = device_rates(device, args.min_seconds)
        bounds[device.type] = {**rates, "full_mesh": mesh_bound(work, rates, device_rows)}
        print(json.dumps({device.type: bounds[device.type]}))
        rows += device_rows
    result = {
        "what": "SKEL forward, bodies per second, ours vs body-models (same run, same synthetic skel_male.pkl)",
        "reference": "body-models 0.26.2 (body_models.skel.torch.SKEL)",
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "results": rows,
        "torch_ops_per_call": torch_ops_per_call(skel_path),
        "full_mesh_work": work,
        "full_mesh_bound": bounds,
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
