"""The `predict` flow: a trained HSMR network on people outside its training, HMR2.0-style tars or images.

Thin wiring around `hsmr_data.predict`: one retried task (rerunning rewrites the same table), a
progress artifact while batches go by and a markdown artifact saying what was written.

    python -m flows.predict --checkpoint storage/runs/hsmr-tiny --dataset synth=storage/datasets/synth/test
    python -m flows.predict --checkpoint RUN --images DIR --boxes boxes.json --out predictions.parquet
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from hsmr_data import predict as P
from hsmr_data.layout import DEFAULT as STORAGE

FLOW_NAME = "predict"
DEFAULT_CHECKPOINT = STORAGE.run()  # the train-hsmr flow's default run


@task(name="predict", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE, persist_result=False)
def run_prediction(
    config: P.PredictConfig,
    datasets: list[str] | None,
    images: str | None,
    boxes: str | None,
    out: str,
    overlays: str | None,
) -> dict[str, Any]:
    predictor = P.Predictor(config)
    progress = create_progress_artifact(0.0, description="people predicted (batches of the run)")
    done = {"people": 0}

    def on_batch(count: int) -> None:
        done["people"] += count
        update_progress_artifact(progress, min(99.0, float(done["people"])))  # the total is not known ahead

    if images is not None:
        result = P.predict_images(predictor, images, boxes, out, overlays, on_batch)
    else:
        result = P.predict_dataset(predictor, datasets, out, on_batch)
    update_progress_artifact(progress, 100.0)
    return asdict(result)


@flow(name=FLOW_NAME, persist_result=False)
def predict_flow(
    checkpoint: str = DEFAULT_CHECKPOINT,
    datasets: list[str] | None = None,
    images: str | None = None,
    boxes: str | None = None,
    out: str = STORAGE.predictions,
    overlays: str | None = None,
    models_root: str = STORAGE.models,
    batch_size: int = 32,
    device: str = "auto",
) -> dict[str, Any]:
    """The network of `checkpoint` (a run folder) on every person of `datasets` (NAME=SPEC each) or of the
    images in `images` with the people of `boxes` (boxes.json); overlays PNGs into `overlays` if given."""
    if (images is None) == (not datasets):
        raise ValueError("give either datasets (NAME=SPEC) or images with boxes")
    if images is not None and boxes is None:
        raise ValueError("images need boxes: a boxes.json of each image's people (see hsmr_data.predict)")
    config = P.PredictConfig(checkpoint, models_root, batch_size, device)
    result = run_prediction(config, datasets, images, boxes, out, overlays)
    get_run_logger().info("%d people predicted by step %d → %s", result["count"], result["step"], result["predictions"])
    lines = [f"# Predictions of {checkpoint} (step {result['step']})", "", f"- table: `{result['predictions']}`"]
    lines += [f"- people: {result['count']}", f"- quarantined: {result['quarantined']}"]
    lines += [f"- overlay: `{path}`" for path in result.get("overlays", [])[:20]]
    create_markdown_artifact("\n".join(lines), description=f"{FLOW_NAME}: {out}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="a training run folder or its checkpoint.pt")
    parser.add_argument("--dataset", action="append", help="NAME=SPEC of HMR2.0-style tars (repeatable)")
    parser.add_argument("--images", help="a folder of images (with --boxes)")
    parser.add_argument("--boxes", help="boxes.json: image name → its people's boxes")
    parser.add_argument("--out", default=STORAGE.predictions)
    parser.add_argument("--overlays", help="folder for one overlay PNG per image")
    parser.add_argument("--models", default=STORAGE.models)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    result = predict_flow(
        args.checkpoint, args.dataset, args.images, args.boxes, args.out, args.overlays, args.models,
        args.batch_size, args.device,
    )  # fmt: skip
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    from flows.settings import local_prefect_settings

    with local_prefect_settings():
        sys.exit(main())
