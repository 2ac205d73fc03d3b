"""The `train-hsmr` flow: train the HSMR network on exported shards, resuming from the last checkpoint.

Thin wiring around `hsmr_data.train_run.run_step` (the front door `hsmr train` calls too): its progress
helper shows the steps as a progress artifact, and the flow adds the loss curve and throughput as a table
artifact at the end. A run started again on the same out_dir continues from its checkpoint (the
Trainer's own resume), so retries and restarts never start over. With `nproc` > 1 the run is DDP under
torchrun (one process per GPU, gloo processes on a CPU), followed through its metrics file. The flow's
one parameter is `hsmr_data.train_run.TrainOptions`:

    python -m flows.train                        # the demo's export, a tiny network on the CPU
    python -m flows.train --index storage/shards/v1/index.json --out storage/runs/tiny --steps 300
    prefect deployment run train-hsmr/local -p config='{"nproc": 8, "loader_workers": 6, "refine_every": 230}'
"""

import argparse
import json
import sys
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.settings import artifact_key
from hsmr_data import train_run
from hsmr_data.options import add_options, options_from_args
from hsmr_data.train_run import TrainOptions

FLOW_NAME = "train-hsmr"
DEMO = TrainOptions()  # the latest export under storage/shards, a tiny network into storage/runs/hsmr-demo


@flow(name=FLOW_NAME, persist_result=False)
def train_hsmr(config: TrainOptions = DEMO) -> dict[str, Any]:
    """Train on the datasets of `config.indexes` (default: the latest export) mixed by `config.weights`, with
    the settings of `config.recipe` ("paper", "cpu"; None: TrainConfig's defaults) where a field is None.

    With `refine_every` > 0, SKELify refines the labels of `table_uri` inside training (HSMR: after
    5000 steps, every 230 steps, on the latest 18,000 predictions) and training reads the new labels;
    each committed round rewrites the label dashboard (`dashboard_path`, default `{table_uri}-dashboard.html`).
    `nproc` > 1: DDP in that many processes; `batch_size` is the global batch, split evenly over them.
    """
    logger = get_run_logger()
    logger.info("training into %s in %d process(es)", config.out_dir, config.nproc)
    curve: list[dict] = []

    def on_log(record: dict) -> None:
        curve.append(record)
        logger.info("step %d loss %.4f (%.1f images/s)", record["step"], record["loss"], record["images_per_s"])

    result = train_run.run_step(config, on_log=on_log)
    rows = [{k: round(v, 5) if isinstance(v, float) else v for k, v in record.items()} for record in curve]
    if rows:
        create_table_artifact(
            rows, key=artifact_key("train", config.out_dir), description=f"losses of {config.out_dir}"
        )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.train", description=__doc__.split("\n\n")[0])
    add_options(parser, TrainOptions)
    report = train_hsmr(options_from_args(TrainOptions, parser.parse_args(argv)))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    from flows.settings import local_prefect_settings

    with local_prefect_settings():
        sys.exit(main())
