"""Resumable, byte-stable tar shards: the writer behind `hsmr_data.export.export_shards`.

A shard closes before the sample that would follow `maxcount` samples or `maxsize` bytes of entries,
as webdataset's ShardWriter does; shards are written with its TarWriter one by one, with fixed tar
headers, so that a finished shard can be skipped. A shard is written under a temporary name,
renamed, and then listed (its .json: the wids index entry, its keys and the parameters that decide
its bytes). A later run with the same parameters skips a shard whose tar exists and whose listing
matches, consuming its items without encoding them, and rewrites anything else.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from webdataset import TarWriter

T = TypeVar("T")  # an item on its way into a shard
_TAR_HEADER = {"mtime": 0, "user": "hsmr", "group": "hsmr", "mode": 0o444}
_SHARD = "shard-{:06d}"


class ExportError(RuntimeError):
    """The output directory holds shards that contradict this export."""


@dataclass(frozen=True)
class ShardSpec:
    """How full a shard gets, and what (besides the items) decides its bytes."""

    maxcount: int
    maxsize: float
    params: dict[str, Any]  # everything besides the samples that decides a shard's bytes; kept in its listing


class _HashingFile:
    """A write-only file that also takes the MD5 and size of what passes through (the wids index wants both)."""

    def __init__(self, handle: io.BufferedWriter):
        self.handle = handle
        self.md5 = hashlib.md5()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.md5.update(data)
        self.size += len(data)
        return self.handle.write(data)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write `data` as JSON atomically (temporary name, then rename), in a stable key order."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def _listing(shard: Path, spec: ShardSpec) -> dict[str, Any] | None:
    """The listing of a finished shard written with `spec`; None if the tar or its listing is missing or differs."""
    listing_path = shard.with_suffix(".json")
    if not (shard.is_file() and listing_path.is_file()):
        return None
    listing = json.loads(listing_path.read_text())
    if listing["params"] != spec.params or listing["filesize"] != shard.stat().st_size:
        return None
    return listing


def _skip(items: Iterator[T], pending: T | None, shard: Path, keys: list[str], key: Callable[[T], str]) -> T | None:
    """Consume the samples of a finished shard, checking they are the ones it holds; return the next one."""
    for expected in keys:
        found = None if pending is None else key(pending)
        if found != expected:
            raise ExportError(
                f"{shard} holds {expected} where this export has {found}: the directory holds shards of other inputs; "
                "remove it or export elsewhere"
            )
        pending = next(items, None)
    return pending


def _write_shard(
    items: Iterator[T],
    pending: T,
    shard: Path,
    spec: ShardSpec,
    encode: Callable[[T], dict[str, Any]],
    key: Callable[[T], str],
) -> tuple[dict[str, Any], T | None]:
    """Write samples from `pending` on until the shard is full; return its listing and the first sample left over."""
    tmp = shard.with_name(shard.name + ".tmp")
    keys: list[str] = []
    size = 0
    try:
        with tmp.open("wb") as handle:
            sink = _HashingFile(handle)
            writer = TarWriter(sink, encoder=False, **_TAR_HEADER)
            # ShardWriter's rule: the shard closes before a sample once it holds maxcount samples or maxsize bytes.
            while pending is not None and len(keys) < spec.maxcount and size < spec.maxsize:
                size += writer.write(encode(pending))
                keys.append(key(pending))
                pending = next(items, None)
            writer.close()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(shard)
    listing = {
        "url": shard.name,
        "nsamples": len(keys),
        "filesize": sink.size,
        "md5sum": sink.md5.hexdigest(),
        "keys": keys,
        "params": spec.params,
    }
    write_json(shard.with_suffix(".json"), listing)  # only now is the shard finished
    return listing, pending


def write_resumable_shards(
    items: Iterator[T], shard_dir: Path, spec: ShardSpec, encode: Callable[[T], dict[str, Any]], key: Callable[[T], str]
) -> tuple[list[dict], list[Path]]:
    """Shards of `items` in order under `shard_dir` (`encode`: an item → its webdataset sample; `key`: its
    `__key__`, without encoding it): the listings of all, and the paths of those written now."""
    shard_dir.mkdir(parents=True, exist_ok=True)
    listings, written = [], []
    pending = next(items, None)
    while pending is not None:
        shard = shard_dir / f"{_SHARD.format(len(listings))}.tar"
        listing = _listing(shard, spec)
        if listing is not None and listing["keys"][:1] == [key(pending)]:
            pending = _skip(items, pending, shard, listing["keys"], key)
        else:
            listing, pending = _write_shard(items, pending, shard, spec, encode, key)
            written.append(shard)
        listings.append(listing)
    _remove_stale(shard_dir, len(listings))
    return listings, written


def _remove_stale(shard_dir: Path, count: int) -> None:
    """Delete shards numbered `count` and up, left by an earlier export with other parameters: readers that
    list the directory instead of reading the index would take them for part of this export."""
    for path in shard_dir.iterdir():
        match = re.fullmatch(r"shard-(\d{6})\.(tar|json|tar\.tmp|json\.tmp)", path.name)
        if match and int(match[1]) >= count:
            path.unlink()
