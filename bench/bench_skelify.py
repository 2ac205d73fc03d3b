"""SKELify throughput: the 10-step refiner on synthetic people, support-vertex keypoints against the full mesh.

Synthetic people: q inside the limits (half of each range around its middle), facing the camera,
β ~ N(0, 0.5), at the crop camera's usual depth; their 44 keypoints projected with N(0, 0.008) noise
(about 2 px of a 256 px crop) and confidence 1; SKELify starts from the truth plus N(0, 0.05 rad) on q and
N(0, 0.2) on β, as from a good network prediction.

Figures, per batch size (256 and 2048 by default):
- seconds per evaluation of the objective with its gradient (what each LBFGS iteration and line-search
  step costs), for the support-vertex keypoints (`SKELLayer.keypoints`, the regressor's vertices only)
  and the full-mesh path, and their ratio;
- the paper's refiner (one stage, 10 LBFGS steps of at most 20 iterations, strong Wolfe) run end to end
  on the support path: wall time, evaluations, samples per second, kp2d_err before and after. A run
  whose estimate (evaluations of the smaller batch's run × seconds per evaluation) exceeds `--time-cap-s`
  is not run; its samples per second is then that estimate, marked "estimated". The full-mesh path is
  never run end to end on the CPU: its figure is the support run's scaled by the per-evaluation ratio.

    python bench/bench_skelify.py --models storage/models --out storage/bench/skelify.json [--device cuda]

With `--reference-commit <sha>` the same figures are also measured, interleaved in this process, for the
library as it was at that commit (`bench/reference.py`): the before/after ratio of one run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import time
from dataclasses import replace

import numpy as np
import torch
from reference import package_at  # bench/ is on sys.path when a script runs
from results import write_result

from hsmr_data.layout import DEFAULT as STORAGE
from hsmr_model import camera
from hsmr_model import skel_constants as C
from hsmr_model.devices import resolve_device
from hsmr_model.model_files import BodyModelPaths, read_keypoint_regressor
from hsmr_model.regressor import VertexRegressor
from hsmr_model.skel_layer import SKELLayer
from hsmr_model.skelify import REFINER_STAGES, Skelify, SkelifyConfig, Stage, keypoint_mask


def synthetic_people(skel: SKELLayer, regressor: VertexRegressor, count: int, seed: int = 0) -> dict:
    """True bodies, their noisy keypoints, and a start near the truth (see the module docstring)."""
    generator = torch.Generator().manual_seed(seed)
    lower, upper = (
        torch.as_tensor(np.nan_to_num(b, posinf=0.0, neginf=0.0), dtype=torch.float32) for b in C.dof_limits()
    )
    q = (lower + upper) / 2 + (upper - lower) / 4 * (2 * torch.rand(count, 46, generator=generator) - 1)
    q[:, 0] = math.pi + 0.2 * torch.randn(count, generator=generator)
    q[:, 1:3] = 0.2 * torch.randn(count, 2, generator=generator)
    betas = 0.5 * torch.randn(count, 10, generator=generator)
    trans = torch.tensor([[0.0, 0.1, 45.0]]).expand(count, 3)
    with torch.no_grad():
        points = torch.cat(
            [skel.keypoints(q[i : i + 512], betas[i : i + 512], None, regressor) for i in range(0, count, 512)]
        )
    projected = camera.project(points, trans) + 0.008 * torch.randn(count, 44, 2, generator=generator)
    return {
        "q": q,
        "betas": betas,
        "keypoints": torch.cat([projected, torch.ones(count, 44, 1)], dim=-1),
        "q0": q + 0.05 * torch.randn(count, 46, generator=generator),
        "betas0": betas + 0.2 * torch.randn(count, 10, generator=generator),
    }


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_evaluation(skelify: Skelify, people: dict, count: int, repeats: int) -> float:
    """Mean wall time of one objective evaluation with its backward pass on the first `count` people."""
    problem = skelify.start(people["q0"][:count], people["betas0"][:count], people["keypoints"][:count])
    stage = REFINER_STAGES[0]
    mask = keypoint_mask(stage, skelify.device)
    skelify.objective(problem, stage, mask).backward()  # warm-up
    _synchronize(skelify.device)
    started = time.perf_counter()
    for _ in range(repeats):
        skelify.objective(problem, stage, mask).backward()
    _synchronize(skelify.device)
    return (time.perf_counter() - started) / repeats


def refine_run(skelify: Skelify, people: dict, count: int) -> dict:
    """The refiner end to end on the first `count` people, counting objective evaluations."""
    evaluations = 0
    objective = skelify.objective

    def counted(*args, **kwargs):
        nonlocal evaluations
        evaluations += 1
        return objective(*args, **kwargs)

    skelify.objective = counted
    q0, betas0, keypoints = people["q0"][:count], people["betas0"][:count], people["keypoints"][:count]
    _, start_error = skelify.score(q0, betas0, keypoints)
    _synchronize(skelify.device)
    started = time.perf_counter()
    fit = skelify.fit(q0, betas0, keypoints)
    _synchronize(skelify.device)
    seconds = time.perf_counter() - started
    del skelify.objective
    limited = list(C.LIMITED_DOFS)
    return {
        "samples": count,
        "seconds": round(seconds, 2),
        "samples_per_s": round(count / seconds, 3),
        "objective_evaluations": evaluations,
        "lbfgs_iterations": int(fit.iterations.max()),
        "kp2d_err_mean_start": float(start_error.mean()),
        "kp2d_err_mean_end": float(fit.kp2d_err.mean()),
        "q_error_deg_start": round(math.degrees(float((q0 - people["q"][:count])[:, limited].abs().mean())), 3),
        "q_error_deg_end": round(math.degrees(float((fit.q - people["q"][:count])[:, limited].abs().mean())), 3),
    }


def reference_comparison(args, people: dict, skel: SKELLayer, regressor: VertexRegressor, device) -> dict:
    """Ours against the library as it was at `args.reference_commit`, in this process, interleaved: objective
    evaluations alternately, and the refiner end to end alternately (`args.reference_rounds` times each) at
    the batch sizes up to `args.reference_run_max`. Each side's best time is kept."""
    name = package_at(args.reference_commit)
    old_layer, old_skelify, old_regressor, old_files = (
        importlib.import_module(f"{name}.{module}") for module in ("skel_layer", "skelify", "regressor", "model_files")
    )
    paths = BodyModelPaths.from_root(args.models)
    old_skel = old_layer.SKELLayer.from_file(paths.skel("male"))
    old_keypoints = old_regressor.VertexRegressor.from_sparse(
        old_files.read_keypoint_regressor(paths.keypoint_regressor).matrix
    )
    batches = {}
    for size in sorted(args.batch_sizes):
        sides = {
            "ours": Skelify(skel, regressor, SkelifyConfig(batch_size=size, device=str(device))),
            "reference": old_skelify.Skelify(
                old_skel, old_keypoints, old_skelify.SkelifyConfig(batch_size=size, device=str(device))
            ),
        }
        per_eval = {side: math.inf for side in sides}
        for _ in range(args.repeats):
            for side, skelify in sides.items():
                per_eval[side] = min(per_eval[side], seconds_per_evaluation(skelify, people, size, 1))
        entry = {
            "seconds_per_evaluation": {side: round(value, 4) for side, value in per_eval.items()},
            "evaluation_speed_up": round(per_eval["reference"] / per_eval["ours"], 2),
        }
        if size <= args.reference_run_max:
            runs = {side: [] for side in sides}
            for _ in range(args.reference_rounds):
                for side, skelify in sides.items():
                    runs[side].append(refine_run(skelify, people, size))
            best = {side: min(side_runs, key=lambda run: run["seconds"]) for side, side_runs in runs.items()}
            ours_error, old_error = (best[side]["kp2d_err_mean_end"] for side in ("ours", "reference"))
            entry["refiner"] = {
                **best,
                "samples_per_s_speed_up": round(best["reference"]["seconds"] / best["ours"]["seconds"], 2),
                "kp2d_err_end_relative_difference": round((ours_error - old_error) / old_error, 5),
            }
        batches[str(size)] = entry
        print(json.dumps({"reference": {size: entry}}, indent=2), flush=True)
    return {"commit": name.rsplit("_", 1)[-1], "batches": batches}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=STORAGE.models)
    parser.add_argument("--out", default=STORAGE.bench_file("skelify.json"))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 2048])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed evaluations per path and batch size")
    parser.add_argument("--time-cap-s", type=float, default=600.0, help="longest end-to-end run to attempt")
    parser.add_argument("--mesh-runs", action="store_true", help="also run the full-mesh refiner end to end")
    parser.add_argument("--reference-commit", help="also compare with the library at this commit (same process)")
    parser.add_argument("--reference-run-max", type=int, default=256, help="largest batch refined end to end by both")
    parser.add_argument("--reference-rounds", type=int, default=2, help="end-to-end runs per side, alternately")
    parser.add_argument("--support-only", action="store_true", help="leave the full-mesh path out")
    parser.add_argument("--samples", type=int, default=0, help="also refine this many in batches (e.g. 18000)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    paths = BodyModelPaths.from_root(args.models)
    skel = SKELLayer.from_file(paths.skel("male"))
    regressor = VertexRegressor.from_sparse(read_keypoint_regressor(paths.keypoint_regressor).matrix)
    people = synthetic_people(skel, regressor, max([*args.batch_sizes, args.samples]))
    # The first LBFGS step of a process imports parts of torch for seconds: not the refiner's cost.
    warm_up = Skelify(skel, regressor, SkelifyConfig(stages=(Stage(steps=1),), max_iter=2, device=str(device)))
    warm_up.fit(people["q0"][:2], people["betas0"][:2], people["keypoints"][:2])
    batches = {}
    evaluations_per_run = None
    for size in sorted(args.batch_sizes):
        config = SkelifyConfig(batch_size=size, device=str(device))
        support = Skelify(skel, regressor, config)
        mesh = Skelify(skel, regressor, replace(config, keypoint_path="mesh"))
        per_eval = {"support": seconds_per_evaluation(support, people, size, args.repeats)}
        if not args.support_only:
            per_eval["mesh"] = seconds_per_evaluation(mesh, people, size, args.repeats)
        entry = {"seconds_per_evaluation": {path: round(value, 4) for path, value in per_eval.items()}}
        if not args.support_only:
            entry["mesh_over_support_per_evaluation"] = round(per_eval["mesh"] / per_eval["support"], 2)
        estimate = None if evaluations_per_run is None else evaluations_per_run * per_eval["support"]
        if estimate is None or estimate <= args.time_cap_s:
            run = refine_run(support, people, size)
            evaluations_per_run = evaluations_per_run or run["objective_evaluations"]
            entry["support_refiner"] = run
        else:
            entry["support_refiner"] = {
                "samples_per_s": round(size / estimate, 3),
                "estimated": f"not run: {estimate:.0f} s estimated ({evaluations_per_run} evaluations of the "
                f"{min(args.batch_sizes)} run x {per_eval['support']:.3f} s) > --time-cap-s {args.time_cap_s:g}",
            }
        if args.mesh_runs:
            entry["mesh_refiner"] = refine_run(mesh, people, size)
        elif not args.support_only:
            entry["mesh_refiner"] = {
                "samples_per_s": round(
                    entry["support_refiner"]["samples_per_s"] / entry["mesh_over_support_per_evaluation"], 3
                ),
                "estimated": "not run: the support run scaled by the per-evaluation ratio",
            }
        batches[str(size)] = entry
        print(json.dumps({size: entry}, indent=2), flush=True)

    result = {
        "what": "SKELify, HSMR's 10-step refiner (LBFGS lr 1, strong Wolfe, max_iter 20, history 100), on "
        "synthetic people with noisy keypoints, support-vertex keypoints vs full mesh",
        "support_vertices": int(regressor.vertex_ids.numel()),
        "mesh_vertices": int(skel.skin_template.shape[0]),
        "device": str(device),
        "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "load_average": os.getloadavg()[0],
        "batches": batches,
    }
    if args.reference_commit:
        result["reference"] = reference_comparison(args, people, skel, regressor, device)
    if args.samples:
        size = max(args.batch_sizes)
        skelify = Skelify(skel, regressor, SkelifyConfig(batch_size=size, device=str(device)))
        result["many"] = {"batch_size": size, **refine_run(skelify, people, args.samples)}
    print(json.dumps(result, indent=2))
    write_result(args.out, result)


if __name__ == "__main__":
    main()
