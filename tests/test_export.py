"""Training shards: round trip, filtered people, plain webdataset reading, determinism, resume, the index.

One tiny synthetic dataset (6 people in two source shards) and one label table with two versions:
version 1 labels people 0-2 (2 has NaN betas and fails the β filter), version 2 adds 3 (fails maxPVE),
4 (fails the keypoint filter) and a label for a person no shard holds; person 5 is never labelled.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds
from PIL import Image

from hsmr_data import export
from hsmr_data import label_table as lt
from hsmr_data.datasets import DatasetSpec
from hsmr_data.geometry import crop_image
from hsmr_data.hmr2_format import read_shards, write_shards
from hsmr_data.quarantine import Quarantine
from hsmr_data.shard_writer import ExportError
from hsmr_data.synthetic.world import SynthConfig, generate_dataset
from hsmr_data.training_samples import iter_training_samples
from hsmr_data.truth_report import truth_label_rows
from hsmr_model import flip
from hsmr_model.pose_repr import q_to_target88

IDS = [f"synth-{i:07d}_0" for i in range(6)]
GHOST = "synth-9999999_0"


@pytest.fixture(scope="module")
def dataset_dir(model_paths, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate_dataset(model_paths, out, SynthConfig(count=6, batch_size=6, shard_maxcount=3))
    return out


def _rows(truth: dict[str, dict], ids: list[str], chunk: str) -> dict[str, np.ndarray]:
    """Passing label rows holding the true q, β and crop-camera translation (GHOST borrows person 0's)."""
    return truth_label_rows({i: truth.get(i, truth[IDS[0]]) for i in ids}, ids, chunk)


@pytest.fixture(scope="module")
def table_uri(dataset_dir, tmp_path_factory) -> str:
    uri = str(tmp_path_factory.mktemp("labels") / "table")
    truth = {row["sample_id"]: row for row in pq.read_table(dataset_dir / "truth" / "ground_truth.parquet").to_pylist()}
    first = _rows(truth, IDS[:3], "chunk-a")
    first["betas"][2, 4] = np.nan
    first["betas_ok"][2] = first["passed"][2] = False
    assert lt.commit_chunk(uri, lt.validate_rows(first), "chunk-a").version == 1
    second = _rows(truth, [IDS[3], IDS[4], GHOST], "chunk-b")
    second["pve_max"][0], second["pve_ok"][0] = 0.09, False
    second["num_keypoints"][1], second["keypoints_ok"][1] = 2, False
    second["passed"][:2] = False
    assert lt.commit_chunk(uri, lt.validate_rows(second), "chunk-b").version == 2
    return uri


@pytest.fixture(scope="module")
def labels(table_uri) -> dict[str, dict]:
    return {row["sample_id"]: row for row in lt.read_labels(table_uri).to_pylist()}


@pytest.fixture(scope="module")
def people(dataset_dir) -> dict[str, object]:
    return {
        p.sample_id: p for p in read_shards(DatasetSpec("synth", str(dataset_dir)).shard_urls(), "synth", Quarantine())
    }


def _export(table_uri, dataset_dir, out, **kwargs) -> export.ExportSummary:
    return export.export_shards(table_uri, {"synth": str(dataset_dir)}, out, **kwargs)


@pytest.fixture(scope="module")
def summary(table_uri, dataset_dir, tmp_path_factory) -> export.ExportSummary:
    return _export(table_uri, dataset_dir, tmp_path_factory.mktemp("export"), maxcount=2)


@pytest.fixture(scope="module")
def samples(summary) -> dict[str, dict]:
    return {s["sample_id"]: s for s in iter_training_samples(summary.index)}


def _f32(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def test_counts(summary):
    assert summary.label_version == 2 and Path(summary.out_dir).name == "v2"
    assert summary.counts == {
        "synth": export.ExportCounts(
            exported=4, with_label=2, keypoints_only=2, unusable=1, no_label=1, label_without_sample=1, quarantined=0
        )
    }


def test_labelled_samples_round_trip(samples, labels, people):
    assert sorted(samples) == IDS[:4]
    for sample_id in IDS[:2]:
        got, label, person = samples[sample_id], labels[sample_id], people[sample_id]
        assert (got["has_pose"], got["has_betas"]) == (1.0, 1.0)
        assert (got["dataset"], got["round"], got["source"], got["label_version"]) == ("synth", 0, "smpl-fit", 2)
        for name in ("q", "betas", "trans"):
            np.testing.assert_array_equal(got[name], _f32(label[name]))
        q = np.array([label["q"]], dtype=np.float64)
        np.testing.assert_allclose(got["target88"], q_to_target88(torch.as_tensor(q))[0].numpy(), atol=1e-6)
        np.testing.assert_array_equal(got["q_flip"], flip.flip_q(_f32(label["q"])))
        np.testing.assert_array_equal(got["trans_flip"], flip.flip_trans(_f32(label["trans"])))
        target_flip = q_to_target88(torch.as_tensor(flip.flip_q(q)))[0].numpy()
        np.testing.assert_allclose(got["target88_flip"], target_flip, atol=1e-6)
        _check_keypoints(got, person)


def _check_keypoints(got: dict, person) -> None:
    side = float(person.scale.max()) * 200.0
    normalised = (person.keypoints_2d[:, :2] - person.center) / side
    np.testing.assert_allclose(got["keypoints_2d"][:, :2], normalised, atol=1e-6)
    np.testing.assert_array_equal(got["keypoints_2d"][:, 2], person.keypoints_2d[:, 2])
    np.testing.assert_allclose(got["keypoints_2d_px"][:, :2], (normalised + 0.5) * 256, atol=1e-3)
    np.testing.assert_array_equal(got["keypoints_2d_flip"], flip.flip_keypoints(got["keypoints_2d"]))
    np.testing.assert_array_equal(got["keypoints_3d"], person.keypoints_3d)
    np.testing.assert_array_equal(got["keypoints_3d_flip"], flip.flip_keypoints(person.keypoints_3d))
    np.testing.assert_array_equal(got["center"], person.center)


def test_crop_matches_source_image(samples, people):
    for sample_id, got in samples.items():
        person = people[sample_id]
        with Image.open(io.BytesIO(person.image_jpeg)) as image:
            expected = crop_image(image, person.center, float(person.scale.max()) * 200.0)
        assert got["image"].shape == (256, 256, 3)
        # JPEG at quality 95 moves pixels by about one level on average.
        assert np.abs(got["image"].astype(int) - expected.astype(int)).mean() < 3.0


def test_filtered_samples_with_usable_keypoints_have_no_pose(samples, labels, people):
    pve_failed = samples[IDS[3]]
    assert (pve_failed["has_pose"], pve_failed["has_betas"]) == (0.0, 0.0)
    np.testing.assert_array_equal(pve_failed["q"], _f32(labels[IDS[3]]["q"]))  # kept as given, masked by the flags
    _check_keypoints(pve_failed, people[IDS[3]])
    not_finite = samples[IDS[2]]
    assert (not_finite["has_pose"], not_finite["has_betas"]) == (0.0, 0.0)
    for name in ("q", "betas", "trans", "q_flip", "trans_flip"):
        assert not not_finite[name].any(), name  # a NaN label arrives as zeros
    assert np.isfinite(not_finite["target88"]).all()
    assert IDS[4] not in samples and IDS[5] not in samples


def test_plain_webdataset_reads_the_shards(summary):
    urls = sorted(str(p) for p in Path(summary.out_dir).glob("*/shard-*.tar"))
    seen = {}
    for sample in wds.WebDataset(urls, shardshuffle=False):
        arrays = np.load(io.BytesIO(sample["npz"]), allow_pickle=False)
        meta = json.loads(sample["json"])
        image = np.asarray(Image.open(io.BytesIO(sample["jpg"])))
        assert meta["sample_id"] == sample["__key__"] and image.shape == (256, 256, 3)
        seen[sample["__key__"]] = float(arrays["has_pose"]), arrays["q"].shape, arrays["target88_flip"].shape
    assert seen == {sid: (1.0 if sid in IDS[:2] else 0.0, (46,), (88,)) for sid in IDS[:4]}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_export_is_deterministic(table_uri, dataset_dir, tmp_path, summary, monkeypatch):
    # Another time of day, as a later run has: tar and zip writers stamp the current time unless told not to.
    monkeypatch.setattr(time, "time", lambda: 2_000_000_000.0)
    again = _export(table_uri, dataset_dir, tmp_path, maxcount=2)
    first, second = _files(Path(summary.out_dir)), _files(Path(again.out_dir))
    assert sorted(first) == ["index.json", *(f"synth/shard-00000{i}.{ext}" for i in (0, 1) for ext in ("json", "tar"))]
    assert first == second


def test_order_does_not_depend_on_source_order(table_uri, dataset_dir, tmp_path, summary, people):
    reversed_dir = tmp_path / "reversed"
    write_shards(sorted(people.values(), key=lambda p: p.sample_id, reverse=True), reversed_dir / "shards")
    again = _export(table_uri, reversed_dir, tmp_path / "out", maxcount=2)
    assert [s["sample_id"] for s in iter_training_samples(again.index)] == IDS[:4]
    for ours, theirs in zip(summary.shards, again.shards, strict=True):
        assert Path(ours).read_bytes() == Path(theirs).read_bytes()


@pytest.mark.parametrize("remove", [("tar", "json", "index"), ("tar",), ("json",)])
def test_resume_rewrites_only_missing_shards(table_uri, dataset_dir, tmp_path, remove):
    done = _export(table_uri, dataset_dir, tmp_path, maxcount=1)
    root = Path(done.out_dir)
    before = _files(root)
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    gone = {
        "tar": root / "synth/shard-000001.tar",
        "json": root / "synth/shard-000001.json",
        "index": root / "index.json",
    }
    for name in remove:
        gone[name].unlink()
    resumed = _export(table_uri, dataset_dir, tmp_path, maxcount=1)
    assert resumed.written == [str(gone["tar"])]
    assert _files(root) == before
    untouched = [p for p in mtimes if p.name.split(".")[0] != "shard-000001" and p.name != "index.json"]
    assert len(untouched) == 6  # the three other shards and their listings
    assert all(p.stat().st_mtime_ns == mtimes[p] for p in untouched)


def test_resume_refuses_shards_of_other_inputs(table_uri, dataset_dir, tmp_path):
    done = _export(table_uri, dataset_dir, tmp_path, maxcount=2)
    listing_path = Path(done.out_dir) / "synth" / "shard-000000.json"
    listing = json.loads(listing_path.read_text())
    listing["keys"][1] = GHOST
    listing_path.write_text(json.dumps(listing))
    with pytest.raises(ExportError, match=GHOST):
        _export(table_uri, dataset_dir, tmp_path, maxcount=2)


def test_index_lists_every_shard(summary):
    root = Path(summary.out_dir)
    index = json.loads(Path(summary.index).read_text())
    assert (index["__kind__"], index["wids_version"]) == ("wids-shard-index-v1", 1)
    assert [root / e["url"] for e in index["shardlist"]] == [Path(s) for s in summary.shards]
    for entry in index["shardlist"]:
        data = (root / entry["url"]).read_bytes()
        with tarfile.open(root / entry["url"]) as tar:
            keys = {member.name.split(".")[0] for member in tar}
            assert all(m.mtime == 0 and m.uname == "hsmr" for m in tar.getmembers())
        assert entry["nsamples"] == len(keys) == 2
        assert (entry["filesize"], entry["md5sum"], entry["dataset"]) == (
            len(data),
            hashlib.md5(data).hexdigest(),
            "synth",
        )
    assert index["hsmr"]["counts"]["synth"]["exported"] == sum(e["nsamples"] for e in index["shardlist"])


def test_shards_close_at_maxsize(table_uri, dataset_dir, tmp_path):
    small = _export(table_uri, dataset_dir, tmp_path, maxcount=100, maxsize=1)
    index = json.loads(Path(small.index).read_text())
    assert [e["nsamples"] for e in index["shardlist"]] == [1, 1, 1, 1]


def test_earlier_table_version(table_uri, dataset_dir, tmp_path):
    old = _export(table_uri, dataset_dir, tmp_path, version=1)
    assert Path(old.out_dir).name == "v1"
    assert old.counts["synth"] == export.ExportCounts(exported=3, with_label=2, keypoints_only=1, no_label=3)
    got = {s["sample_id"]: s["label_version"] for s in iter_training_samples(old.index)}
    assert got == {sample_id: 1 for sample_id in IDS[:3]}


def test_hsmr_layout_reads_back_with_plain_webdataset(table_uri, dataset_dir, labels, people, tmp_path):
    summary = export.export_hsmr_tars(table_uri, {"synth": str(dataset_dir)}, tmp_path, maxcount=4)
    assert Path(summary.out_dir).name == "v2-hsmr"
    assert summary.counts == {
        "synth": export.ExportCounts(exported=6, with_label=2, keypoints_only=3, no_label=1, label_without_sample=1)
    }
    index = json.loads(Path(summary.index).read_text())
    assert index["hsmr"]["format"] == export.HSMR_FORMAT
    assert [entry["nsamples"] for entry in index["shardlist"]] == [4, 2]

    # As HSMR's training code reads them: webdataset's default decoding unpickles data.pyd.
    read = list(wds.WebDataset(summary.shards, shardshuffle=False).decode())
    assert [set(sample) - {"__url__", "__local_path__"} for sample in read] == [{"__key__", "jpg", "data.pyd"}] * 6
    shapes = {"poses": (46,), "betas": (10,), "trans": (3,), "pve_max": (), "pve_mean": ()}
    seen = []
    for sample in read:
        for person_id, person in enumerate(sample["data.pyd"]):
            sample_id = f"{sample['__key__']}_{person_id}"
            seen.append(sample_id)
            source = people[sample_id]
            assert "global_orient" not in person and person["body_pose"].shape == (72,)
            np.testing.assert_array_equal(person["body_pose"][:3], source.global_orient)
            assert sample["jpg"] == source.image_jpeg
            for prefix in ("orig", "flip"):
                assert {name: np.shape(person[f"{prefix}_{name}"]) for name in shapes} == shapes
            np.testing.assert_array_equal(person["flip_poses"], flip.flip_q(person["orig_poses"]))
            np.testing.assert_array_equal(person["flip_trans"], flip.flip_trans(person["orig_trans"]))
            np.testing.assert_array_equal(person["flip_betas"], person["orig_betas"])
            assert person["flip_pve_max"] == person["orig_pve_max"] or np.isnan(person["orig_pve_max"])
            if sample_id in (IDS[0], IDS[1]):
                np.testing.assert_allclose(person["orig_poses"], labels[sample_id]["q"], rtol=1e-6)
                np.testing.assert_allclose(person["orig_trans"], labels[sample_id]["trans"], rtol=1e-6)
                assert person["orig_pve_max"] == pytest.approx(labels[sample_id]["pve_max"])
            else:  # filtered out or no row: NaN, HSMR's "no label"
                assert all(np.isnan(person[f"{p}_{n}"]).all() for p in ("orig", "flip") for n in shapes)
    assert sorted(seen) == sorted(people)
