"""What limits a trained network (`hsmr_data.lifting_study`): its grid keypoints against the detections,
and an image-free keypoint lifter fed the detections, noisy detections and the network's keypoints.

    python bench/study_lifting.py --checkpoint RUN --train-index SHARDS/index.json \
        --heldout DATASET/test --models storage/models --out storage/bench/study_lifting.json

The JSON goes through bench/results.py, the markdown table next to it (.md).
"""

from __future__ import annotations

import argparse

from results import write_study  # bench/ is on sys.path when a script runs

from hsmr_data.layout import DEFAULT as STORAGE
from hsmr_data.lifting_study import LiftingStudyConfig, run_lifting_study, to_markdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a training run folder or its checkpoint.pt")
    parser.add_argument("--train-index", required=True, help="the export's index.json the run trained on")
    parser.add_argument("--heldout", required=True, help="a folder of held-out tars (shards/) and their truth/")
    parser.add_argument("--models", default=STORAGE.models)
    parser.add_argument("--dataset", default=LiftingStudyConfig.dataset)
    parser.add_argument("--steps", type=int, default=LiftingStudyConfig.steps, help="lifter training steps")
    parser.add_argument("--device", default=LiftingStudyConfig.device, help='the network\'s: "auto", "cpu", "cuda"')
    parser.add_argument("--out", default=STORAGE.bench_file("study_lifting.json"))
    args = parser.parse_args()
    config = LiftingStudyConfig(
        args.checkpoint, args.train_index, args.heldout, args.models, args.dataset, args.steps, device=args.device
    )
    result = run_lifting_study(config)
    write_study(args.out, result.to_json(), to_markdown(result))


if __name__ == "__main__":
    main()
