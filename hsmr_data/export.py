"""Training shards from one version of the label table: WebDataset tars of crops and SKEL labels.

Two formats. The default, this project's (`FORMAT`), is described below. `--format hsmr`
(`export_hsmr_tars`) writes instead what HSMR's own training code reads: HMR2.0's tar layout
(`hmr2_format`: the image, `data.pyd` with every person of the image, `detection.npz` if the source
has one) plus, per person, `orig_poses`/`flip_poses` (46), `orig_betas`/`flip_betas` (10),
`orig_trans`/`flip_trans` (3), `orig_pve_max`/`flip_pve_max` and `orig_pve_mean`/`flip_pve_mean`,
NaN where the person has no label that passed the filters (HSMR's loader reads NaN as "no label").
Those shards go to out_dir/v{version}-hsmr/{dataset}/{000000..}.tar with a wids index.json.

Which people go in (as HSMR's loader decides): every person of the source dataset shards whose label
row passed the filters, with has_pose = has_betas = 1; and, with has_pose = has_betas = 0, those whose
label was filtered out (or holds NaN) but whose keypoints are usable (`keypoints_ok`), because their
2D keypoints still train the network. Filtered people without usable keypoints, people with no label
row, and label rows with no person in the source are left out and counted.

Layout, versioned by the label-table version because wids caches shards by URL:

    out_dir/v{version}/index.json                      wids shard index (written last)
    out_dir/v{version}/{dataset}/shard-000000.tar      the samples
    out_dir/v{version}/{dataset}/shard-000000.json     that shard's listing: its index entry and keys

One sample per person; `__key__` is the sample id (`{image key}_{personid}`, dot-free: webdataset
splits keys at dots). Its entries:

- `jpg`: the 256×256 crop, bilinear, HMR2.0-style: a square of side max(scale)·200 px around `center`,
  black outside the image. Crop pixel (u, v), continuous (pixel i spans [i, i+1)), shows image point
  center + (u/256 − ½, v/256 − ½)·side.
- `npz`: float32 arrays, written without pickle (read with `np.load(..., allow_pickle=False)`):
  q (46), betas (10), trans (3, crop-camera translation), target88 (88, `pose_repr.q_to_target88`),
  has_pose (), has_betas (); the mirrored label of the horizontally flipped crop (`hsmr_model.flip`):
  q_flip (46), trans_flip (3), target88_flip (88) (β does not change); keypoints_2d (44, 3) x, y in
  normalised crop coordinates ([−½, ½] inside the crop) and the raw confidence, keypoints_2d_px
  (44, 3) the same in crop pixels, keypoints_2d_flip (44, 3) normalised, for the flipped crop;
  keypoints_3d (44, 4) and keypoints_3d_flip (44, 4) as the source gives them (x mirrored);
  center (2) and scale (2), the crop box in the source image. Where has_pose is 0 the label arrays
  hold the filtered label (zeros if it was not finite): mask them, never train on them. Confidences
  are raw: the 0.3 floor of HSMR's loader (`filters.clean_confidences`) is the reader's choice.
- `json`: sample_id, dataset, round and source of the label, label_version, format.

Order and bytes: datasets by name, source shards by file name, people within a source shard by
sample id (a global sort would hold every image in memory; sources written in key order, like the
synthetic ones, come out globally sorted). Tar headers are fixed (mtime 0, fixed owner and mode)
and the npz members carry a fixed date, so the same inputs give the same bytes.

Sharding and resume (`shard_writer`): a shard closes before the sample that would follow `maxcount`
samples or `maxsize` bytes, as webdataset's ShardWriter does; a later run with the same parameters
skips the shards that are finished and rewrites anything else, so an interrupted export completes
with the bytes of an uninterrupted one. Readers: `training_samples`; the npz codec: `npz_codec`.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch
from deltalake import DeltaTable
from PIL import Image

from hsmr_data import layout
from hsmr_data.datasets import DatasetSpec
from hsmr_data.geometry import crop_image, crop_pixels, crop_side, normalised_keypoints
from hsmr_data.hmr2_format import DATA_EXT, check_key, read_shards, write_shards
from hsmr_data.label_table import read_labels
from hsmr_data.npz_codec import npz_bytes
from hsmr_data.progress import Progress
from hsmr_data.quarantine import Quarantine
from hsmr_data.records import PersonSample, SkelLabel
from hsmr_data.shard_writer import ShardSpec, write_json, write_resumable_shards
from hsmr_model import flip
from hsmr_model.pose_repr import q_to_target88

FORMAT = "hsmr-train-shard/1"
HSMR_FORMAT = "hmr2-tars-with-skel-labels/1"  # `export_hsmr_tars`
FORMATS = {"pipeline": FORMAT, "hsmr": HSMR_FORMAT}  # --format → what the index records
JPEG_QUALITY = 95
_INDEX_FIELDS = ("nsamples", "filesize", "md5sum")  # what wids' own index tool records per shard


@dataclass
class ExportCounts:
    """What happened to the people of one dataset."""

    exported: int = 0
    with_label: int = 0  # has_pose = has_betas = 1
    keypoints_only: int = 0  # label filtered out (or not finite), keypoints usable: has_pose = has_betas = 0
    unusable: int = 0  # label filtered out and keypoints unusable: left out
    no_label: int = 0  # in the source shards, no row in the label table: left out
    label_without_sample: int = 0  # a label row of this dataset with no person in the source shards
    quarantined: int = 0  # refused by the source reader (see hmr2_format.read_shards)


@dataclass
class ExportSummary:
    label_version: int
    out_dir: str  # out_dir/v{version}
    index: str
    shards: list[str]  # every shard of the export, in index order
    written: list[str]  # the shards this run wrote; the others were complete already
    counts: dict[str, ExportCounts] = field(default_factory=dict)


def label_arrays(q: np.ndarray, betas: np.ndarray, trans: np.ndarray) -> dict[str, np.ndarray]:
    """Label and mirrored label of N people: q, q_flip, target88, target88_flip, betas, trans, trans_flip."""
    q_flip = flip.flip_q(q)
    with torch.no_grad():
        targets = q_to_target88(torch.as_tensor(np.concatenate([q, q_flip]), dtype=torch.float64)).numpy()
    return {
        "q": q,
        "q_flip": q_flip,
        "target88": targets[: len(q)],
        "target88_flip": targets[len(q) :],
        "betas": betas,
        "trans": trans,
        "trans_flip": flip.flip_trans(trans),
    }


# ------------------------------------------------------------------------------------- the labels
@dataclass
class LabelColumns:
    """The label table as numpy columns, with each sample id's row."""

    row: dict[str, int]
    dataset: np.ndarray
    q: np.ndarray  # (N, 46)
    betas: np.ndarray  # (N, 10)
    trans: np.ndarray  # (N, 3)
    pve_max: np.ndarray  # (N,) metres
    pve_mean: np.ndarray  # (N,) metres
    passed: np.ndarray
    keypoints_ok: np.ndarray
    round: np.ndarray
    source: np.ndarray

    @classmethod
    def from_table(cls, table: pa.Table) -> LabelColumns:
        def matrix(name: str) -> np.ndarray:
            column = table[name].combine_chunks()
            return column.flatten().to_numpy().reshape(len(column), column.type.list_size)

        ids = table["sample_id"].to_pylist()
        return cls(
            row={sample_id: i for i, sample_id in enumerate(ids)},
            dataset=np.array(table["dataset"].to_pylist()),
            q=matrix("q"),
            betas=matrix("betas"),
            trans=matrix("trans"),
            pve_max=table["pve_max"].to_numpy(),
            pve_mean=table["pve_mean"].to_numpy(),
            passed=table["passed"].to_numpy(),
            keypoints_ok=table["keypoints_ok"].to_numpy(),
            round=table["round"].to_numpy(),
            source=np.array(table["source"].to_pylist()),
        )

    def finite(self, rows: np.ndarray) -> np.ndarray:
        return np.isfinite(np.concatenate([self.q[rows], self.betas[rows], self.trans[rows]], axis=1)).all(1)


