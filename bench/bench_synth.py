"""Synthetic-world throughput against its budgets, measured in one run.

- Rendering: seconds per 256×256 image of the posed SKEL skin (rasterise + shade + background),
  against the budget of 0.1 s on one core (the ratio budget / ours is the figure to quote).
- Generation: people per second for `--count` people end to end (poses, SMPL pseudo-GT fit,
  rendering, JPEG, tars, truth), against the budget of 1,000 people in 120 s on 2 cores; the
  time split per stage shows where it goes.

    python bench/bench_synth.py --models storage/models --out storage/bench/synth.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from dataclasses import asdict

import numpy as np
import torch
from results import write_result  # bench/ is on sys.path when a script runs

from hsmr_data.layout import DEFAULT as STORAGE
from hsmr_data.render import rasterize, shade
from hsmr_data.synthetic.poses import sample_true_poses
from hsmr_data.synthetic.world import SynthConfig, WorldModels, clothing_colours, cluttered_background, generate_dataset
from hsmr_model.model_files import BodyModelPaths

RENDER_BUDGET_S = 0.1
GENERATION_BUDGET_S_PER_1000 = 120.0


def bench_render(models: WorldModels, repeats: int = 30) -> dict:
    rng = np.random.default_rng(0)
    poses = sample_true_poses(repeats, rng)
    with torch.no_grad():
        skin = models.skel(torch.as_tensor(poses.q, dtype=torch.float32), torch.as_tensor(poses.betas).float())
    vertices = skin.skin_verts.numpy().astype(np.float64) + np.array([0.0, 0.0, 40.0])
    faces = models.skel.faces.numpy()
    times = []
    for v in vertices:
        start = time.perf_counter()
        raster = rasterize(v, faces, 5000.0, (128.0, 128.0), (256, 256))
        colours = clothing_colours(models.vertex_part, models.rest_vertices, rng)
        shade(raster, v, faces, colours, cluttered_background(256, rng))
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "median_s_per_image": round(median, 5),
        "budget_s": RENDER_BUDGET_S,
        "budget_over_ours": round(RENDER_BUDGET_S / median, 1),
    }


def bench_generation(paths: BodyModelPaths, count: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        summary = generate_dataset(paths, folder, SynthConfig(count=count))
        seconds = time.perf_counter() - start
    budget = GENERATION_BUDGET_S_PER_1000 * count / 1000
    return {
        "count": count,
        "seconds": round(seconds, 2),
        "people_per_s": round(count / seconds, 2),
        "budget_s": budget,
        "budget_over_ours": round(budget / seconds, 2),
        "seconds_per_person_by_stage": summary.seconds_per_sample,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=STORAGE.models)
    parser.add_argument("--out", default=STORAGE.bench_file("synth.json"))
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()
    paths = BodyModelPaths.from_root(args.models)
    torch.set_num_threads(1)  # the render budget is per core
    render = bench_render(WorldModels.load(paths))
    torch.set_num_threads(2)
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "torch_threads": 2},
        "render_256": render,
        "generation": bench_generation(paths, args.count),
        "config": asdict(SynthConfig(count=args.count)),
    }
    write_result(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
