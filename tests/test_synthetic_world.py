"""The synthetic world: what it writes, that it is deterministic, and that images, keypoints and
pseudo-GT agree with the true bodies behind them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from hsmr_data.cli import main
from hsmr_data.hmr2_format import read_shards
from hsmr_data.quarantine import Quarantine
from hsmr_data.render import project, rasterize
from hsmr_data.synthetic import pseudo_gt
from hsmr_data.synthetic.world import SynthConfig, WorldModels, generate_dataset
from hsmr_model import skel_constants as C
from hsmr_model.body_models import SKEL_SEX

COUNT = 12


@pytest.fixture(scope="module")
def world(model_paths, tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    config = SynthConfig(count=COUNT, seed=1, hard_fraction=0.5, batch_size=6, shard_maxcount=5)
    summary = generate_dataset(model_paths, out, config)
    quarantine = Quarantine()
    samples = list(read_shards(summary.shards, "synth", quarantine))
    truth = pq.read_table(summary.ground_truth).to_pylist()
    return summary, samples, {row["sample_id"]: row for row in truth}, quarantine


@pytest.fixture(scope="module")
def models(model_paths):
    return WorldModels.load(model_paths)


def _true_skin(models, row) -> np.ndarray:
    q = torch.tensor([row["q"]], dtype=torch.float32)
    betas = torch.tensor([row["betas"]], dtype=torch.float32)
    trans = torch.tensor([row["trans"]], dtype=torch.float32)
    with torch.no_grad():
        return models.skel(q, betas, trans).skin_verts[0].double().numpy()


def test_writes_shards_truth_sheet_and_manifest(world):
    summary, samples, truth, quarantine = world
    assert len(quarantine) == 0
    assert len(summary.shards) == 3  # 12 images, 5 per shard
    assert [s.sample_id for s in samples] == sorted(truth)
    assert sum(summary.corruption_counts.values()) == COUNT
    sheet = Image.open(summary.contact_sheet)
    assert sheet.size == (1024, 768)  # 12 crops of 256 px, 4 a row
    manifest = json.loads((Path(summary.out_dir) / "manifest.json").read_text())
    assert manifest["config"]["count"] == COUNT and manifest["shards"] == summary.shards
    for sample in samples:
        image = Image.open(io.BytesIO(sample.image_jpeg))
        assert image.format == "JPEG" and image.size == (320, 320)
        assert (sample.keypoints_2d[:, 2] > 0).sum() >= 10


def test_truth_is_apart_from_what_the_pipeline_reads(world):
    summary, samples, truth, _ = world
    assert "/truth/" in summary.ground_truth and all("/shards/" in s for s in summary.shards)
    row = next(iter(truth.values()))
    assert len(row["q"]) == C.NUM_DOFS and len(row["betas"]) == C.NUM_BETAS and row["sex"] == SKEL_SEX
    lower, upper = C.dof_limits()
    q = np.array([r["q"] for r in truth.values()])
    limited = np.isfinite(lower)
    assert ((q[:, limited] >= lower[limited] - 1e-9) & (q[:, limited] <= upper[limited] + 1e-9)).all()
    betas = np.array([r["betas"] for r in truth.values()])
    assert np.abs(betas).max() <= 3.0


def test_deterministic_for_a_seed(model_paths, tmp_path):
    config = SynthConfig(count=3, seed=5, batch_size=3)
    first = generate_dataset(model_paths, tmp_path / "a", config)
    second = generate_dataset(model_paths, tmp_path / "b", config)
    other = generate_dataset(model_paths, tmp_path / "c", SynthConfig(count=3, seed=6, batch_size=3))
    read = [open(s[0], "rb").read() for s in (first.shards, second.shards, other.shards)]
    assert read[0] == read[1] and read[0] != read[2]
    assert pq.read_table(first.ground_truth).equals(pq.read_table(second.ground_truth))


def test_silhouette_agrees_with_the_projected_mesh(world, models):
    _, samples, truth, _ = world
    faces = models.skel.faces.numpy()
    for sample in samples[:4]:
        row = truth[sample.sample_id]
        skin = _true_skin(models, row)
        raster = rasterize(skin, faces, row["image_focal"], tuple(row["center"]), (320, 320))
        uv = project(skin, row["image_focal"], tuple(row["center"]))
        inside = ((uv >= 0.5) & (uv < 319.5)).all(1)
        pixels = np.floor(uv[inside]).astype(int)
        # Every vertex lands on the silhouette or next to it (a vertex sits on triangle edges).
        dilated = raster.mask.copy()
        dilated[1:] |= raster.mask[:-1]
        dilated[:-1] |= raster.mask[1:]
        dilated[:, 1:] |= dilated[:, :-1].copy()
        dilated[:, :-1] |= dilated[:, 1:].copy()
        assert dilated[pixels[:, 1], pixels[:, 0]].all()
        rows, cols = np.nonzero(raster.mask)
        assert abs(rows.min() - uv[inside, 1].min()) < 2 and abs(cols.max() - uv[inside, 0].max()) < 2
        assert raster.mask.sum() > 2000


def test_keypoints_project_inside_the_person(world, models):
    _, samples, truth, _ = world
    faces = models.skel.faces.numpy()
    for sample in samples:
        row = truth[sample.sample_id]
        raster = rasterize(_true_skin(models, row), faces, row["image_focal"], tuple(row["center"]), (320, 320))
        true_2d = project(sample.keypoints_3d[:, :3].astype(np.float64), row["image_focal"], tuple(row["center"]))
        pixel = np.floor(true_2d).astype(int)
        in_image = ((pixel >= 0) & (pixel < 320)).all(1)
        on_body = raster.mask[pixel[in_image, 1], pixel[in_image, 0]]
        assert on_body.mean() > 0.9, sample.sample_id
        # The detections are noisy versions of these positions, within a few per cent of the box.
        seen = sample.keypoints_2d[:, 2] > 0
        error = np.linalg.norm(sample.keypoints_2d[seen, :2] - true_2d[seen], axis=1)
        assert np.median(error) < 0.05 * row["box_side"]


def test_crop_camera_is_focal_5000_on_the_crop(world):
    _, samples, truth, _ = world
    for sample in samples:
        row = truth[sample.sample_id]
        side = float(sample.scale[0]) * 200
        assert np.isclose(row["image_focal"] * 256 / side, 5000.0, rtol=1e-5)
        crop_xy = project(np.asarray(sample.keypoints_3d[:, :3], float), 5000.0, (128.0, 128.0))
        image_xy = project(np.asarray(sample.keypoints_3d[:, :3], float), row["image_focal"], tuple(sample.center))
        assert np.allclose((image_xy - sample.center) * 256 / side + 128, crop_xy, atol=1e-2)


def test_clean_pseudo_gt_is_close_and_corruption_is_recorded(world, models):
    _, samples, truth, _ = world
    for sample in samples:
        row = truth[sample.sample_id]
        assert row["smpl_fit_pve_mean"] < 0.04
        assert (row["corruption"] == "clean") == (row["corruption_level_deg"] == 0.0)
        if row["corruption"] == "clean":
            assert np.allclose(sample.body_pose, row["smpl_clean_body_pose"], atol=1e-5)
        else:
            assert not np.allclose(sample.body_pose, row["smpl_clean_body_pose"], atol=1e-3)


def test_hyperextension_bends_the_smpl_knees_backwards(models):
    fit = pseudo_gt.SmplFit(
        global_orient=np.zeros((2, 3)),
        body_pose=np.zeros((2, 69)),
        betas=np.zeros((2, 10)),
        transl=np.zeros((2, 3)),
        pve_mean=np.zeros(2),
    )
    for seed in range(20):  # until the knees are the chosen pair
        trial = pseudo_gt.SmplFit(**{k: v.copy() for k, v in vars(fit).items()})
        rng = np.random.default_rng(seed)
        corruption = pseudo_gt.corrupt(trial, ["hyperextension", "clean"], models.smpl_rest_joints, rng)
        knees = trial.body_pose[0].reshape(23, 3)[[3, 4]]  # SMPL joints 4 and 5
        if np.abs(knees).sum() > 0:
            break
    # Normal knee flexion is a positive rotation about x; these are negative, by the recorded level.
    assert (knees[:, 0] < 0).all()
    assert np.allclose(np.degrees(-knees[:, 0]), corruption.level_deg[0], atol=1e-4)
    assert corruption.level_deg[1] == 0.0 and np.abs(trial.body_pose[1]).sum() == 0.0


def test_cli_writes_a_dataset_and_synthesises_missing_models(tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["data", "synth", "--n", "2", "--out", str(out), "--models", str(tmp_path / "models")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["count"] == 2 and (out / "truth" / "ground_truth.parquet").is_file()
    assert (tmp_path / "models" / "skel" / "skel_male.pkl").is_file()


def test_held_out_splits_are_datasets_of_other_people(model_paths, tmp_path):
    config = SynthConfig(count=10, seed=2, hard_fraction=0.5, batch_size=4, val_fraction=0.2, test_fraction=0.3)
    summary = generate_dataset(model_paths, tmp_path / "synth", config)
    assert summary.count == 5 and {name: s["count"] for name, s in summary.splits.items()} == {"val": 2, "test": 3}
    keys = {}
    for split, folder in (
        ("train", tmp_path / "synth"),
        ("val", tmp_path / "synth/val"),
        ("test", tmp_path / "synth/test"),
    ):
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["split"] == split
        truth = pq.read_table(folder / "truth/ground_truth.parquet").to_pylist()
        samples = list(read_shards(sorted((folder / "shards").glob("*.tar")), "synth", Quarantine()))
        assert sorted(s.sample_id for s in samples) == sorted(row["sample_id"] for row in truth)
        keys[split] = {s.key for s in samples}
        if split != "train":
            assert manifest["hard_count"] == sum(row["split"] == "hard" for row in truth)
    assert sum(len(k) for k in keys.values()) == len(set().union(*keys.values())) == 10  # nobody twice
    with pytest.raises(ValueError, match="train on"):
        SynthConfig(count=4, val_fraction=0.5, test_fraction=0.5).split_counts()
