"""Reading the training shards `hsmr_data.export` writes: each sample decoded to numpy (the `npz`
arrays, the `json` fields, the crop as `image`), from an index.json, a URL or brace pattern, or a
list of shards; plain webdataset and PIL, no torch."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from PIL import Image

from hsmr_data.npz_codec import npz_arrays


def decode_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """A raw sample of these shards (entry → bytes, as webdataset or any tar reader groups them) → numpy.

    Returns the `npz` arrays, the `json` fields, `image` (256, 256, 3) uint8, and `__key__` if given.
    Needs neither torch nor project code beyond numpy and PIL.
    """
    with Image.open(io.BytesIO(sample["jpg"])) as image:
        pixels = np.asarray(image.convert("RGB"))
    decoded = {**json.loads(sample["json"]), **npz_arrays(sample["npz"]), "image": pixels}
    if "__key__" in sample:
        decoded["__key__"] = sample["__key__"]
    return decoded


def shard_urls(source: str | Path | Iterable[str | Path]) -> str | list[str]:
    """Shard URLs from an index.json (resolved against its directory), a URL or brace pattern, or a list."""
    if isinstance(source, str | Path) and str(source).endswith(".json"):
        index = json.loads(Path(source).read_text())
        return [str(Path(source).parent / entry["url"]) for entry in index["shardlist"]]
    if isinstance(source, str | Path):
        return str(source)
    return [str(url) for url in source]


def iter_training_samples(source: str | Path | Iterable[str | Path], **webdataset_args: Any) -> wds.WebDataset:
    """The decoded samples (`decode_sample`) of an export, as a webdataset pipeline (iterate it, or add
    .shuffle, .batched, ...). `webdataset_args` go to `webdataset.WebDataset` (default shardshuffle=False)."""
    return wds.WebDataset(shard_urls(source), **{"shardshuffle": False, **webdataset_args}).map(decode_sample)
