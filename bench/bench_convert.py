"""SMPL → SKEL conversion: our batched fit against the SKEL authors' fitter, measured in the same run.

Synthetic targets: random moderate SMPL poses and shapes posed by the SMPL model (knees and elbows
bend only the anatomical way, other joints N(0, 0.2 rad) per axis, any heading). Ours fits all of
them in batches. The baseline (`hsmr_model.skel_fit_baseline`, the authors' 4 × 10 LBFGS steps)
fits the first b of them as one batch for each b in `--baseline-batches` (the authors batch
frames, 20 by default); its per-frame cost is its wall time over b, and it falls as b grows, so
every batch size is reported. Ours is also run on the first b samples as one batch (same batch
size). Figures: frames per second, PVE (mean and max over the vertices, metres), and the ratios of
per-frame costs, and on the CPU ours per core (frames per second over the torch threads). Results go to
a JSON file.

    python bench/bench_convert.py --models storage/models --out storage/bench/convert.json [--device cuda]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import time
from dataclasses import replace

import numpy as np
import torch
from reference import package_at  # bench/ is on sys.path when a script runs
from results import write_result

from hsmr_data.layout import DEFAULT as STORAGE
from hsmr_data.synthetic.poses import sample_moderate_smpl_params
from hsmr_model import skel_constants as C
from hsmr_model import skel_fit
from hsmr_model.devices import resolve_device
from hsmr_model.model_files import BodyModelPaths, read_skel_model
from hsmr_model.skel_fit import SkelFitConfig
from hsmr_model.skel_fit_baseline import fit_baseline
from hsmr_model.skel_fit_init import SmplToSkel
from hsmr_model.skel_layer import SKELLayer
from hsmr_model.smpl_layer import build_smpl, posed_vertices


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _pve_summary(pve_mean: np.ndarray, pve_max: np.ndarray) -> dict:
    return {
        "pve_mean_m": round(float(pve_mean.mean()), 5),
        "pve_max_m_mean": round(float(pve_max.mean()), 5),
        "pve_max_m_p95": round(float(np.percentile(pve_max, 95)), 5),
        "share_pve_max_below_6cm": round(float((pve_max < 0.06).mean()), 3),
    }


def bench_ours(skel, link, vertices, params, config: SkelFitConfig, library=skel_fit) -> dict:
    """`library.fit_in_batches` (ours, or a reference commit's skel_fit module) timed on all the samples."""
    device = resolve_device(config.device)
    library.fit_in_batches(skel, link, vertices[:8], None, params[:8], config)  # warm-up
    _synchronize(device)
    start = time.perf_counter()
    result = library.fit_in_batches(skel, link, vertices, None, params, config)
    _synchronize(device)
    seconds = time.perf_counter() - start
    init_config = library.SkelFitConfig(iterations=0, device=config.device)
    init = library.fit_in_batches(skel, link, vertices, None, params, init_config)
    return {
        "samples": int(vertices.shape[0]),
        "batch_size": library.batch_size_for(config, device),
        "seconds": round(seconds, 3),
        "frames_per_s": round(vertices.shape[0] / seconds, 2),
        "seconds_per_frame": seconds / vertices.shape[0],
        **_pve_summary(result.pve_mean, result.pve_max),
        "init_only_pve_mean_m": round(float(init.pve_mean.mean()), 5),
        "mean_iterations": round(float(result.iterations.mean()), 2),
        "share_converged": round(float(result.converged.mean()), 3),
        "max_joint_limit_violation_rad": float(_limit_violation(result.q)),
    }, result


def reference_comparison(commit: str, data, smpl, vertices, params, args, ours_side) -> tuple[dict, dict]:
    """The same conversion by ours (`ours_side()`) and by the library as it was at `commit`
    (`bench/reference.py`), alternately `args.rounds` times; each side's fastest run."""
    name = package_at(commit)
    old_fit, old_layer = (importlib.import_module(f"{name}.{module}") for module in ("skel_fit", "skel_layer"))
    old_skel = old_layer.SKELLayer(data)
    old_link = old_fit.SmplToSkel.from_models(old_skel, data.J_regressor_osim, smpl)
    old_config = old_fit.SkelFitConfig(device=args.device, batch_size=args.batch_size)
    ours_runs, old_runs = [], []
    for _ in range(args.rounds):
        ours_runs.append(ours_side())
        old_runs.append(bench_ours(old_skel, old_link, vertices, params, old_config, library=old_fit))
    fastest = [min(runs, key=lambda run: run[0]["seconds"]) for runs in (ours_runs, old_runs)]
    return fastest[0], {"commit": name.rsplit("_", 1)[-1], **fastest[1][0]}


def _limit_violation(q: np.ndarray) -> float:
    lower, upper = C.dof_limits()
    return float(np.maximum(lower - q, 0).max() + np.maximum(q - upper, 0).max())


def bench_baseline(skel, data, smpl, vertices, params, device: torch.device) -> dict:
    regressor = torch.as_tensor(data.J_regressor_osim.toarray(), dtype=torch.float32, device=device)
    vertices, params = vertices.to(device), params.to(device)
    result = fit_baseline(
        skel.to(device), regressor, smpl.lbs_weights, vertices, params.global_orient, params.betas, params.transl
    )
    with torch.no_grad():
        errors = (skel(result.q, result.betas, result.trans).skin_verts - vertices).norm(dim=-1).cpu().numpy()
    return {
        "samples": int(vertices.shape[0]),
        "batch_size": int(vertices.shape[0]),
        "seconds": round(result.seconds, 3),
        "frames_per_s": round(vertices.shape[0] / result.seconds, 4),
        "seconds_per_frame": result.seconds / vertices.shape[0],
        **_pve_summary(errors.mean(axis=1), errors.max(axis=1)),
        "closure_calls": result.closure_calls,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=STORAGE.models)
    parser.add_argument("--out", default=STORAGE.bench_file("convert.json"))
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--baseline-batches", default="16,64", help="batch sizes the baseline runs at ('' for none)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--reference-commit", help="also convert with the library at this commit (same process)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per side against the reference, alternately")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    paths = BodyModelPaths.from_root(args.models)
    data = read_skel_model(paths.skel_male)
    skel, smpl = SKELLayer(data), build_smpl(paths.smpl)
    link = SmplToSkel.from_models(skel, data.J_regressor_osim, smpl)
    params = sample_moderate_smpl_params(args.samples, np.random.default_rng(0))
    vertices = posed_vertices(smpl, params)
    config = SkelFitConfig(device=str(device), batch_size=args.batch_size)

    def ours_side():
        return bench_ours(skel, link, vertices, params, config)

    reference = None
    if args.reference_commit:
        (ours, fitted), reference = reference_comparison(
            args.reference_commit, data, smpl, vertices, params, args, ours_side
        )
        reference["speed_up"] = round(reference["seconds_per_frame"] / ours["seconds_per_frame"], 2)
        reference["pve_mean_difference_m"] = round(ours["pve_mean_m"] - reference["pve_mean_m"], 6)
        print(json.dumps({"reference": reference}))
    else:
        ours, fitted = ours_side()
    if device.type == "cpu":  # one torch thread per core: the figure that scales to a many-core machine
        ours["frames_per_s_per_cpu_core"] = round(ours["frames_per_s"] / torch.get_num_threads(), 2)
    comparisons = []
    for count in (int(b) for b in args.baseline_batches.split(",") if b):
        same_batch, _ = bench_ours(skel, link, vertices[:count], params[:count], replace(config, batch_size=count))
        baseline = bench_baseline(skel, data, smpl, vertices[:count], params[:count], device)
        comparisons.append(
            {
                "batch": count,
                "baseline": baseline,
                "ours_same_samples_same_batch": same_batch,
                "ours_pve_on_these_samples_in_the_main_run": _pve_summary(
                    fitted.pve_mean[:count], fitted.pve_max[:count]
                ),
                "ratio_per_frame_cost_vs_main_run": round(baseline["seconds_per_frame"] / ours["seconds_per_frame"], 1),
                "ratio_per_frame_cost_same_batch": round(
                    baseline["seconds_per_frame"] / same_batch["seconds_per_frame"], 1
                ),
            }
        )
        print(json.dumps(comparisons[-1]))
    result = {
        "what": "SMPL -> SKEL conversion, ours vs the SKEL authors' fitter, same machine, same run",
        "targets": f"{args.samples} moderate random SMPL poses and shapes (synthetic SMPL_NEUTRAL -> skel_male)",
        "baseline_method": (
            "hsmr_model.skel_fit_baseline on the first `batch` samples as one batch (the authors batch frames, "
            "default 20): 4 stages x 10 LBFGS steps (max_iter 20, strong Wolfe), full SKEL forward per closure "
            "call plus one watched frame's skeleton-mesh forward, beta not optimised; per-frame cost = wall time / "
            "batch"
        ),
        "ours_method": "hsmr_model.skel_fit.fit_in_batches with the default SkelFitConfig",
        "device": str(device),
        "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "ours": ours,
        "reference_commit": reference,
        "comparisons": comparisons,
        "goal": "ratio >= 1000 at equal or better PVE",
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