@dataclass
class _Item:
    """One person on its way into a shard: the sample, where its label came from, and the label arrays."""

    sample: PersonSample
    has_label: bool
    round: int
    source: str
    arrays: dict[str, np.ndarray]


def _choose(people: list[PersonSample], labels: LabelColumns, dataset: str, counts: ExportCounts) -> list[_Item]:
    """The people of one source shard that go into the export, in sample-id order, with their label arrays."""
    chosen = []
    for person in sorted(people, key=lambda p: p.sample_id):
        row = labels.row.get(person.sample_id)
        if row is None or labels.dataset[row] != dataset:
            counts.no_label += 1
        elif labels.passed[row] or labels.keypoints_ok[row]:
            chosen.append((person, row))
        else:
            counts.unusable += 1
    if not chosen:
        return []
    rows = np.array([row for _, row in chosen])
    finite = labels.finite(rows)
    has_label = labels.passed[rows] & finite
    # A label that is not finite carries nothing; zeros keep NaN out of the training batches.
    arrays = label_arrays(*(np.where(finite[:, None], a[rows], 0) for a in (labels.q, labels.betas, labels.trans)))
    counts.with_label += int(has_label.sum())
    counts.keypoints_only += int((~has_label).sum())
    return [
        _Item(person, bool(has), int(labels.round[row]), str(labels.source[row]), {k: v[i] for k, v in arrays.items()})
        for i, ((person, row), has) in enumerate(zip(chosen, has_label, strict=True))
    ]


