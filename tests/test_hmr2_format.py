"""HMR2.0 tars and evaluation .npz: bit-exact round trips, plain-webdataset compatibility, forged inputs."""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import webdataset as wds
from PIL import Image

from hsmr_data.hmr2_format import (
    InvalidSample,
    encode_image,
    person_to_dict,
    read_eval_npz,
    read_shards,
    unpickle_data,
    write_eval_npz,
    write_shards,
)
from hsmr_data.quarantine import Quarantine
from hsmr_data.records import PersonSample, SkelLabel


# ------------------------------------------------------------------------------------------ samples
def tiny_jpeg(rng: np.random.Generator, height: int = 24, width: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def skel_label(rng: np.random.Generator) -> SkelLabel:
    return SkelLabel(
        poses=rng.normal(size=46).astype(np.float32),
        betas=rng.normal(size=10).astype(np.float32),
        trans=rng.normal(size=3),  # float64 on purpose: dtypes must survive as they are
        pve_max=float(rng.uniform(0, 0.1)),
        pve_mean=float(rng.uniform(0, 0.05)),
    )


def person(rng: np.random.Generator, key: str, person_id: int, image: bytes, **changes) -> PersonSample:
    sample = PersonSample(
        key=key,
        person_id=person_id,
        dataset="synthetic",
        image_jpeg=image,
        keypoints_2d=rng.uniform(0, 200, (44, 3)).astype(np.float32),
        keypoints_3d=rng.normal(size=(44, 4)).astype(np.float32),
        center=rng.uniform(50, 150, 2),
        scale=rng.uniform(0.5, 2, 2),
        body_pose=rng.normal(size=69).astype(np.float32),
        global_orient=rng.normal(size=3).astype(np.float32),
        betas=rng.normal(size=10),
        has_body_pose=1.0,
        has_betas=float(person_id % 2),
        extra_info={"fitting_loss": {"reprojection_loss": float(rng.uniform(0, 100))}, "source": "unit"},
    )
    return replace(sample, **changes)


@pytest.fixture
def samples() -> list[PersonSample]:
    """Three images with 2, 1 and 3 people; SKEL labels (orig and flip) on some."""
    rng = np.random.default_rng(7)
    images = {key: tiny_jpeg(rng) for key in ("coco/img_000", "coco/img_001", "img_002")}
    return [
        person(rng, "coco/img_000", 0, images["coco/img_000"], skel=skel_label(rng), skel_flip=skel_label(rng)),
        person(rng, "coco/img_000", 1, images["coco/img_000"], skel=skel_label(rng)),
        person(rng, "coco/img_001", 0, images["coco/img_001"]),
        person(rng, "img_002", 3, images["img_002"], skel=skel_label(rng)),
        person(rng, "img_002", 1, images["img_002"], extra_info={}),
        person(rng, "img_002", 2, images["img_002"], has_body_pose=0.0),
    ]


def assert_same_value(a, b, where: str) -> None:
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype, f"{where}: {a.dtype} vs {getattr(b, 'dtype', b)}"
        assert np.array_equal(a, b), where
    elif isinstance(a, SkelLabel):
        assert isinstance(b, SkelLabel), where
        for f in fields(SkelLabel):
            assert_same_value(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    else:
        assert type(a) is type(b) and a == b, f"{where}: {a!r} vs {b!r}"


def assert_same_samples(expected: list[PersonSample], got: list[PersonSample], skip: tuple[str, ...] = ()) -> None:
    assert [s.sample_id for s in got] == [s.sample_id for s in expected]
    for a, b in zip(expected, got, strict=True):
        for f in fields(PersonSample):
            if f.name not in skip:
                assert_same_value(getattr(a, f.name), getattr(b, f.name), f"{a.sample_id}.{f.name}")


# ----------------------------------------------------------------------------------- tar round trip
def test_shards_round_trip_bit_exact(samples, tmp_path):
    shards = write_shards(samples, tmp_path, maxcount=2)
    assert [p.name for p in shards] == ["000000.tar", "000001.tar"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000000.tar", "000001.tar"]  # no temporaries left

    quarantine = Quarantine()
    got = list(read_shards(str(tmp_path / "{000000..000001}.tar"), "synthetic", quarantine))
    assert len(quarantine) == 0 and quarantine.notes == []
    assert_same_samples(samples, got)
    assert got[0].skel_flip is not None and got[1].skel_flip is None and got[2].skel is None
    # The people of one image share one tar sample and its image bytes.
    assert got[0].image_jpeg is got[1].image_jpeg


def test_plain_webdataset_decodes_our_shards(samples, tmp_path):
    shards = write_shards(samples, tmp_path, maxcount=2)
    decoded = list(wds.WebDataset([str(p) for p in shards], shardshuffle=False).decode("rgb8"))

    assert [d["__key__"] for d in decoded] == ["coco/img_000", "coco/img_001", "img_002"]
    people = [p for d in decoded for p in d["data.pyd"]]
    assert [p["personid"] for p in people] == [s.person_id for s in samples]
    for raw, sample in zip(people, samples, strict=True):
        np.testing.assert_array_equal(raw["keypoints_2d"], sample.keypoints_2d)
        assert ("orig_poses" in raw) == (sample.skel is not None)
    assert decoded[0]["jpg"].shape == (24, 16, 3)


def test_shards_are_deterministic(samples, tmp_path):
    first = write_shards(samples, tmp_path / "a", maxcount=2)
    second = write_shards(samples, tmp_path / "b", maxcount=2)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    with tarfile.open(first[0]) as tar:
        headers = {(m.mtime, m.uid, m.gid, m.uname, m.mode) for m in tar.getmembers()}
    assert headers == {(0, 0, 0, "hsmr", 0o444)}


def test_writer_rejects_keys_with_dots(samples, tmp_path):
    dotted = [replace(s, key="img.v2_000") for s in samples[:2]]
    with pytest.raises(ValueError, match="has a dot in its last path part"):
        write_shards(dotted, tmp_path)
    assert list(tmp_path.iterdir()) == []  # the shard being written is discarded, not published


def test_writer_refuses_what_the_reader_would_refuse(samples, tmp_path):
    bad = replace(samples[3], betas=np.full(10, np.nan))
    with pytest.raises(ValueError, match="img_002_3: betas contains NaN"):
        write_shards([*samples[:3], bad], tmp_path, maxcount=1)
    # Shard 0 was closed when image 2 came; shard 1 was still open when image 3 failed.
    assert [p.name for p in tmp_path.iterdir()] == ["000000.tar"]

    scattered = [samples[0], samples[2], samples[1]]
    with pytest.raises(ValueError, match="comes again"):
        write_shards(scattered, tmp_path / "scattered")


# ----------------------------------------------------------------------------------- forged inputs
class Calls:
    """Pickles as the call `function(*args)`: what a hostile data.pyd would carry."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return (self.function, self.args)


def runs_touch(marker: Path) -> Calls:
    return Calls(os.system, f"touch {marker}")


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(lambda marker: pickle.dumps([{"betas": runs_touch(marker)}]), id="os.system"),
        pytest.param(lambda marker: pickle.dumps([Calls(eval, f"open({str(marker)!r}, 'w')")]), id="builtins.eval"),
        # The model-file unpickler admits these two; dataset pickles must not.
        pytest.param(lambda marker: b"cchumpy.ch\nCh\n(tR.", id="chumpy"),
        pytest.param(lambda marker: pickle.dumps([sp.csr_matrix(np.eye(2))]), id="scipy.sparse"),
    ],
)
def test_unpickler_refuses_everything_but_numpy(payload, tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(InvalidSample, match="refusing to load global"):
        unpickle_data(payload(marker))
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 3, 4, 5])
def test_unpickler_reads_numpy_of_every_protocol(protocol):
    people = [
        {"a": np.arange(6, dtype=np.float16).reshape(2, 3), "b": np.float32(1.5), "c": np.int64(3), "d": [1, "x", None]}
    ]
    got = unpickle_data(pickle.dumps(people, protocol=protocol))
    assert got[0]["a"].dtype == np.float16 and np.array_equal(got[0]["a"], people[0]["a"])
    assert got[0]["b"] == np.float32(1.5) and type(got[0]["c"]) is np.int64 and got[0]["d"] == [1, "x", None]


def write_raw_shard(path: Path, entries: list[dict]) -> None:
    with wds.TarWriter(str(path), encoder=False) as sink:
        for entry in entries:
            sink.write(entry)


def test_forged_samples_are_quarantined_and_the_rest_arrive(samples, tmp_path):
    rng = np.random.default_rng(3)
    image = tiny_jpeg(rng)
    marker = tmp_path / "ran"

    def entry(key: str, people: list[dict], jpg: bytes = image) -> dict:
        return {"__key__": key, "jpg": jpg, "data.pyd": pickle.dumps(people)}

    def raw(key: str, person_id: int = 0, **changes) -> dict:
        return {**person_to_dict(person(rng, key, person_id, image, skel=skel_label(rng))), **changes}

    partial_label = raw("partial")
    del partial_label["orig_trans"]
    write_raw_shard(
        tmp_path / "forged.tar",
        [
            encode_image(samples[:2]),
            {"__key__": "evil", "jpg": image, "data.pyd": pickle.dumps([runs_touch(marker)])},
            entry("nan_betas", [raw("nan_betas", betas=np.array([np.nan] * 10))]),
            entry("short_kp", [raw("short_kp", keypoints_2d=np.zeros((43, 3)))]),
            entry("mixed", [raw("mixed", 0), raw("mixed", 1, keypoints_3d=np.zeros((44, 3)))]),
            entry("bad_jpg", [raw("bad_jpg")], jpg=b"\xff\xd8 not a jpeg"),
            {"__key__": "no_data", "jpg": image},
            entry("partial", [partial_label]),
            entry("nan_label", [raw("nan_label", orig_poses=np.full(46, np.nan))]),
            entry("twice", [raw("twice", 4), raw("twice", 4)]),
            encode_image(samples[2:3]),
        ],
    )
    quarantine = Quarantine()
    got = list(read_shards([tmp_path / "forged.tar"], "forged", quarantine))

    assert not marker.exists()
    assert [s.sample_id for s in got] == [
        "coco/img_000_0", "coco/img_000_1", "mixed_0", "nan_label_0", "twice_4", "coco/img_001_0"
    ]  # fmt: skip
    assert_same_samples(samples[:2], got[:2], skip=("dataset",))
    reasons = {e.key: e.reason for e in quarantine.entries}
    assert "refusing to load global 'posix.system'" in reasons["evil"]
    assert "betas contains NaN or infinite values" in reasons["nan_betas_0"]
    assert "keypoints_2d has shape (43, 3), expected (44, 3)" in reasons["short_kp_0"]
    assert "keypoints_3d has shape (44, 3), expected (44, 4)" in reasons["mixed_1"]
    assert "undecodable image" in reasons["bad_jpg"]
    assert "missing entry 'data.pyd'" in reasons["no_data"]
    assert "incomplete SKEL label: missing orig_trans" in reasons["partial_0"]
    assert "personid 4 appears twice" in reasons["twice_4"]
    assert len(quarantine) == 8 and {e.source for e in quarantine.entries} == {str(tmp_path / "forged.tar")}
    # A NaN SKEL label means "no label": the person is kept, the label dropped, and a note says why.
    assert got[3].skel is None
    assert [(n.key, "orig_poses contains NaN" in n.reason) for n in quarantine.notes] == [("nan_label_0", True)]

    report = quarantine.write_report(tmp_path / "report" / "quarantine.json")
    assert json.loads((tmp_path / "report" / "quarantine.json").read_text()) == report
    assert report["quarantined"] == 8 and report["entries"][0] == {
        "source": str(tmp_path / "forged.tar"),
        "key": "evil",
        "reason": reasons["evil"],
    }


def _member_offsets(path: Path) -> dict[str, tuple[int, int]]:
    with tarfile.open(path) as tar:
        return {m.name: (m.offset, m.offset_data) for m in tar.getmembers()}


@pytest.mark.parametrize("cut", ["inside_data", "at_header"])
def test_truncated_shard_keeps_what_came_before_and_the_next_shards(samples, tmp_path, cut):
    shards = write_shards(samples, tmp_path, maxcount=2)  # shard 0: img_000 (2 people), img_001
    header, data = _member_offsets(shards[0])["coco/img_001.data.pyd"]  # its first file
    shards[0].write_bytes(shards[0].read_bytes()[: data + 100 if cut == "inside_data" else header])

    quarantine = Quarantine()
    got = list(read_shards(shards, "synthetic", quarantine))

    assert [s.sample_id for s in got] == ["coco/img_000_0", "coco/img_000_1", "img_002_3", "img_002_1", "img_002_2"]
    assert len(quarantine) == 1
    (entry,) = quarantine.entries
    assert entry.source == str(shards[0]) and "unreadable shard" in entry.reason
    if cut == "inside_data":
        assert entry.key == "coco/img_001" and "unexpected end of data" in entry.reason
    else:
        # tarfile itself would stop here without a word: the missing end-of-archive marker tells.
        assert entry.key is None and "no end-of-archive marker" in entry.reason


def test_missing_and_garbage_shards_are_quarantined(samples, tmp_path):
    (tmp_path / "garbage.tar").write_bytes(b"\x01" * 2000)
    good = write_shards(samples[:2], tmp_path / "good")
    quarantine = Quarantine()
    got = list(read_shards([tmp_path / "missing.tar", tmp_path / "garbage.tar", *good], "synthetic", quarantine))
    assert [s.sample_id for s in got] == ["coco/img_000_0", "coco/img_000_1"]
    assert [(Path(e.source).name, e.key) for e in quarantine.entries] == [("missing.tar", None), ("garbage.tar", None)]
    assert "FileNotFoundError" in quarantine.entries[0].reason


# ------------------------------------------------------------------------------------ evaluation npz
def test_eval_npz_round_trip(samples, tmp_path):
    write_eval_npz(samples, tmp_path / "eval.npz", image_root=tmp_path / "images")
    quarantine = Quarantine()
    got = list(read_eval_npz(tmp_path / "eval.npz", "synthetic", tmp_path / "images", quarantine=quarantine))
    assert len(quarantine) == 0
    # The format has no place for SKEL labels or extra_info.
    assert_same_samples(samples, got, skip=("skel", "skel_flip", "extra_info"))
    assert all(s.skel is None and s.extra_info == {} for s in got)

    without_images = list(read_eval_npz(tmp_path / "eval.npz", "synthetic", quarantine=quarantine))
    assert {s.image_jpeg for s in without_images} == {b""}


def test_eval_npz_in_the_hmr2_layout(tmp_path):
    """HMR2.0's own files: scale (N,), body_pose (N,72) with the global orientation first, no betas."""
    rng = np.random.default_rng(1)
    n = 3
    body_pose = rng.normal(size=(n, 72)).astype(np.float32)
    np.savez(
        tmp_path / "h36m.npz",
        imgname=np.array(["images/S9_Directions.54138969_000001.jpg"] * 2 + ["images/other.jpg"]),
        center=rng.uniform(0, 100, (n, 2)),
        scale=np.array([1.0, 1.5, 2.0]),
        body_keypoints_2d=rng.normal(size=(n, 25, 3)),
        extra_keypoints_2d=rng.normal(size=(n, 19, 3)),
        extra_keypoints_3d=rng.normal(size=(n, 19, 4)),
        body_pose=body_pose,
    )
    quarantine = Quarantine()
    got = list(read_eval_npz(tmp_path / "h36m.npz", "h36m", quarantine=quarantine))

    assert [s.sample_id for s in got] == [
        "images/S9_Directions_54138969_000001_0", "images/S9_Directions_54138969_000001_1", "images/other_0"
    ]  # fmt: skip
    np.testing.assert_array_equal(got[1].scale, [1.5, 1.5])
    np.testing.assert_array_equal(got[2].global_orient, body_pose[2, :3])
    np.testing.assert_array_equal(got[2].body_pose, body_pose[2, 3:])
    assert got[0].has_body_pose == 1.0 and got[0].has_betas == 0.0 and not got[0].betas.any()
    assert not got[0].keypoints_3d[:25].any() and got[0].keypoints_3d[25:].any()  # no body part: zeros


def test_eval_npz_moyo_layout_and_bad_rows(tmp_path):
    rng = np.random.default_rng(2)
    n = 3
    betas = rng.normal(size=(n, 10))
    betas[1, 4] = np.nan
    arrays = {
        "imgname": np.array(["a.jpg", "b.jpg", "c.jpg"]),
        "center": rng.uniform(0, 100, (n, 2)),
        "scale": rng.uniform(1, 2, (n, 2)),
        "global_orient": rng.normal(size=(n, 3)),
        "body_pose": rng.normal(size=(n, 69)),
        "betas": betas,
    }
    np.savez(tmp_path / "moyo.npz", **arrays)
    (tmp_path / "images").mkdir()
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / "images" / name).write_bytes(tiny_jpeg(rng))
    quarantine = Quarantine()
    got = list(read_eval_npz(tmp_path / "moyo.npz", "moyo", tmp_path / "images", quarantine=quarantine))

    assert [s.sample_id for s in got] == ["a_0"]
    np.testing.assert_array_equal(got[0].body_pose, arrays["body_pose"][0])
    assert got[0].has_body_pose == 1.0 and got[0].has_betas == 1.0
    assert [(e.key, e.reason.split(" ")[0]) for e in quarantine.entries] == [("b_0", "betas"), ("c_0", "image")]
    assert "not found" in quarantine.entries[1].reason


def test_eval_npz_with_pickled_arrays_is_refused_whole(tmp_path):
    np.savez(tmp_path / "objects.npz", imgname=np.array(["a.jpg", None], dtype=object), center=np.zeros((2, 2)))
    quarantine = Quarantine()
    assert list(read_eval_npz(tmp_path / "objects.npz", "x", quarantine=quarantine)) == []
    assert quarantine.entries[0].key is None and "unreadable .npz" in quarantine.entries[0].reason
