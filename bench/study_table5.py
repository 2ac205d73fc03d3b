"""HSMR's Table 5 direction at this machine's scale (`hsmr_data.table5_study`): 88-D pose target vs Euler
angles × refinement inside training on vs off, the `cpu` recipe's small network, scored on held-out
synthetic people; one seed, so read differences of a few mm as noise.

    python bench/study_table5.py --models storage/models --out storage/bench/study_table5.json

On a GPU: `--device cuda` (the network stays the `cpu` recipe's; ViT-B was not run). The JSON goes through
bench/results.py, the markdown table next to it (.md). `--work DIR` keeps the world and the runs, and a
rerun reuses the finished ones.

The same study with one run is the README's held-out run of the `cpu` recipe (1,200 people, 240 of them
held out, 2,400 steps):

    python bench/study_table5.py --people 1200 --steps 2400 --pose-targets 88d --refinement off \
        --out storage/bench/study_learning.json
"""

from __future__ import annotations

import argparse
import tempfile

from results import write_study  # bench/ is on sys.path when a script runs

from hsmr_data.layout import DEFAULT as STORAGE
from hsmr_data.table5_study import Table5Config, run_table5, to_markdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=STORAGE.models)
    parser.add_argument("--out", default=STORAGE.bench_file("study_table5.json"))
    parser.add_argument("--people", type=int, default=Table5Config.people)
    parser.add_argument("--steps", type=int, default=Table5Config.steps)
    parser.add_argument("--refine-warmup", type=int, default=Table5Config.refine_warmup)
    parser.add_argument("--refine-every", type=int, default=Table5Config.refine_every)
    parser.add_argument("--pose-targets", default=",".join(Table5Config.pose_targets), help="e.g. 88d")
    parser.add_argument("--refinement", choices=("both", "off", "on"), default="both")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", help="where the world and the runs are written (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        config = Table5Config(
            args.models,
            args.work or scratch,
            people=args.people,
            steps=args.steps,
            refine_warmup=args.refine_warmup,
            refine_every=args.refine_every,
            device=args.device,
            pose_targets=tuple(args.pose_targets.split(",")),
            refinement={"both": (False, True), "off": (False,), "on": (True,)}[args.refinement],
        )
        result = run_table5(config)
    write_study(args.out, result.to_json(), to_markdown(result))


if __name__ == "__main__":
    main()
