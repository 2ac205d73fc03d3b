"""The refiner study (`hsmr study refine`) as a benchmark: every variant's 3D label error against the truth
per prediction source, its share replaced, violations and seconds, in one run on this machine.

    python bench/study_refine.py --models storage/models --out storage/bench/study_refine.json

The JSON goes through bench/results.py; the markdown table next to it (.md).
"""

from __future__ import annotations

import argparse
import tempfile

from results import write_study  # bench/ is on sys.path when a script runs

from hsmr_data.layout import DEFAULT as STORAGE
from hsmr_data.refine_study import CASES, VARIANTS, StudyConfig, run_study, to_markdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=STORAGE.models)
    parser.add_argument("--out", default=STORAGE.bench_file("study_refine.json"))
    parser.add_argument("--people", type=int, default=256)
    parser.add_argument("--work", help="where the world and the network are written (default: a temporary folder)")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=CASES)
    parser.add_argument("--network-steps", type=int, default=StudyConfig.network_steps)
    parser.add_argument("--variants", nargs="+", help="names of VARIANTS to run (default: all)")
    args = parser.parse_args()
    chosen = VARIANTS if not args.variants else tuple(v for v in VARIANTS if v.name in args.variants)
    if args.variants and len(chosen) != len(args.variants):
        parser.error(f"unknown variant among {args.variants}; known: {[v.name for v in VARIANTS]}")
    with tempfile.TemporaryDirectory() as scratch:
        config = StudyConfig(args.models, args.work or scratch, people=args.people, cases=tuple(args.cases),
                             network_steps=args.network_steps, variants=chosen)  # fmt: skip
        result = run_study(config)
    write_study(args.out, result.to_json(), to_markdown(result))


if __name__ == "__main__":
    main()
