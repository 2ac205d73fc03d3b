"""Running a trained network on held-out people: `hsmr predict` on tars and on an image folder, the
same columns as training's predictions, and the evaluation with its constant row."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from hsmr_data import evaluate as E
from hsmr_data import export
from hsmr_data import label_table as lt
from hsmr_data import predict as P
from hsmr_data.hmr2_format import read_shards
from hsmr_data.quarantine import Quarantine
from hsmr_data.synthetic.world import SynthConfig, generate_dataset
from hsmr_data.training import CHECKPOINT, TrainConfig, Trainer
from hsmr_data.truth_report import truth_label_rows
from hsmr_model.flip import flip_q, flip_trans


def truth_labels(dataset_dir: Path, uri: str) -> None:
    """A label table holding the world's true labels of a dataset folder."""
    truth = {row["sample_id"]: row for row in pq.read_table(dataset_dir / "truth/ground_truth.parquet").to_pylist()}
    lt.commit_chunk(uri, lt.validate_rows(truth_label_rows(truth, sorted(truth), "all")), "all")


@pytest.fixture(scope="module")
def run(model_paths, tmp_path_factory) -> dict:
    """A world of 6 training and 3 test people and a tiny network trained 2 steps on the training ones."""
    root = tmp_path_factory.mktemp("predict")
    config = SynthConfig(count=9, batch_size=9, test_fraction=1 / 3)
    generate_dataset(model_paths, root / "synth", config)
    truth_labels(root / "synth", str(root / "labels"))
    index = export.export_shards(str(root / "labels"), {"synth": str(root / "synth")}, root / "shards").index
    models = str(model_paths.smpl.parent.parent)
    train = TrainConfig((index,), str(root / "run"), models_root=models, steps=2, batch_size=2, device="cpu")
    Trainer(train).run()
    return {"root": root, "run": root / "run", "test": root / "synth" / "test", "models": models}


def test_predicts_held_out_tars_with_the_training_columns(run, tmp_path):
    predictor = P.Predictor(P.PredictConfig(str(run["run"]), run["models"], batch_size=2, device="cpu"))
    result = P.predict_dataset(predictor, [f"synth={run['test']}"], tmp_path / "test.parquet")
    assert (result.count, result.quarantined, result.step) == (3, 0, 2)
    table = pq.read_table(result.predictions)
    training = pq.read_table(run["run"] / "predictions.parquet")
    assert table.schema.equals(training.schema)
    truth = pq.read_table(run["test"] / "truth/ground_truth.parquet")
    assert table["sample_id"].to_pylist() == sorted(truth["sample_id"].to_pylist())
    # The un-augmented crop, batched or not: the same numbers as the network on one crop.
    samples = list(read_shards(sorted((run["test"] / "shards").glob("*.tar")), "synth", Quarantine()))
    alone = predictor.run([P.sample_crop(samples[0])])[0]
    row = table.slice(0, 1).to_pylist()[0]
    assert np.allclose(alone["q"], row["q"], atol=1e-5) and np.allclose(alone["cam_t"], row["cam_t"], atol=1e-4)

    report = E.evaluate(E.EvalConfig(str(run["test"]), None, run["models"], predictions_path=result.predictions))
    assert list(report["sources"]) == ["smpl_pseudo_gt", "constant", "network"]
    assert sum(report["samples"].values()) == 3
    markdown = E.to_markdown(report)
    assert "constant mean pose" in markdown and "Table 3" not in markdown and "No label table" in markdown


def test_flip_average_answers_a_mirrored_crop_with_the_mirrored_body(run):
    """Averaging with the mirrored crop makes the answer mirror-equivariant: the averaged answer on the
    mirrored crop is the averaged answer on the crop, mirrored (a plain network is not)."""
    predictor = P.Predictor(P.PredictConfig(str(run["run"]), run["models"], device="cpu", flip_average=True))
    plain = P.Predictor(P.PredictConfig(str(run["run"]), run["models"], device="cpu"))
    sample = next(iter(read_shards(sorted((run["test"] / "shards").glob("*.tar")), "synth", Quarantine())))
    crop = P.sample_crop(sample)
    mirrored = P.Crop(crop.sample_id, crop.dataset, crop.pixels[:, ::-1].copy(), crop.center, crop.side)
    one, other = predictor.run([crop])[0], predictor.run([mirrored])[0]
    assert np.allclose(flip_q(np.array(other["q"])), one["q"], atol=1e-4)
    assert np.allclose(flip_trans(np.array(other["cam_t"])), one["cam_t"], atol=1e-4)
    assert np.allclose(other["betas"], one["betas"], atol=1e-5)
    assert not np.allclose(flip_q(np.array(plain.run([mirrored])[0]["q"])), plain.run([crop])[0]["q"], atol=1e-4)


def test_a_checkpoint_rebuilds_its_own_network_after_the_named_sizes_change(run, monkeypatch):
    """The checkpoint stores its network; redefining "tiny" later must not break loading it."""
    from dataclasses import replace

    from hsmr_model import network as N

    original = P.Predictor(P.PredictConfig(str(run["run"]), run["models"], device="cpu")).model.config
    monkeypatch.setitem(N.VIT_CONFIGS, "tiny", replace(N.VIT_CONFIGS["tiny"], depth=3, stem_depth=2))
    reloaded = P.Predictor(P.PredictConfig(str(run["run"]), run["models"], device="cpu")).model.config
    assert reloaded == original and reloaded.backbone.depth == 2


