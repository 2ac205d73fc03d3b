"""Motion sequences → SKEL: quality against the synthetic truth, and speed against the SKEL authors'
fitter run their way (consecutive frames of one sequence, batch after batch), in the same run.

Per synthetic motion (walking a circle, sitting down while turning across ±180°, a yoga flow; see
`hsmr_data.synthetic.motion`), ours is run three times:
- `batched`: the default converter with `--batch` frames per batch and `--overlap`;
- `whole`: the whole sequence as one batch; the seam error is the largest |q_batched − q_whole| on
  the frames next to a batch boundary (and, for scale, on all frames);
- `unsmoothed`: smoothness 0; against it, whether the smoothness term damps real motion: the ratio
  of each DoF's range of motion and of its peak frame-to-frame speed (smoothed / truth and
  unsmoothed / truth, over the DoFs that move by more than 10°).
Figures: q error vs the truth (body DoFs in degrees; the pelvis after matching the truth's 2π branch
on the first frame), PVE (mean, max), the largest frame-to-frame jump of any DoF vs the truth's.
The baseline (`hsmr_model.skel_fit_baseline`) fits the first `--baseline-frames` frames of the
walking sequence in batches of `--baseline-batch` with the sequence's SMPL β (the authors' init);
its per-frame cost against ours (the batched run, shape fit and smoothing included) is the ratio.

    python bench/bench_sequences.py --models storage/models --out storage/bench/sequences.json [--device cuda]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from results import write_result  # bench/ is on sys.path when a script runs

from hsmr_data.layout import DEFAULT as STORAGE
from hsmr_data.sequences import SequenceConfig, SequenceConverter, SkelSequence, batch_starts, read_amass_npz
from hsmr_data.synthetic.body_models import ensure_synthetic_models
from hsmr_data.synthetic.motion import MOTIONS, MotionTruth, read_truth, write_motion_sequences
from hsmr_model import skel_constants as C
from hsmr_model.devices import resolve_device
from hsmr_model.model_files import read_skel_model
from hsmr_model.skel_fit import SkelFitConfig
from hsmr_model.skel_fit_baseline import fit_baseline
from hsmr_model.skel_layer import SKELLayer
from hsmr_model.smpl_layer import build_smpl, posed_vertices


def _degrees(x: np.ndarray) -> float:
    return round(float(np.degrees(x)), 3)


def quality(poses: np.ndarray, truth: MotionTruth) -> dict:
    """q error, largest jumps, for poses (T, 46) against the truth."""
    offset = 2 * math.pi * np.round((poses[0, :3] - truth.q[0, :3]) / (2 * math.pi))
    jump, true_jump = np.abs(np.diff(poses, axis=0)).max(0), np.abs(np.diff(truth.q, axis=0)).max(0)
    worst = int(np.argmax(jump - true_jump))
    return {
        "q_error_body_mean_deg": _degrees(np.abs(poses[:, 3:] - truth.q[:, 3:]).mean()),
        "q_error_body_p99_deg": _degrees(np.percentile(np.abs(poses[:, 3:] - truth.q[:, 3:]), 99)),
        "q_error_pelvis_max_deg": _degrees(np.abs(poses[:, :3] - offset - truth.q[:, :3]).max()),
        "largest_jump_deg": _degrees(jump.max()),
        "true_largest_jump_deg": _degrees(true_jump.max()),
        "largest_excess_jump_deg": _degrees((jump - true_jump).max()),
        "largest_excess_jump_dof": C.DOF_NAMES[worst],
    }


def motion_kept(poses: np.ndarray, truth: MotionTruth) -> dict:
    """Range of motion and peak speed per moving DoF, as ratios to the truth's (min and median)."""
    moving = np.ptp(truth.q, axis=0) > np.radians(10)
    moving[:3] = False
    range_ratio = np.ptp(poses, axis=0)[moving] / np.ptp(truth.q, axis=0)[moving]
    speed = np.abs(np.diff(poses, axis=0)).max(0)[moving] / np.abs(np.diff(truth.q, axis=0)).max(0)[moving]
    return {
        "moving_dofs": int(moving.sum()),
        "range_ratio_min": round(float(range_ratio.min()), 4),
        "range_ratio_median": round(float(np.median(range_ratio)), 4),
        "peak_speed_ratio_min": round(float(speed.min()), 4),
        "peak_speed_ratio_median": round(float(np.median(speed)), 4),
    }


def run_ours(converter: SequenceConverter, path, truth: MotionTruth) -> tuple[dict, SkelSequence]:
    sequence = read_amass_npz(path)
    start = time.perf_counter()
    result = converter.convert(sequence)
    seconds = time.perf_counter() - start
    return {
        "frames": result.frames,
        "seconds": round(seconds, 2),
        "frames_per_s": round(result.frames / seconds, 3),
        "pve_mean_cm": round(float(result.pve_mean.mean() * 100), 3),
        "pve_max_cm": round(float(result.pve_max.max() * 100), 3),
        "frames_flagged": int((~result.passed).sum()),
        "beta_error_max": round(float(np.abs(result.betas - truth.betas).max()), 3),
        **quality(result.poses, truth),
    }, result


def seam_error(batched: SkelSequence, whole: SkelSequence, batch: int, overlap: int) -> dict:
    difference = np.degrees(np.abs(batched.poses - whole.poses)).max(axis=1)
    near = sorted({t for s in batch_starts(batched.frames, batch, overlap)[1:] for t in range(s - 2, s + 3)})
    return {
        "boundary_frames": near,
        "seam_error_max_deg": round(float(difference[near].max()) if near else 0.0, 4),
        "batched_vs_whole_max_deg_all_frames": round(float(difference.max()), 4),
        "batched_vs_whole_trans_max_mm": round(float(np.abs(batched.trans - whole.trans).max() * 1000), 3),
    }


