"""The training loader and loop: deterministic batches, augmentation that keeps labels consistent,
checkpoints that a killed process resumes from to the same parameters."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from hsmr_data import export
from hsmr_data import label_table as lt
from hsmr_data.synthetic.world import SynthConfig, generate_dataset
from hsmr_data.train_data import (
    AugmentConfig,
    MixedSampler,
    SampleAugmentation,
    ShardDataset,
    TrainingBatches,
    augment_images,
    augment_labels,
    unaugment_q,
)
from hsmr_data.training import CHECKPOINT, RECIPES, TrainConfig, Trainer, learning_rate, make_config, recipe
from hsmr_data.truth_report import truth_label_rows
from hsmr_model.pose_repr import bone_rotations


@pytest.fixture(scope="module")
def labelled(model_paths, tmp_path_factory) -> tuple[str, Path]:
    """A tiny synthetic dataset and a label table holding its true labels: (table URI, dataset folder)."""
    root = tmp_path_factory.mktemp("train")
    generate_dataset(model_paths, root / "synth", SynthConfig(count=8, batch_size=8, shard_maxcount=4))
    truth = {row["sample_id"]: row for row in pq.read_table(root / "synth/truth/ground_truth.parquet").to_pylist()}
    uri = str(root / "labels")
    lt.commit_chunk(uri, lt.validate_rows(truth_label_rows(truth, sorted(truth), "all")), "all")
    return uri, root / "synth"


@pytest.fixture(scope="module")
def index(labelled, tmp_path_factory) -> str:
    uri, dataset_dir = labelled
    return export.export_shards(uri, {"synth": str(dataset_dir)}, tmp_path_factory.mktemp("shards"), maxcount=3).index


def _config(index, model_paths, out_dir, **overrides) -> TrainConfig:
    base = TrainConfig(
        indexes=(index,),
        out_dir=str(out_dir),
        models_root=str(model_paths.smpl.parent.parent),
        steps=6,
        batch_size=4,
        checkpoint_every=2,
        log_every=1,
    )
    return replace(base, **overrides)


def test_sampler_is_a_function_of_seed_and_step():
    sampler = MixedSampler([5, 100], [0.0, 1.0], batch_size=8, seed=3)
    assert sampler.batch(7) == sampler.batch(7) and sampler.batch(7) != sampler.batch(8)
    assert {dataset for dataset, _ in sampler.batch(0)} == {1}  # weight 0 never drawn
    with pytest.raises(ValueError, match="weight"):
        MixedSampler([5], [1.0, 1.0], batch_size=2)


def test_dataset_reads_every_exported_sample(index):
    dataset = ShardDataset.from_index(index)
    assert len(dataset) == 8
    entries = dataset.read(5)
    assert set(entries) == {"jpg", "npz", "json"}
    assert Image.open(io.BytesIO(entries["jpg"])).size == (256, 256)


def _only(**fields) -> AugmentConfig:
    return replace(AugmentConfig.off(), **fields)


def test_rotation_turns_keypoints_and_global_orientation_together(index):
    dataset = ShardDataset.from_index(index)
    arrays = dataset.decoded(0).arrays
    augmentation = SampleAugmentation.draw(np.random.default_rng(4), _only(rotation_p=1.0, rotation_deg=30.0))
    labels = augment_labels([arrays], [augmentation])
    assert augmentation.rotation_deg != 0.0
    angle = np.radians(augmentation.rotation_deg)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    assert np.allclose(labels["keypoints_2d"][0, :, :2], arrays["keypoints_2d"][:, :2] @ rotation.T, atol=1e-5)
    # The body turned with the image: its global rotation changed by the same rotation about z.
    before = bone_rotations(torch.as_tensor(arrays["q"][None], dtype=torch.float64))[0, 0].numpy()
    after = bone_rotations(torch.as_tensor(labels["q"][:1]))[0, 0].numpy()
    assert np.allclose((after @ before.T)[:2, :2], rotation, atol=1e-5)
    # And back: the prediction on the rotated crop maps to the sample's own q.
    applied = {"flipped": False, "rotation_deg": augmentation.rotation_deg}
    assert np.allclose(unaugment_q(labels["q"][0], applied), arrays["q"], atol=1e-5)


def test_flip_uses_the_mirrored_labels(index):
    dataset = ShardDataset.from_index(index)
    sample = dataset.decoded(1)
    augmentation = SampleAugmentation.draw(np.random.default_rng(0), _only(flip_p=1.0))
    labels = augment_labels([sample.arrays], [augmentation])
    pixels = augment_images(sample.image[None], [augmentation])[0].numpy()
    assert augmentation.flipped
    assert np.allclose(labels["q"][0], sample.arrays["q_flip"])
    assert np.allclose(labels["keypoints_2d"][0], sample.arrays["keypoints_2d_flip"])
    original = sample.image.numpy().astype(np.float32) / 255
    assert np.allclose(pixels, original[:, :, ::-1], atol=1e-5)
    applied = {"flipped": True, "rotation_deg": 0.0}
    assert np.allclose(unaugment_q(labels["q"][0], applied), sample.arrays["q"], atol=1e-6)


def test_the_image_moves_with_its_keypoints():
    """A bright dot drawn at a keypoint is, after zoom, rotation, shift and flip, where the augmented
    keypoint says (the flipped labels mirror x, as the export writes them)."""
    size = 256
    image = torch.zeros(1, 3, size, size, dtype=torch.uint8)
    point = np.array([0.18, -0.27])  # normalised crop coordinates, the crop spans [-0.5, 0.5]
    column, row = ((point + 0.5) * size).astype(int)
    image[0, :, row - 2 : row + 3, column - 2 : column + 3] = 255
    for flipped in (False, True):
        augmentation = SampleAugmentation(flipped, 1.2, 25.0, np.array([0.03, -0.02]), np.ones(3))
        warped = augment_images(image, [augmentation])[0, 0].numpy()
        source = point * np.array([-1.0, 1.0]) if flipped else point
        expected = augmentation.linear() @ source + augmentation.shift
        rows, columns = np.nonzero(warped > 0.5)
        found = np.array([columns.mean() + 0.5, rows.mean() + 0.5]) / size - 0.5
        assert np.allclose(found, expected, atol=1.5 / size), (flipped, found, expected)


def test_decoded_cache_changes_no_batch(index):
    uncached, cached = ShardDataset.from_index(index), ShardDataset.from_index(index, cache_size=100)
    sampler = MixedSampler([len(uncached)], [1.0], batch_size=6, seed=2)
    plain = TrainingBatches([uncached], sampler, AugmentConfig())
    fast = TrainingBatches([cached], sampler, AugmentConfig())
    for step in (0, 1, 0):
        a, b = plain[step], fast[step]
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["q"], b["q"]) and a["meta"] == b["meta"]
    assert 0 < len(cached._decoded) <= len(cached)


def test_training_logs_checkpoints_and_keeps_predictions(index, model_paths, tmp_path):
    result = Trainer(_config(index, model_paths, tmp_path)).run()
    assert result.step == 6 and result.resumed_from == 0
    lines = Path(result.metrics).read_text().splitlines()
    assert len(lines) == 6 and all(np.isfinite(json.loads(line)["loss"]) for line in lines)
    predictions = pq.read_table(result.predictions).to_pylist()
    assert 1 <= len(predictions) <= 8 and len(predictions[0]["q"]) == 46 and len(predictions[0]["keypoints_2d"]) == 88
    again = Trainer(_config(index, model_paths, tmp_path)).run()
    assert again.resumed_from == 6 and again.step == 6  # nothing left to do


def _parameters(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def test_resume_in_process_equals_an_uninterrupted_run(index, model_paths, tmp_path):
    Trainer(_config(index, model_paths, tmp_path / "straight")).run()
    Trainer(_config(index, model_paths, tmp_path / "split")).run(stop_after=2)
    Trainer(_config(index, model_paths, tmp_path / "split")).run()
    straight, split = _parameters(tmp_path / "straight" / CHECKPOINT), _parameters(tmp_path / "split" / CHECKPOINT)
    assert all(torch.equal(straight[name], split[name]) for name in straight)


_TRAIN_SCRIPT = """
import sys, time
from hsmr_data.training import TrainConfig, Trainer
index, out, models, pause = sys.argv[1:5]
config = TrainConfig(indexes=(index,), out_dir=out, models_root=models, steps=8, batch_size=4,
                     checkpoint_every=2, log_every=1, cpu_threads=1)
