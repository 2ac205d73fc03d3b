"""HMR2.0's own tar layout, built here by hand (tarfile + pickle of plain dicts, not the project's
writer), and datasets named by URL specs: brace patterns, folders, pipe:, fsspec and http URLs."""

from __future__ import annotations

import functools
import http.server
import io
import json
import pickle
import shutil
import tarfile
import threading
from pathlib import Path

import fsspec
import numpy as np
import pytest
from PIL import Image

from hsmr_data import conversion, label_table
from hsmr_data.datasets import DatasetSpec, parse_datasets, shard_label
from hsmr_data.hmr2_format import read_shards
from hsmr_data.quarantine import Quarantine

FOLDER = "coco-train-2014-pruned.v1/000000"  # slashes, and a dot in a folder name


def image_bytes(fmt: str, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def hmr2_person(rng: np.random.Generator, **changes) -> dict:
    """One person as HMR2.0's tars hold it: body_pose (72,) with the global orientation first, no global_orient."""
    keypoints_2d = np.concatenate([rng.uniform(20, 76, (44, 2)), rng.uniform(0.5, 1.0, (44, 1))], axis=1)
    body_pose = rng.normal(0, 0.15, 72)
    body_pose[:3] = [np.pi, 0.0, 0.0]  # upright in the camera frame, as HMR2.0's pseudo-GT is
    person = {
        "center": np.array([48.0, 48.0], np.float32),
        "scale": np.array([0.4, 0.4], np.float32),
        "keypoints_2d": keypoints_2d.astype(np.float32),
        "keypoints_3d": np.concatenate([rng.normal(0, 0.3, (44, 3)), np.ones((44, 1))], axis=1).astype(np.float32),
        "body_pose": body_pose.astype(np.float32),
        "betas": rng.normal(0, 0.5, 10).astype(np.float32),
        "has_body_pose": 1,
        "has_betas": 1.0,
        "extra_info": {"fitting_loss": np.float32(12.5), "detection_npz_idx": 0},
    }
    person.update(changes)
    return {name: value for name, value in person.items() if value is not None}


def write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    """A tar with one member per entry, `{key}.{ext}`, in the order given (plus a directory member)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        folder = tarfile.TarInfo(FOLDER)
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for key, entries in samples:
            for ext, data in entries.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def hmr2_samples(seed: int) -> tuple[list[tuple[str, dict[str, bytes]]], int]:
    """Samples in HMR2.0's layout covering its variants; returns them and the number of people."""
    rng = np.random.default_rng(seed)
    masks = io.BytesIO()
    np.savez(masks, masks=np.zeros((2, 96, 96), bool))
    samples = [
        # two people, no personid: they are people 0 and 1 of the image
        (f"{FOLDER}/{seed:06d}000001", {"jpg": image_bytes("JPEG", seed), "data.pyd": pickle.dumps(
            [hmr2_person(rng), hmr2_person(rng)])}),
        # personid given, scale one number, has_* as float and int, a detection.npz
        (f"{FOLDER}/{seed:06d}000002", {"jpeg": image_bytes("JPEG", seed + 1), "data.pyd": pickle.dumps(
            [hmr2_person(rng, personid=3, scale=np.float32(0.45), has_body_pose=1.0, has_betas=1)]),
            "detection.npz": masks.getvalue()}),
        # a PNG, and the MOYO-style variant: body_pose (69,) with global_orient (3,)
        (f"{FOLDER}/{seed:06d}000003", {"png": image_bytes("PNG", seed + 2), "data.pyd": pickle.dumps(
            [hmr2_person(rng, body_pose=rng.normal(0, 0.1, 69).astype(np.float32),
                         global_orient=np.array([np.pi, 0, 0], np.float32), personid=np.int64(0))])}),
    ]  # fmt: skip
    return samples, 4


@pytest.fixture(scope="module")
def hmr2_tars(tmp_path_factory):
    """Two datasets of hand-built HMR2.0 tars: `coco` (two shards) and `mpii` (one shard)."""
    root = tmp_path_factory.mktemp("hmr2")
    for index in range(2):
        write_tar(root / "coco" / f"{index:06d}.tar", hmr2_samples(seed=index)[0])
    write_tar(root / "mpii" / "000000.tar", hmr2_samples(seed=7)[0])
    return root


def test_hmr2_layout_reads_every_person_with_nothing_quarantined(hmr2_tars):
    quarantine = Quarantine()
    people = list(read_shards([hmr2_tars / "coco" / "000000.tar"], "coco", quarantine))
    assert quarantine.report() == {"quarantined": 0, "entries": [], "notes": []}
    assert [p.sample_id for p in people] == [
        f"{FOLDER}/000000000001_0", f"{FOLDER}/000000000001_1", f"{FOLDER}/000000000002_3", f"{FOLDER}/000000000003_0"
    ]  # fmt: skip

    samples, _ = hmr2_samples(seed=0)
    first = pickle.loads(samples[0][1]["data.pyd"])[0]
    np.testing.assert_array_equal(people[0].global_orient, first["body_pose"][:3])
    np.testing.assert_array_equal(people[0].body_pose, first["body_pose"][3:])
    assert people[0].extra_info["fitting_loss"] == np.float32(12.5)
    np.testing.assert_array_equal(people[2].scale, np.full(2, 0.45, np.float32))
    assert people[2].detection_npz == samples[1][1]["detection.npz"]
    assert people[3].image_jpeg.startswith(b"\x89PNG") and people[3].body_pose.shape == (69,)


def test_a_69_pose_without_global_orient_names_the_problem(tmp_path):
    rng = np.random.default_rng(0)
    bad = hmr2_person(rng, body_pose=np.zeros(69, np.float32))
    shard = write_tar(tmp_path / "bad.tar", [("img", {"jpg": image_bytes("JPEG", 0), "data.pyd": pickle.dumps([bad])})])
    quarantine = Quarantine()
    assert list(read_shards([shard], "x", quarantine)) == []
    assert quarantine.entries[0].key == "img_0"
    assert "expected (72,) (or (69,) with a global_orient key)" in quarantine.entries[0].reason


def test_a_key_that_comes_again_is_refused(tmp_path):
    entries = {"jpg": image_bytes("JPEG", 0), "data.pyd": pickle.dumps([hmr2_person(np.random.default_rng(0))])}
    shard = write_tar(tmp_path / "twice.tar", [("a/img", entries), ("a/other", entries), ("a/img", entries)])
    quarantine = Quarantine()
    assert [p.sample_id for p in read_shards([shard], "x", quarantine)] == ["a/img_0", "a/other_0"]
    assert quarantine.entries[0].key == "a/img" and "earlier sample" in quarantine.entries[0].reason


# ------------------------------------------------------------------------------------------ specs
def test_spec_parsing():
    assert DatasetSpec.parse("coco=/data/{000000..000017}.tar") == DatasetSpec("coco", "/data/{000000..000017}.tar")
    # '=' inside a SPEC is not a name: a bare SPEC takes the default name, or is refused without one
    assert DatasetSpec.parse("pipe:env A=1 cat x.tar", "synth") == DatasetSpec("synth", "pipe:env A=1 cat x.tar")
    with pytest.raises(ValueError, match="is not NAME=SPEC"):
        DatasetSpec.parse("pipe:env A=1 cat x.tar")
    with pytest.raises(ValueError, match="given twice"):
        parse_datasets(["a=/x", "a=/y"])
    with pytest.raises(ValueError, match="must be letters"):
        DatasetSpec("a/b", "/x")


def test_shard_urls_of_a_brace_pattern_a_folder_file_and_pipe(hmr2_tars):
    coco = hmr2_tars / "coco"
    expected = [str(coco / "000000.tar"), str(coco / "000001.tar")]
    assert DatasetSpec("coco", f"{coco}/{{000000..000001}}.tar").shard_urls() == expected
    assert DatasetSpec("coco", str(coco)).shard_urls() == expected
    assert DatasetSpec("coco", f"file:{coco}").shard_urls() == expected
    assert DatasetSpec("coco", f"pipe:cat {coco}/{{000000..000001}}.tar").shard_urls() == [
        f"pipe:cat {url}" for url in expected
    ]
    with pytest.raises(FileNotFoundError, match="no shards"):
        DatasetSpec("empty", str(hmr2_tars.parent)).shard_urls()
    assert shard_label("pipe:cat /x/000001.tar") != shard_label("pipe:cat /y/000001.tar")


def people_of(spec: DatasetSpec) -> tuple[list[str], Quarantine]:
    quarantine = Quarantine()
    return [p.sample_id for p in read_shards(spec.shard_urls(), spec.name, quarantine)], quarantine


def test_pipe_and_fsspec_urls_read_like_the_files(hmr2_tars):
    coco = hmr2_tars / "coco"
    files, _ = people_of(DatasetSpec("coco", str(coco)))
    assert len(files) == 8
    piped, quarantine = people_of(DatasetSpec("coco", f"pipe:cat {coco}/{{000000..000001}}.tar"))
    assert piped == files and len(quarantine) == 0

    for index in range(2):
        with fsspec.open(f"memory://hsmr-test/coco/{index:06d}.tar", "wb") as handle:
            handle.write((coco / f"{index:06d}.tar").read_bytes())
    in_memory, quarantine = people_of(DatasetSpec("coco", "memory://hsmr-test/coco"))  # a folder through fsspec
    assert in_memory == files and len(quarantine) == 0


def test_a_failing_pipe_is_quarantined_not_fatal(hmr2_tars):
    missing = hmr2_tars / "nowhere.tar"
    people, quarantine = people_of(DatasetSpec("x", f"pipe:cat {missing}"))
    assert people == [] and len(quarantine) == 1 and "unreadable shard" in quarantine.entries[0].reason


@pytest.mark.skipif(shutil.which("curl") is None, reason="webdataset reads http(s) through curl, not installed")
def test_http_url_through_a_local_server(hmr2_tars):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(hmr2_tars))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/coco/{{000000..000001}}.tar"
        over_http, quarantine = people_of(DatasetSpec("coco", url))
    finally:
        server.shutdown()
    assert over_http == people_of(DatasetSpec("coco", str(hmr2_tars / "coco")))[0] and len(quarantine) == 0