def _dataset_items(
    name: str, sources: list[str], labels: LabelColumns, counts: ExportCounts, progress: Progress
) -> Iterator[_Item]:
    """Every exported person of one dataset in export order; `counts` is complete once this is exhausted."""
    quarantine = Quarantine()
    seen: set[str] = set()
    for source in sources:
        people = list(read_shards(source, name, quarantine))
        seen.update(p.sample_id for p in people)
        yield from _choose(people, labels, name, counts)
        progress.update(1)
    counts.quarantined = len(quarantine)
    labelled = {sample_id for sample_id, row in labels.row.items() if labels.dataset[row] == name}
    counts.label_without_sample = len(labelled - seen)


# ------------------------------------------------------------------------------------ one sample
def encode_sample(item: _Item, label_version: int) -> dict[str, Any]:
    """The WebDataset sample of one person: `__key__`, `jpg`, `npz`, `json` (see the module docstring)."""
    sample = item.sample
    check_key(sample.sample_id)
    side = crop_side(sample.scale)
    with Image.open(io.BytesIO(sample.image_jpeg)) as image:
        crop = crop_image(image, sample.center, side)
    keypoints = normalised_keypoints(sample.keypoints_2d, sample.center, side)
    pixels = crop_pixels(keypoints)
    flag = 1.0 if item.has_label else 0.0
    arrays = {
        **item.arrays,
        "has_pose": flag,
        "has_betas": flag,
        "keypoints_2d": keypoints,
        "keypoints_2d_px": pixels,
        "keypoints_2d_flip": flip.flip_keypoints(keypoints),
        "keypoints_3d": sample.keypoints_3d,
        "keypoints_3d_flip": flip.flip_keypoints(sample.keypoints_3d),
        "center": sample.center,
        "scale": sample.scale,
    }
    meta = {
        "sample_id": sample.sample_id,
        "dataset": sample.dataset,
        "round": item.round,
        "source": item.source,
        "label_version": label_version,
        "format": FORMAT,
    }
    return {
        "__key__": sample.sample_id,
        "jpg": _jpeg(crop),
        "npz": npz_bytes({name: np.asarray(value, dtype=np.float32) for name, value in arrays.items()}),
        "json": json.dumps(meta, sort_keys=True).encode(),
    }


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------ export
def _fingerprint(urls: Sequence[str]) -> str:
    """Names and sizes of the source shards (the URL where there is no local file): a cheap check that a
    listing was made from the same sources."""
    text = "\n".join(f"{Path(url).name}:{Path(url).stat().st_size}" if Path(url).is_file() else url for url in urls)
    return hashlib.sha256(text.encode()).hexdigest()


def _specs(dataset_dirs: dict[str, str]) -> list[DatasetSpec]:
    """The datasets (name → SPEC: a folder holding shards/*.tar, a brace pattern, any URL) by name."""
    return [DatasetSpec(name, str(dataset_dirs[name])) for name in sorted(dataset_dirs)]


