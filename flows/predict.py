"""The `predict` flow: a trained HSMR network on people outside its training, HMR2.0-style tars or images.

Thin wiring around `hsmr_data.predict.run` (the front door `hsmr predict` calls too): one retried task
(rerunning rewrites the same table), whose progress helper shows the people as a progress artifact, and
a markdown artifact saying what was written. The flow's parameter is `hsmr_data.predict.PredictConfig`:

    python -m flows.predict --checkpoint storage/runs/hsmr-demo --dataset synth=storage/datasets/synth/test
    python -m flows.predict --checkpoint RUN --images DIR --boxes boxes.json --out predictions.parquet
"""

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from hsmr_data import predict
from hsmr_data.layout import DEFAULT as STORAGE
from hsmr_data.options import add_options, options_from_args
from hsmr_data.predict import PredictConfig

FLOW_NAME = "predict"
DEMO = PredictConfig(STORAGE.run())  # the train-hsmr flow's default run; datasets or images still to give


@task(name="predict", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE, persist_result=False)
def run_prediction(config: PredictConfig) -> dict[str, Any]:
    return asdict(predict.run(config))


@flow(name=FLOW_NAME, persist_result=False)
def predict_flow(config: PredictConfig = DEMO) -> dict[str, Any]:
    """The network of `config.checkpoint` (a run folder) on every person of `config.datasets` (NAME=SPEC each)
    or of the images in `config.images` with the people of `config.boxes` (boxes.json); overlay PNGs into
    `config.overlays` if given."""
    predict.check_inputs(config)  # before a task is retried
    result = run_prediction(config)
    get_run_logger().info("%d people predicted by step %d → %s", result["count"], result["step"], result["predictions"])
    lines = [f"# Predictions of {config.checkpoint} (step {result['step']})", "", f"- table: `{result['predictions']}`"]
    lines += [f"- people: {result['count']}", f"- quarantined: {result['quarantined']}"]
    lines += [f"- overlay: `{path}`" for path in result.get("overlays", [])[:20]]
    create_markdown_artifact("\n".join(lines), description=f"{FLOW_NAME}: {config.out}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.predict", description=__doc__.split("\n\n")[0])
    add_options(parser, PredictConfig, defaults=DEMO)
    result = predict_flow(options_from_args(PredictConfig, parser.parse_args(argv), DEMO))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    from flows.settings import local_prefect_settings

    with local_prefect_settings():
        sys.exit(main())
