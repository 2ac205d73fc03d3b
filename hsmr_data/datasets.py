"""Datasets named by URL specs: `NAME=SPEC`, one shard URL per chunk of work.

SPEC is anything webdataset opens, plus a directory:

- a brace pattern or a single file: `/data/coco-train-2014-pruned/{000000..000017}.tar`;
- a directory: its `shards/*.tar` (the layout this project writes) or else its own `*.tar`
  (`.tar.gz`, `.tgz` too), in name order;
- `file:PATH` (same as PATH), `pipe:COMMAND` (the command writes one tar to stdout; braces expand
  into one command per shard, as in webdataset), `http(s)://...` (read through webdataset, i.e. curl);
- any other URL scheme (`s3://`, `gs://`, `memory://`, ...) through fsspec, when fsspec and the
  filesystem's package are installed; a URL naming a folder there lists its tars like a directory.

Local paths are made absolute, so a shard has one URL however the dataset was named: the URL is
what resume (the label table's transaction ids) and the quarantine reports are keyed by.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

from webdataset.gopen import gopen
from webdataset.shardlists import expand_urls

DATASET_NAME = re.compile(r"[A-Za-z0-9_-]+")  # a directory name and part of chunk ids
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_WEBDATASET_SCHEMES = ("", "file", "pipe", "http", "https")


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset and where its shards are (see the module docstring for what `spec` may be)."""

    name: str
    spec: str

    def __post_init__(self) -> None:
        if not DATASET_NAME.fullmatch(self.name):
            raise ValueError(f"dataset name {self.name!r} must be letters, digits, '-' or '_'")
        if not self.spec:
            raise ValueError(f"dataset {self.name!r} has an empty spec")

    @classmethod
    def parse(cls, text: str, default_name: str | None = None) -> DatasetSpec:
        """`NAME=SPEC`, or a bare SPEC named `default_name`.

        Only a valid dataset name before the first '=' counts as NAME, so a SPEC that holds '='
        itself (`pipe:env A=1 cat x.tar`, a URL query) still reads as a bare SPEC.
        """
        name, sep, spec = text.partition("=")
        if sep and DATASET_NAME.fullmatch(name):
            return cls(name, spec)
        if default_name is None:
            raise ValueError(f"dataset {text!r} is not NAME=SPEC (e.g. coco=/data/coco/{{000000..000017}}.tar)")
        return cls(default_name, text)

    @property
    def local_dir(self) -> Path | None:
        """The local directory the spec names, if it names one."""
        path = Path(_strip_file_scheme(self.spec))
        return path.resolve() if urlparse(self.spec).scheme in ("", "file") and path.is_dir() else None

    def shard_urls(self) -> list[str]:
        """The shard URLs, in order; raises FileNotFoundError for a directory without tars."""
        folder = self.local_dir
        if folder is not None:
            inner = folder / "shards"
            folder = inner if inner.is_dir() else folder
            urls = sorted(str(path) for path in folder.iterdir() if path.name.endswith(TAR_SUFFIXES))
            # No tars: a folder of parameter files (CameraHMR/BEDLAM-style .npz), one chunk each.
            urls = urls or sorted(str(path) for path in folder.iterdir() if path.name.endswith(".npz"))
            if not urls:
                found = f"no shards ({', '.join(TAR_SUFFIXES)}) nor parameter files (.npz)"
                raise FileNotFoundError(f"dataset {self.name!r}: {found} in {folder}")
            return urls
        if _scheme(self.spec) not in _WEBDATASET_SCHEMES and "{" not in self.spec:
            listed = _fsspec_listing(self.spec)
            if listed is not None:
                return listed
        return [_absolute(url) for url in expand_urls(self.spec)]

    def __str__(self) -> str:
        return f"{self.name}={self.spec}"


def parse_datasets(texts: list[str] | tuple[str, ...], default_name: str | None = None) -> list[DatasetSpec]:
    """Several `NAME=SPEC`; two datasets with one name are refused (their chunks would collide)."""
    specs = [DatasetSpec.parse(text, default_name) for text in texts]
    names = [spec.name for spec in specs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"dataset name(s) {', '.join(repeated)} given twice: give each dataset its own name")
    return specs


def open_shard(url: str) -> BinaryIO:
    """A binary stream of one shard: local, file:, pipe: and http(s) through webdataset, others through fsspec.

    Raises RuntimeError when the URL needs a package that is missing (fsspec or its filesystem's
    package): that is the environment's problem, not the shard's.
    """
    if _scheme(url) in _WEBDATASET_SCHEMES:
        return gopen(url, "rb")
    try:
        import fsspec
    except ImportError as err:
        raise RuntimeError(f"{url}: reading {_scheme(url)}:// URLs needs fsspec (pip install fsspec)") from err
    try:
        return fsspec.open(url, "rb").open()
    except ImportError as err:
        raise RuntimeError(f"{url}: {err}") from err


def shard_label(url: str) -> str:
    """A short, file-name-safe and unique name for a shard URL (its last path part and a hash of the URL)."""
    last = re.split(r"[/\s]", url.rstrip("/"))[-1]
    for suffix in TAR_SUFFIXES:
        last = last.removesuffix(suffix)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", last)[:60] or "shard"
    return f"{safe}-{hashlib.sha256(url.encode()).hexdigest()[:8]}"


def _scheme(url: str) -> str:
    scheme = urlparse(url).scheme
    return "" if len(scheme) == 1 else scheme  # a Windows drive letter is no scheme


def _strip_file_scheme(spec: str) -> str:
    return spec.removeprefix("file://") if spec.startswith("file://") else spec.removeprefix("file:")


def _absolute(url: str) -> str:
    if _scheme(url) in ("", "file"):
        return str(Path(_strip_file_scheme(url)).resolve())
    return url


def _fsspec_listing(spec: str) -> list[str] | None:
    """The tars of a folder named by an fsspec URL; None when the URL is not a folder (or fsspec is absent)."""
    try:
        import fsspec
    except ImportError:
        return None
    try:
        fs, path = fsspec.core.url_to_fs(spec)
        if not fs.isdir(path):
            return None
        names = sorted(name for name in fs.ls(path, detail=False) if name.endswith(TAR_SUFFIXES))
    except ImportError as err:
        raise RuntimeError(f"{spec}: {err}") from err
    if not names:
        raise FileNotFoundError(f"no shards ({', '.join(TAR_SUFFIXES)}) in {spec}")
    return [fs.unstrip_protocol(name) for name in names]