def export_shards(
    table_uri: str,
    dataset_dirs: dict[str, str],
    out_dir: str | Path,
    version: int | None = None,
    maxcount: int = 1000,
    maxsize: float = 3e8,
) -> ExportSummary:
    """Export the labels of table version `version` (default: the latest) and the people of `dataset_dirs`
    (dataset name → SPEC, see `hsmr_data.datasets`) as training shards under out_dir/v{version}."""
    if maxcount < 1 or maxsize <= 0:
        raise ValueError(f"maxcount must be >= 1 and maxsize > 0, got {maxcount} and {maxsize}")
    specs = _specs(dataset_dirs)
    version = DeltaTable(table_uri).version() if version is None else version
    labels = LabelColumns.from_table(read_labels(table_uri, version=version))
    root = Path(out_dir) / f"v{version}"
    counts: dict[str, ExportCounts] = {}
    listings: dict[str, list[dict]] = {}
    written: list[Path] = []
    sources_of = {spec.name: spec.shard_urls() for spec in specs}
    progress = Progress("export", total=sum(map(len, sources_of.values())), unit="source shard")
    for spec in specs:
        name, sources = spec.name, sources_of[spec.name]
        params = {"format": FORMAT, "label_version": version, "dataset": name, "maxcount": maxcount}
        params |= {"maxsize": maxsize, "sources": _fingerprint(sources)}
        counts[name] = ExportCounts()
        items = _dataset_items(name, sources, labels, counts[name], progress)
        encode = functools.partial(encode_sample, label_version=version)
        listings[name], new = write_resumable_shards(
            items, root / name, ShardSpec(maxcount, maxsize, params), encode, key=lambda item: item.sample.sample_id
        )
        counts[name].exported = sum(listing["nsamples"] for listing in listings[name])
        written += new
    progress.close()
    return _summary(version, root, listings, counts, written, FORMAT)


def _summary(
    version: int,
    root: Path,
    listings: dict[str, list[dict]],
    counts: dict[str, ExportCounts],
    written: list[Path],
    fmt: str,
) -> ExportSummary:
    """Write the index (last: an index means a finished export) and sum up."""
    index = _index(version, listings, counts, fmt)
    write_json(root / "index.json", index)
    return ExportSummary(
        label_version=version,
        out_dir=str(root),
        index=str(root / "index.json"),
        shards=[str(root / entry["url"]) for entry in index["shardlist"]],
        written=[str(path) for path in written],
        counts=counts,
    )


# ----------------------------------------------------------------------------- HSMR's own layout
def export_hsmr_tars(
    table_uri: str,
    dataset_dirs: dict[str, str],
    out_dir: str | Path,
    version: int | None = None,
    maxcount: int = 1000,
    maxsize: float = 1e9,
) -> ExportSummary:
    """Export the source tars with the SKEL labels of table version `version` in HSMR's layout (see the
    module docstring) under out_dir/v{version}-hsmr/{dataset}/; every run rewrites every shard.

    Every readable person of the sources goes in (HSMR trains on the keypoints of the unlabelled ones
    too); `maxcount` counts images, as HMR2.0's shards do.
    """
    specs = _specs(dataset_dirs)
    version = DeltaTable(table_uri).version() if version is None else version
    labels = LabelColumns.from_table(read_labels(table_uri, version=version))
    root = Path(out_dir) / f"v{version}-hsmr"
    counts: dict[str, ExportCounts] = {}
    listings: dict[str, list[dict]] = {}
    written: list[Path] = []
    # People, no total: each dataset is one read across its shards (duplicate keys are refused across them).
    progress = Progress("export (hsmr)", unit="person")
    for spec in specs:
        counts[spec.name] = ExportCounts()
        people = _labelled_people(spec.name, spec.shard_urls(), labels, counts[spec.name], progress)
        folder = root / spec.name
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("[0-9]" * 6 + ".tar"):  # left by an earlier export of more images
            stale.unlink()
        shards = write_shards(people, folder, maxcount=maxcount, maxsize=maxsize)
        listings[spec.name] = [_tar_listing(shard) for shard in shards]
        written += shards
    progress.close()
    return _summary(version, root, listings, counts, written, HSMR_FORMAT)


