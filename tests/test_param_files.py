"""CameraHMR/BEDLAM-style parameter files: read into PersonSample records, converted into the label
table exactly as the same people are from HMR2.0 tars."""

from __future__ import annotations

import numpy as np
import pytest

from hsmr_data import conversion, label_table
from hsmr_data.conversion import ConvertConfig
from hsmr_data.hmr2_format import read_shards
from hsmr_data.param_files import read_param_file
from hsmr_data.quarantine import Quarantine
from hsmr_model.skel_fit import SkelFitConfig
from tests.test_convert_flow import synthetic_dataset


@pytest.fixture(scope="module")
def tar_people(model_paths, tmp_path_factory):
    dataset_dir = synthetic_dataset(model_paths, tmp_path_factory)
    return dataset_dir, list(read_shards(sorted((dataset_dir / "shards").glob("*.tar")), "synth", Quarantine()))


def write_param_file(people, folder, **overrides) -> None:
    """The people as a CameraHMR-style file: pose (N, 72), shape (N, 11), one scale, keypoints, cam_int."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    for person in people:
        (images / f"{person.key}.jpg").write_bytes(person.image_jpeg)
    arrays = {
        "imgname": np.array([f"images/{p.key}.jpg" for p in people]),
        "center": np.stack([p.center for p in people]),
        "scale": np.array([p.scale.max() for p in people]),
        "pose": np.stack([np.concatenate([p.global_orient, p.body_pose]) for p in people]),
        "shape": np.stack([np.concatenate([p.betas, [0.5]]) for p in people]),  # BEDLAM keeps 11
        "gt_keypoints": np.stack([p.keypoints_2d for p in people]),
        "cam_int": np.repeat(np.diag([5000.0, 5000.0, 1.0])[None], len(people), axis=0),
    }
    np.savez(folder / "params.npz", **{**arrays, **overrides})


def test_reader_maps_every_field(tar_people, tmp_path):
    _, people = tar_people
    write_param_file(people, tmp_path)
    quarantine = Quarantine()
    read = list(read_param_file(tmp_path / "params.npz", "bedlam", tmp_path, quarantine=quarantine))
    assert len(quarantine) == 0 and len(read) == len(people)
    for original, sample in zip(people, read, strict=True):
        assert sample.key == f"images/{original.key}" and sample.dataset == "bedlam"
        for field in ("global_orient", "body_pose", "betas", "center", "keypoints_2d"):
            assert np.allclose(getattr(sample, field), getattr(original, field)), field
        assert sample.image_jpeg == original.image_jpeg
        assert np.allclose(sample.extra_info["cam_int"], np.diag([5000.0, 5000.0, 1.0]))


def test_bad_rows_and_files_are_quarantined(tar_people, tmp_path):
    _, people = tar_people
    pose = np.stack([np.concatenate([p.global_orient, p.body_pose]) for p in people])
    pose[1, 5] = np.nan
    write_param_file(people, tmp_path, pose=pose)
    (tmp_path / "images" / f"{people[2].key}.jpg").unlink()
    quarantine = Quarantine()
    read = list(read_param_file(tmp_path / "params.npz", "bedlam", tmp_path, quarantine=quarantine))
    assert len(read) == len(people) - 2
    reasons = {entry.key: entry.reason for entry in quarantine.entries}
    assert "NaN" in reasons[f"images/{people[1].key}_{people[1].person_id}"]
    assert "not found" in reasons[f"images/{people[2].key}_{people[2].person_id}"]

    np.savez(tmp_path / "no_shape.npz", imgname=np.array(["a.jpg"]), center=np.zeros((1, 2)), scale=np.ones(1))
    quarantine = Quarantine()
    assert list(read_param_file(tmp_path / "no_shape.npz", "bedlam", tmp_path, quarantine=quarantine)) == []
    assert quarantine.entries[0].key is None and "pose, shape" in quarantine.entries[0].reason


@pytest.mark.slow
def test_param_file_converts_like_the_tars(tar_people, model_paths, tmp_path):
    dataset_dir, people = tar_people
    write_param_file(people, tmp_path / "bedlam")
    models_root = str(model_paths.smpl.parent.parent)
    fit = SkelFitConfig(device="cpu")
    from_tars = ConvertConfig(str(dataset_dir), str(tmp_path / "tars"), models_root, "synth", fit=fit)
    from_params = ConvertConfig(str(tmp_path / "bedlam"), str(tmp_path / "params"), models_root, "bedlam", fit=fit)
    for config in (from_tars, from_params):
        outcomes = conversion.convert_dataset(config)
        assert {o.status for o in outcomes} == {"committed"}
    tars = label_table.read_labels(from_tars.table_uri).to_pandas()
    params = label_table.read_labels(from_params.table_uri).to_pandas()
    assert len(params) == len(people) and set(params["chunk_id"]) == {f"bedlam/{tmp_path / 'bedlam' / 'params.npz'}"}
    tars["sample_id"] = "images/" + tars["sample_id"]
    merged = tars.merge(params, on="sample_id", suffixes=("_tar", "_param"))
    assert len(merged) == len(people)
    # One batch of four here, four batches of one from the tars: equal up to float32 batch numerics
    # (the camera depth, tens of metres for a small box, relatively).
    for column in ("q", "betas", "trans"):
        assert np.allclose(
            np.stack(merged[f"{column}_tar"]), np.stack(merged[f"{column}_param"]), rtol=1e-3, atol=2e-3
        ), column
    assert (merged["passed_tar"] == merged["passed_param"]).all()