def run_baseline(paths, path, truth: MotionTruth, frames: int, batch: int, device: torch.device) -> dict:
    """The authors' fitter over the first `frames` frames, `batch` at a time, as their aligner runs a sequence."""
    sequence = read_amass_npz(path)
    data = read_skel_model(paths.skel(truth.gender))
    skel, smpl = SKELLayer(data).to(device), build_smpl(paths.smpl_for(sequence.gender)).to(device)
    regressor = torch.as_tensor(data.J_regressor_osim.toarray(), dtype=torch.float32, device=device)
    params = sequence.smpl_params()
    q, seconds, pve_mean, pve_max = [], 0.0, [], []
    for first in range(0, frames, batch):
        p = params[first : min(first + batch, frames)].to(device)
        vertices = posed_vertices(smpl, p)
        result = fit_baseline(skel, regressor, smpl.lbs_weights, vertices, p.global_orient, p.betas, p.transl)
        seconds += result.seconds
        print(f"baseline frames {first}..{first + len(vertices) - 1}: {result.seconds:.1f} s", flush=True)
        with torch.no_grad():
            errors = (skel(result.q, result.betas, result.trans).skin_verts - vertices).norm(dim=-1)
        q.append(result.q.cpu().numpy())
        pve_mean.append(errors.mean(-1).cpu().numpy())
        pve_max.append(errors.max(-1).values.cpu().numpy())
    poses = np.concatenate(q).astype(np.float64)
    head = MotionTruth(truth.name, truth.gender, truth.q[:frames], truth.betas, truth.trans[:frames], truth.frame_rate)
    boundaries = list(range(batch, frames, batch))
    return {
        "frames": frames,
        "batch": batch,
        "seconds": round(seconds, 2),
        "seconds_per_frame": seconds / frames,
        "pve_mean_cm": round(float(np.concatenate(pve_mean).mean() * 100), 3),
        "pve_max_cm": round(float(np.concatenate(pve_max).max() * 100), 3),
        "jump_at_batch_boundaries_deg": [_degrees(np.abs(poses[t] - poses[t - 1]).max()) for t in boundaries],
        **quality(poses, head),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=STORAGE.models)
    parser.add_argument(
        "--motion-dir", default=STORAGE.bench_file("motion"), help="the synthetic motions (made if absent)"
    )
    parser.add_argument("--out", default=STORAGE.bench_file("sequences.json"))
    parser.add_argument("--frames", type=int, default=90, help="frames per synthetic motion (30 per second)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--overlap", type=int, default=8)
    parser.add_argument("--baseline-frames", type=int, default=32)
    parser.add_argument("--baseline-batch", type=int, default=16)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    paths = ensure_synthetic_models(args.models)
    motion_dir = Path(args.motion_dir)
    if not all((motion_dir / "sequences" / f"{name}.npz").is_file() for name in MOTIONS):
        write_motion_sequences(paths, motion_dir, frames=args.frames)
    fit = SkelFitConfig(device=str(device))
    configs = {
        "batched": SequenceConfig(batch_size=args.batch, overlap=args.overlap, fit=fit),
        "whole": SequenceConfig(batch_size=100_000, fit=fit),
        "unsmoothed": SequenceConfig(batch_size=args.batch, overlap=args.overlap, smoothness=0.0, fit=fit),
    }
    converters = {name: SequenceConverter(paths, config) for name, config in configs.items()}
    motions = {}
    for name in MOTIONS:
        path, truth = motion_dir / "sequences" / f"{name}.npz", read_truth(motion_dir / "truth" / f"{name}.npz")
        runs, results = {}, {}
        for run, converter in converters.items():
            runs[run], results[run] = run_ours(converter, path, truth)
        motions[name] = {
            **runs,
            "seams": seam_error(results["batched"], results["whole"], args.batch, args.overlap),
            "motion_kept_smoothed": motion_kept(results["batched"].poses, truth),
            "motion_kept_unsmoothed": motion_kept(results["unsmoothed"].poses, truth),
            "smpl_fit_pve_mean_cm_of_the_input": round(float(read_truth_pve(motion_dir, name) * 100), 3),
        }
        print(name, motions[name], flush=True)
    walking = motion_dir / "sequences" / "walking.npz"
    truth = read_truth(motion_dir / "truth" / "walking.npz")
    baseline = run_baseline(paths, walking, truth, args.baseline_frames, args.baseline_batch, device)
    ours_per_frame = motions["walking"]["batched"]["seconds"] / motions["walking"]["batched"]["frames"]
    result = {
        "what": "SMPL motion sequences -> SKEL: ours (sequence converter) vs the SKEL authors' fitter, same run",
        "device": str(device),
        "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "batch": args.batch,
        "overlap": args.overlap,
        "smoothness": configs["batched"].smoothness,
        "motions": motions,
        "baseline_walking": baseline,
        "ratio_per_frame_cost_baseline_over_ours": round(baseline["seconds_per_frame"] / ours_per_frame, 1),
    }
    write_result(args.out, result)


def read_truth_pve(motion_dir: Path, name: str) -> float:
    """How closely the synthetic SMPL input follows the true SKEL skin (mean over frames, metres)."""
    with np.load(motion_dir / "truth" / f"{name}.npz", allow_pickle=False) as data:
        return float(data["smpl_fit_pve_mean"].mean())


if __name__ == "__main__":
    main()