def _labelled_people(
    name: str, sources: list[str], labels: LabelColumns, counts: ExportCounts, progress: Progress
) -> Iterator[PersonSample]:
    """The people of the sources in file order, each with its SKEL label and the mirrored one (NaN: no label)."""
    quarantine = Quarantine()
    seen: set[str] = set()
    for person in read_shards(sources, name, quarantine):
        seen.add(person.sample_id)
        row = labels.row.get(person.sample_id)
        if row is None or labels.dataset[row] != name:
            counts.no_label += 1
            row = None
        elif not (labels.passed[row] and labels.finite(np.array([row]))[0]):
            counts.keypoints_only += 1
            row = None
        else:
            counts.with_label += 1
        counts.exported += 1
        person.skel, person.skel_flip = _skel_labels(labels, row)
        yield person
        progress.update(1)
    counts.quarantined = len(quarantine)
    labelled = {sample_id for sample_id, row in labels.row.items() if labels.dataset[row] == name}
    counts.label_without_sample = len(labelled - seen)


def _skel_labels(labels: LabelColumns, row: int | None) -> tuple[SkelLabel, SkelLabel]:
    """The `orig_*` and `flip_*` labels of a label-table row; all NaN for None (HSMR's "no label")."""
    if row is None:
        nan = SkelLabel(np.full(46, np.nan), np.full(10, np.nan), np.full(3, np.nan), float("nan"), float("nan"))
        return nan, nan
    q, betas, trans = labels.q[row], labels.betas[row], labels.trans[row]
    pve = {"pve_max": float(labels.pve_max[row]), "pve_mean": float(labels.pve_mean[row])}
    flipped = SkelLabel(flip.flip_q(q), betas.copy(), flip.flip_trans(trans), **pve)
    return SkelLabel(q, betas, trans, **pve), flipped


def _tar_listing(shard: Path) -> dict[str, Any]:
    """The wids index entry of a finished tar: its name, images (samples), size and MD5."""
    data = shard.read_bytes()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        images = sum(1 for name in tar.getnames() if name.endswith(f".{DATA_EXT}"))
    return {"url": shard.name, "nsamples": images, "filesize": len(data), "md5sum": hashlib.md5(data).hexdigest()}


def _index(
    version: int, listings: dict[str, list[dict]], counts: dict[str, ExportCounts], fmt: str = FORMAT
) -> dict[str, Any]:
    """The wids shard index (wids_version 1; shard URLs relative to the index) with the export's counts."""
    shardlist = [
        {"url": f"{name}/{listing['url']}", "dataset": name} | {k: listing[k] for k in _INDEX_FIELDS}
        for name in sorted(listings)
        for listing in listings[name]
    ]
    return {
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "name": f"hsmr-labels-v{version}" + ("" if fmt == FORMAT else "-hsmr"),
        "shardlist": shardlist,
        "hsmr": {"format": fmt, "label_version": version, "counts": {n: asdict(c) for n, c in counts.items()}},
    }


# ------------------------------------------------------------------------------ the step's front door
@dataclass(frozen=True)
class ExportConfig:
    """An export as the `hsmr export` command and the export-shards flow take it (flat, JSON-able)."""

    table_uri: str = field(default=layout.DEFAULT.table(), metadata={"flag": "--table", "help": "label table URI"})
    dataset_dirs: dict[str, str] = field(
        default_factory=lambda: {layout.DEMO_DATASET: layout.DEFAULT.dataset()},
        metadata={"flag": "--dataset", "help": "a source dataset, NAME=SPEC (a folder, a brace pattern, a URL)"},
    )
    out_dir: str = field(default=layout.DEFAULT.shards, metadata={"flag": "--out", "help": "folder for v{version}/"})
    version: int | None = field(default=None, metadata={"help": "label-table version (default: the latest)"})
    maxcount: int = field(default=1000, metadata={"help": "samples (hsmr: images) per shard at most"})
    maxsize: float | None = field(default=None, metadata={"help": "bytes per shard at most (default: the format's)"})
    format: Literal["pipeline", "hsmr"] = field(
        default="pipeline",
        metadata={"help": "pipeline: this project's training shards; hsmr: HMR2.0's tars with HSMR's SKEL labels"},
    )


def run(config: ExportConfig) -> ExportSummary:
    """Export as `config` says: the front door of `hsmr export` and the export-shards flow."""
    exporter = export_hsmr_tars if config.format == "hsmr" else export_shards
    sizes = {} if config.maxsize is None else {"maxsize": config.maxsize}
    return exporter(config.table_uri, config.dataset_dirs, config.out_dir, config.version, config.maxcount, **sizes)
