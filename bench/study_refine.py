"""The refiner study (`hsmr study refine`) as a benchmark: every variant's 3D label error against the truth
per prediction source, its share replaced, violations and seconds, in one run on this machine.

    python bench/study_refine.py --models storage/models --out storage/bench/study_refine.json

The JSON goes through bench/results.py; the markdown table next to it (.md).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import torch
from results import write_result  # bench/ is on sys.path when a script runs

from hsmr_data.refine_study import StudyConfig, run_study, to_markdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="storage/models")
    parser.add_argument("--out", default="storage/bench/study_refine.json")
    parser.add_argument("--people", type=int, default=256)
    parser.add_argument("--work", help="where the world is written (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        result = run_study(StudyConfig(args.models, args.work or scratch, people=args.people))
    figures = {
        **result.to_json(),
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }
    out = write_result(args.out, figures)
    markdown = to_markdown(result)
    Path(out).with_suffix(".md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