# ------------------------------------------------------------------------------------- conversion
@pytest.mark.slow
def test_two_datasets_by_brace_pattern_and_pipe_convert_completely_and_resume(hmr2_tars, model_paths, tmp_path):
    broken = hmr2_tars / "broken"
    samples, _ = hmr2_samples(seed=9)
    write_tar(broken / "000000.tar", [*samples[:1], (f"{FOLDER}/no-data", {"jpg": image_bytes("JPEG", 3)})])
    specs = parse_datasets([
        f"coco={hmr2_tars}/coco/{{000000..000001}}.tar",
        f"mpii=pipe:cat {hmr2_tars}/mpii/000000.tar",
        f"broken={broken}",
    ])  # fmt: skip
    config = conversion.ConvertConfig(
        dataset_dir=None,
        table_uri=str(tmp_path / "labels"),
        models_root=str(model_paths.smpl.parent.parent),
        datasets=tuple(specs),
        quarantine_root=str(tmp_path / "quarantine"),
    )
    outcomes = conversion.convert_dataset(config)
    assert [o.status for o in outcomes] == ["committed"] * 4
    assert conversion.quarantined_by_dataset(outcomes) == {"coco": 0, "mpii": 0, "broken": 1}

    labels = label_table.read_labels(config.table_uri)
    by_dataset = {name: labels.filter(labels["dataset"].to_numpy(zero_copy_only=False) == name).num_rows
                  for name in ("coco", "mpii", "broken")}  # fmt: skip
    assert by_dataset == {"coco": 8, "mpii": 4, "broken": 2}  # every person of the HMR2.0 tars
    assert np.isfinite(labels["pve_max"].to_numpy()).all()
    chunk_ids = set(labels["chunk_id"].to_pylist())
    assert f"mpii/pipe:cat {hmr2_tars}/mpii/000000.tar" in chunk_ids

    reports = sorted(p.relative_to(tmp_path / "quarantine").parts[0] for p in (tmp_path / "quarantine").rglob("*.json"))
    assert reports == ["broken"]  # one report, in the folder of the dataset it came from
    report = json.loads(next((tmp_path / "quarantine" / "broken").glob("*.json")).read_text())
    assert report["entries"][0]["key"] == f"{FOLDER}/no-data" and "missing entry" in report["entries"][0]["reason"]

    again = conversion.convert_dataset(config)  # resume is keyed by the shard URL: nothing is redone
    assert [o.status for o in again] == ["skipped"] * 4
    assert label_table.read_labels(config.table_uri).num_rows == labels.num_rows


def test_convert_command_line_takes_name_spec_datasets_and_the_plain_folder():
    from hsmr_data.cli import build_parser
    from hsmr_data.conversion import ConvertOptions
    from hsmr_data.options import options_from_args

    parser = build_parser()

    def config(argv: list[str]):
        return options_from_args(ConvertOptions, parser.parse_args(["convert", *argv, "--table", "t"])).config()

    specs = config(["--dataset", "coco=/d/{0..1}.tar", "--dataset", "m=pipe:cat x"]).specs
    assert [(spec.name, spec.spec) for spec in specs] == [("coco", "/d/{0..1}.tar"), ("m", "pipe:cat x")]
    assert [(spec.name, spec.spec) for spec in config(["--dataset-dir", "d", "--dataset", "legacy"]).specs] == [
        ("legacy", "d")
    ]
    with pytest.raises(ValueError, match="a bare NAME only names the dataset folder"):
        config(["--dataset", "coco"])
    with pytest.raises(ValueError, match="no dataset to convert"):
        config([])
    with pytest.raises(SystemExit, match="no dataset to convert"):
        from hsmr_data.cli import main

        main(["convert", "--table", "t"])