def test_constant_pose_averages_the_pelvis_as_a_rotation():
    q = np.zeros((2, 46))
    q[:, 0] = [np.pi - 0.1, -np.pi + 0.1]  # both near a half turn, on either side of the wrap
    q[:, 6] = [0.2, 0.4]
    mean_q, mean_betas = E.constant_pose(q, np.array([[1.0] * 10, [3.0] * 10]), 4)
    assert mean_q.shape == (4, 46) and np.allclose(mean_betas, 2.0)
    assert np.isclose(abs(mean_q[0, 0]), np.pi, atol=1e-6)  # not 0, which the plain mean gives
    assert np.isclose(mean_q[0, 6], 0.3)


def test_predicts_an_image_folder_with_boxes_and_overlays(run, tmp_path):
    samples = list(read_shards(sorted((run["test"] / "shards").glob("*.tar")), "synth", Quarantine()))
    images, boxes = tmp_path / "images", {}
    images.mkdir()
    for i, sample in enumerate(samples[:2]):
        Image.open(io.BytesIO(sample.image_jpeg)).save(images / f"photo{i}.png")
        boxes[f"photo{i}.png"] = [{"center": sample.center.tolist(), "scale": float(sample.scale[0])}]
    boxes["photo1.png"].append({"box": [10, 20, 110, 220]})
    boxes["missing.jpg"] = [{"box": [0, 0, 10, 10]}]
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))

    predictor = P.Predictor(P.PredictConfig(str(run["run"] / CHECKPOINT), run["models"], device="cpu"))
    result = P.predict_images(predictor, images, tmp_path / "boxes.json", tmp_path / "out.parquet", tmp_path / "ov")
    assert (result.count, result.quarantined) == (3, 1)  # the missing image is reported, the rest go on
    rows = pq.read_table(result.predictions).to_pylist()
    assert [(r["image"], r["person"]) for r in rows] == [("photo0", 0), ("photo1", 0), ("photo1", 1)]
    assert rows[2]["box_side"] == pytest.approx(P.TIGHT_BOX_MARGIN * 200) and rows[2]["center"] == [60, 120]
    assert len(rows[0]["q"]) == 46 and len(rows[0]["betas"]) == 10 and len(rows[0]["cam_t"]) == 3
    # The same person through the tars and through the image folder: the same crop, the same prediction.
    from_tar = predictor.run([P.sample_crop(samples[0])])[0]
    assert np.allclose(from_tar["q"], rows[0]["q"], atol=1e-4)
    quarantine = json.loads((tmp_path / "out_quarantine.json").read_text())
    assert quarantine["entries"][0]["key"] == "missing.jpg"
    assert sorted(Path(p).name for p in result.overlays) == ["photo0_overlay.png", "photo1_overlay.png"]
    overlay = np.asarray(Image.open(result.overlays[0]))
    original = np.asarray(Image.open(images / "photo0.png").convert("RGB"))
    assert overlay.shape == original.shape and (overlay != original).any(-1).mean() > 0.01  # the body is drawn


def test_bad_boxes_name_the_problem(tmp_path):
    (tmp_path / "boxes.json").write_text(json.dumps({"a.jpg": [{"box": [5, 5, 1, 1]}]}))
    with pytest.raises(ValueError, match="a.jpg person 0: box"):
        P.read_boxes(tmp_path / "boxes.json")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        P.checkpoint_path(tmp_path)


@pytest.mark.slow
def test_predict_flow_and_its_deployment(prefect_api, run, tmp_path):
    from flows.predict import predict_flow
    from flows.serve import deployments

    out = tmp_path / "flow.parquet"
    config = P.PredictConfig(
        str(run["run"]), run["models"], device="cpu", datasets=(f"synth={run['test']}",), out=str(out)
    )
    result = predict_flow(config)
    assert result["count"] == 3 and pq.read_table(out).num_rows == 3
    with pytest.raises(ValueError, match="either"):
        predict_flow(P.PredictConfig(str(run["run"]), run["models"]))
    assert "predict/local" in {f"{d.flow_name}/{d.name}" for d in deployments()}


def test_cli_predicts_tars_and_refuses_a_missing_input(run, tmp_path, capsys):
    from hsmr_data.cli import main

    out = tmp_path / "cli.parquet"
    args = ["predict", "--checkpoint", str(run["run"]), "--models", run["models"], "--device", "cpu"]
    assert main([*args, "--dataset", f"synth={run['test']}", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 3 and pq.read_table(out).num_rows == 3
    assert main([*args, "--images", str(tmp_path)]) == 2  # images without boxes
    assert "--boxes" in capsys.readouterr().err


def test_cli_plots_learning_curves(run, tmp_path, capsys):
    from hsmr_data.cli import main

    out = tmp_path / "curves.png"
    assert (
        main(["curves", "--run", f"tiny={run['run']}", "--run", str(run["run"] / "metrics.jsonl"), "--out", str(out)])
        == 0
    )
    assert Image.open(out).size[0] > 0 and "written" in capsys.readouterr().out
