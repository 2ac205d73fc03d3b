"""The CPU recipe learns: trained on synthetic people, the network beats the constant mean pose on people
it never saw. A CI-sized version of the README's held-out run (fewer people and steps)."""

from __future__ import annotations

import pytest

from hsmr_data import evaluate as E
from hsmr_data import export
from hsmr_data import predict as P
from hsmr_data.synthetic.world import SynthConfig, generate_dataset
from hsmr_data.training import Trainer, recipe
from tests.test_predict import truth_labels

PEOPLE = 200  # 160 to train on, 40 held out
STEPS = 500


def pooled(report: dict, source: str, metric: str) -> float:
    """A metric over both splits (normal and hard), weighted by their sample counts."""
    splits = report["sources"][source]["splits"]
    counts = {name: split["samples"] for name, split in splits.items()}
    return sum(splits[name][metric] * n for name, n in counts.items() if n) / sum(counts.values())


@pytest.mark.slow
def test_cpu_recipe_beats_the_constant_pose_on_held_out_people(model_paths, tmp_path):
    generate_dataset(model_paths, tmp_path / "synth", SynthConfig(count=PEOPLE, seed=11, test_fraction=0.2))
    # True labels: the conversion has tests of its own; this one is about what training makes of labels.
    truth_labels(tmp_path / "synth", str(tmp_path / "labels"))
    index = export.export_shards(str(tmp_path / "labels"), {"synth": str(tmp_path / "synth")}, tmp_path / "shards")
    models = str(model_paths.smpl.parent.parent)
    config = recipe(
        "cpu",
        indexes=(index.index,),
        out_dir=str(tmp_path / "run"),
        models_root=models,
        steps=STEPS,
        batch_size=16,
        warmup_steps=50,
        checkpoint_every=STEPS,
        loader_workers=0,
        device="cpu",
    )
    result = Trainer(config).run()
    assert result.step == STEPS

    predictor = P.Predictor(P.PredictConfig(str(tmp_path / "run"), models, device="cpu"))
    test_dir = tmp_path / "synth" / "test"
    predicted = P.predict_dataset(predictor, [f"synth={test_dir}"], tmp_path / "test.parquet")
    report = E.evaluate(E.EvalConfig(str(test_dir), None, models, predictions_path=predicted.predictions))
    assert sum(report["samples"].values()) == 40
    network, constant = (pooled(report, key, "pa_mpjpe_mm") for key in ("network", "constant"))
    print(f"held-out PA-MPJPE: network {network:.1f} mm, constant mean pose {constant:.1f} mm")
    assert network < constant
    assert pooled(report, "network", "mpjpe_mm") < pooled(report, "constant", "mpjpe_mm")
