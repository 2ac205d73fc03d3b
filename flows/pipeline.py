"""The `pipeline` flow: the whole data engine on the synthetic default, each step a flow of its own.

synthetic models and dataset → convert-smpl-to-skel (fit + quality filters, round 0) → export-shards
→ train-hsmr (with SKELify refinement inside training) → refine-round (on the final predictions) →
evaluation report → predict (the network on the held-out test people) and their report →
label-dashboard. Every step resumes: the dataset is kept while its manifest
exists, conversion and refinement skip what the label table records as committed, the export skips
finished shards and training continues from its checkpoint; so a rerun after a crash redoes only
what is missing.

    make demo                       # = python -m flows.pipeline
    python -m flows.pipeline --root storage --count 256 --train-steps 300
    prefect deployment run pipeline/local -p config='{"count": 64}'
"""

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger

from flows.convert import convert_smpl_to_skel
from flows.dashboard import label_dashboard
from flows.export import export_shards
from flows.predict import predict_flow
from flows.refine import refine_round_flow
from flows.train import train_hsmr
from hsmr_data import evaluate
from hsmr_data.conversion import ConvertOptions
from hsmr_data.dashboard import DashboardConfig
from hsmr_data.evaluate import EvalConfig
from hsmr_data.export import ExportConfig
from hsmr_data.layout import DEFAULT as STORAGE
from hsmr_data.layout import DEMO_DATASET, DataRoot
from hsmr_data.options import add_options, options_from_args
from hsmr_data.predict import PredictConfig
from hsmr_data.refine import RefineOptions
from hsmr_data.synthetic.body_models import ensure_synthetic_models
from hsmr_data.synthetic.world import HELD_OUT, SynthConfig, generate_dataset
from hsmr_data.train_run import TrainOptions

FLOW_NAME = "pipeline"
DATASET = DEMO_DATASET


def pipeline_paths(root: str | Path) -> dict[str, str]:
    """Where each step reads and writes under the data root (`hsmr_data.layout`)."""
    layout = DataRoot(str(root))
    return {
        "models": layout.models,
        "dataset": layout.dataset(DATASET),
        "table": layout.table(DATASET),
        "shards": layout.shards,
        "run": layout.run(),
        "reports": layout.reports,
        "test_reports": layout.report("test"),
        "dashboard": layout.dashboard,
    }


def ensure_dataset(dataset_dir: str, models_root: str, count: int, seed: int) -> dict[str, Any]:
    """The synthetic dataset (training people in dataset_dir, held-out ones in its val/ and test/),
    generated unless a complete one of the same size, seed and splits is there."""
    manifest = Path(dataset_dir) / "manifest.json"
    if manifest.exists():
        config = json.loads(manifest.read_text())["config"]
        if (config["count"], config["seed"], config.get("test_fraction")) == (count, seed, HELD_OUT):
            return {"dataset_dir": dataset_dir, "generated": False}
        raise ValueError(f"{dataset_dir} holds a dataset of {config['count']} people (seed {config['seed']}, test "
                         f"share {config.get('test_fraction', 0)}); asked for {count} (seed {seed}, test share "
                         f"{HELD_OUT}): choose another --root or remove it")  # fmt: skip
    paths = ensure_synthetic_models(models_root)
    config = SynthConfig(count=count, seed=seed, val_fraction=HELD_OUT, test_fraction=HELD_OUT)
    summary = generate_dataset(paths, dataset_dir, config)
    return {"dataset_dir": dataset_dir, "generated": True, "seconds": summary.seconds}


@dataclass(frozen=True)
class PipelineOptions:
    """The demo's settings: the synthetic world under `root`, the cpu recipe's network for a few minutes,
    refinement inside training."""

    root: str = field(default=STORAGE.root, metadata={"help": "data root (hsmr_data.layout)"})
    count: int = field(default=256, metadata={"help": "people in the synthetic dataset"})
    seed: int = 0
    recipe: Literal["paper", "cpu"] | None = field(default="cpu", metadata={"help": "hsmr train's --recipe"})
    train_steps: int = field(default=300, metadata={"help": "the cpu recipe on 2 CPU cores: ~0.4 s a step"})
    batch_size: int | None = field(default=None, metadata={"help": "default: the recipe's"})
    refine_warmup: int = 100
    refine_every: int = field(default=100, metadata={"help": "SKELify inside training every N steps (0: off)"})
    refine_latest: int = 256
    device: str = "auto"