trainer = Trainer(config)
original = trainer.save
def slow_save():
    path = original()
    time.sleep(float(pause))  # leaves a window after each checkpoint for the test to kill us in
    return path
trainer.save = slow_save
trainer.run()
"""


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_parameters(index, model_paths, tmp_path):
    models = str(model_paths.smpl.parent.parent)
    # One thread in every run: bit-equal parameters need the same float reductions, and an earlier test
    # may have left this process at another thread count.
    Trainer(_config(index, model_paths, tmp_path / "straight", steps=8, cpu_threads=1)).run()
    out = tmp_path / "killed"
    script = tmp_path / "train.py"
    script.write_text(_TRAIN_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen([sys.executable, str(script), index, str(out), models, "3"], env=env)
    deadline = time.time() + 240
    while not (out / CHECKPOINT).exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert process.poll() is None, "training finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = torch.load(out / CHECKPOINT, weights_only=True)["step"]
    assert 0 < killed_at < 8
    resumed = Trainer(_config(index, model_paths, out, steps=8, cpu_threads=1)).run()
    assert resumed.resumed_from == killed_at and resumed.step == 8
    straight, after = _parameters(tmp_path / "straight" / CHECKPOINT), _parameters(out / CHECKPOINT)
    assert all(torch.equal(straight[name], after[name]) for name in straight)


@pytest.mark.slow
def test_export_and_train_flows(prefect_api, labelled, model_paths, tmp_path):
    from flows.export import export_shards
    from flows.train import train_hsmr
    from hsmr_data.export import ExportConfig
    from hsmr_data.train_run import TrainOptions, latest_index

    uri, dataset_dir = labelled
    report = export_shards(ExportConfig(uri, {"synth": str(dataset_dir)}, str(tmp_path / "shards"), maxcount=3))
    assert report["index"] == latest_index(tmp_path / "shards")
    assert report["counts"]["synth"]["exported"] == 8
    models = str(model_paths.smpl.parent.parent)
    result = train_hsmr(
        TrainOptions(
            indexes=(report["index"],), out_dir=str(tmp_path / "run"), models_root=models, steps=3, batch_size=2,
            checkpoint_every=3,
        )
    )  # fmt: skip
    assert result["step"] == 3 and Path(result["checkpoint"]).is_file()
    with pytest.raises(FileNotFoundError, match="export-shards"):
        latest_index(tmp_path / "nothing")


def test_cli_exports_and_trains(labelled, model_paths, tmp_path, capsys):
    from hsmr_data.cli import main

    uri, dataset_dir = labelled
    assert main(["export", "--table", uri, "--dataset", f"synth={dataset_dir}", "--out", str(tmp_path / "s")]) == 0
    index = json.loads(capsys.readouterr().out)["index"]
    models = str(model_paths.smpl.parent.parent)
    args = ["train", "--index", index, "--out", str(tmp_path / "run"), "--models", models, "--steps", "2"]
    assert main([*args, "--batch-size", "2", "--checkpoint-every", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 2 and (tmp_path / "run" / CHECKPOINT).is_file()


def test_learning_rate_warms_up_then_follows_the_schedule():
    config = TrainConfig(indexes=(), out_dir="", steps=110, lr=1e-3, warmup_steps=10, lr_schedule="cosine")
    assert learning_rate(config, 0) == pytest.approx(1e-4) and learning_rate(config, 9) == pytest.approx(1e-3)
    assert learning_rate(config, 60) == pytest.approx(5e-4) and learning_rate(config, 110) == pytest.approx(0.0)
    assert learning_rate(replace(config, lr_schedule="constant"), 100) == 1e-3
    with pytest.raises(ValueError, match="lr_schedule"):
        replace(config, lr_schedule="linear")


def test_recipes_fill_what_a_run_leaves_unset():
    cpu = make_config("cpu", indexes=("i",), out_dir="o", steps=None, lr=None, batch_size=8)
    assert (cpu.size, cpu.lr, cpu.batch_size, cpu.steps) == ("small", RECIPES["cpu"]["lr"], 8, TrainConfig.steps)
    assert cpu.loss_weights.body_pose > cpu.loss_weights.kp3d  # the parameters are learned from their labels
    assert make_config(None, indexes=("i",), out_dir="o", lr=None).lr == TrainConfig.lr
    assert recipe("paper", indexes=("i",), out_dir="o").lr == 1e-5
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe("gpu", indexes=("i",), out_dir="o")