DEMO = PipelineOptions()  # `make demo`: 256 people under storage/


@flow(name=FLOW_NAME, persist_result=False)
def pipeline(config: PipelineOptions = DEMO) -> dict[str, Any]:
    """Run every step on the synthetic world under `config.root`; returns where the results are."""
    root, count, seed, device = config.root, config.count, config.seed, config.device
    train_steps, batch_size = config.train_steps, config.batch_size
    refine_warmup, refine_every, refine_latest = config.refine_warmup, config.refine_every, config.refine_latest
    logger = get_run_logger()
    paths = pipeline_paths(root)
    ensure_synthetic_models(paths["models"])
    data = ensure_dataset(paths["dataset"], paths["models"], count, seed)
    logger.info("dataset %s (generated now: %s)", paths["dataset"], data["generated"])

    # The dashboard the demo prints is live from the first committed chunk on (it reloads itself).
    conversion = convert_smpl_to_skel(
        ConvertOptions(paths["dataset"], paths["table"], paths["models"], DATASET, device),
        dashboard_path=paths["dashboard"],
    )
    exported = export_shards(ExportConfig(paths["table"], {DATASET: paths["dataset"]}, paths["shards"]))
    trained = train_hsmr(
        TrainOptions(
            indexes=(exported["index"],),
            out_dir=paths["run"],
            models_root=paths["models"],
            recipe=config.recipe,
            steps=train_steps,
            batch_size=batch_size,
            device=device,
            refine_every=refine_every,
            refine_warmup=refine_warmup,
            refine_latest=refine_latest,
            table_uri=paths["table"],
            dataset_dir=paths["dataset"],
            dashboard_path=paths["dashboard"],
        )
    )
    refined = refine_round_flow(
        RefineOptions(trained["predictions"], paths["table"], paths["dataset"], DATASET, paths["models"], device),
        dashboard_path=paths["dashboard"],
    )
    evaluation = evaluate.run(
        EvalConfig(paths["dataset"], paths["table"], paths["models"], trained["predictions"], out_dir=paths["reports"])
    )
    test_dir = str(Path(paths["dataset"]) / "test")
    predicted = predict_flow(
        PredictConfig(
            trained["checkpoint"], paths["models"], device=device, datasets=(f"{DATASET}={test_dir}",),
            out=str(Path(paths["run"]) / "test_predictions.parquet"),
        )
    )  # fmt: skip
    held_out = evaluate.run(
        EvalConfig(test_dir, None, paths["models"], predicted["predictions"], out_dir=paths["test_reports"])
    )
    dashboard = label_dashboard(
        DashboardConfig(paths["table"], paths["dataset"], paths["models"], out_path=paths["dashboard"])
    )
    logger.info("dashboard: %s; report: %s", paths["dashboard"], evaluation.markdown_path)
    return {
        "label_table": paths["table"],
        "conversion": conversion["summary"],
        "export_index": exported["index"],
        "checkpoint": trained["checkpoint"],
        "refinement_rounds_in_training": trained["refinement_rounds"],
        "refine_round": {"round": refined["round"], "status": refined["status"]},
        "report": evaluation.markdown_path,
        "report_json": evaluation.json_path,
        "test_report": held_out.markdown_path,
        "test_report_json": held_out.json_path,
        "dashboard": dashboard["page"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__.split("\n\n")[0])
    add_options(parser, PipelineOptions)
    result = pipeline(options_from_args(PipelineOptions, parser.parse_args(argv)))
    print(json.dumps(result, indent=2))
    print(f"\nlabel-quality dashboard: {result['dashboard']}\nevaluation report:       {result['report']}")
    print(f"held-out test report:    {result['test_report']}")
    return 0


if __name__ == "__main__":
    from flows.settings import local_prefect_settings

    with local_prefect_settings():
        sys.exit(main())
