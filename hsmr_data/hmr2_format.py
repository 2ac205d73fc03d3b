"""HMR2.0 dataset formats: WebDataset training tars (with HSMR's SKEL-label keys) and evaluation .npz files.

Training tars hold per image `{key}.jpg` (`.jpeg` and `.png` are read too), `{key}.data.pyd`, a
pickled list with one dict per person (the HMR2.0 keys, see `person_to_dict`), and optionally
`{key}.detection.npz` (masks, kept as they are). Entries are grouped into samples the way webdataset
groups them: the key is the member name up to the first dot of its last path part, so folder names
may hold dots (`coco-train-2014-pruned/000000/000000000036.jpg`). Readers turn them into
`PersonSample`s; writers turn `PersonSample`s back into files that HMR2.0's and HSMR's own loaders read.

What a person dict may look like, as HMR2.0's loader reads it: `body_pose` (72,) with the global
orientation first and no `global_orient` key (what HMR2.0's tars hold and what we write), or
`body_pose` (69,) with `global_orient` (3,) (the MOYO-style variant); `scale` (2,) or one number for a
square box; `has_body_pose`/`has_betas` int, float or bool; `personid` absent means the person's index
in the list. Shards are read as streams from any URL `hsmr_data.datasets.open_shard` opens.

Input is untrusted. `data.pyd` is unpickled by a restricted unpickler that admits numpy arrays,
dtypes and scalars only (plain containers and numbers are pickle opcodes and need no import), so a
pickle that asks for anything else is refused before it runs. Every sample is validated; a bad one
goes to the `Quarantine` with its key and a reason, and reading goes on.

NaN policy: a NaN or inf in a required field (keypoints, crop, SMPL pose, betas, flags) quarantines
the person, since nothing downstream can use it. HSMR's own loader instead zeroes NaNs and marks
the SKEL label invalid; we follow it for the `orig_*`/`flip_*` SKEL label only: a non-finite value
there reads as "no SKEL label" (`skel=None`), the person is kept and the quarantine gets a note,
so the label can be fitted again rather than the person lost. A label with a missing or misshapen
field is malformed, not merely unfitted, and quarantines the person.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from numpy._core import numeric
from PIL import Image
from webdataset import ShardWriter
from webdataset.shardlists import expand_urls
from webdataset.tariterators import base_plus_ext

from hsmr_data.datasets import open_shard
from hsmr_data.quarantine import Quarantine
from hsmr_data.records import PERSON_ARRAY_SHAPES, SKEL_LABEL_SHAPES, PersonSample, SkelLabel, sample_id
from hsmr_model import skel_constants as C
from hsmr_model.model_files import RestrictedUnpickler, write_npz_atomically

IMAGE_EXT = "jpg"  # what we write for a JPEG; a PNG is written as "png"
IMAGE_EXTS = ("jpg", "jpeg", "png")  # what we read
DATA_EXT = "data.pyd"
DETECTION_EXT = "detection.npz"
# Protocol 4 is what `pickle.dumps` writes by default on Python 3.8+, so HMR2.0's loader reads it.
PICKLE_PROTOCOL = 4
# Fixed tar header fields (uid and gid are 0 by default) make shards byte-identical across runs.
_TAR_HEADER = {"mtime": 0, "user": "hsmr", "group": "hsmr", "mode": 0o444}
_SKEL_PREFIXES = {"skel": "orig", "skel_flip": "flip"}  # PersonSample attribute -> key prefix
_SKEL_SCALARS = ("pve_max", "pve_mean")
_POSE_KEYS = ("body_pose", "global_orient")  # (72,) alone, or (69,) + (3,): see `_smpl_pose`
_PLAIN_ARRAYS = {name: shape for name, shape in PERSON_ARRAY_SHAPES.items() if name not in (*_POSE_KEYS, "scale")}
_REQUIRED_KEYS = (*_PLAIN_ARRAYS, "scale", "body_pose", "has_body_pose", "has_betas")
_NUM_BODY_KEYPOINTS = 25  # OpenPose BODY_25; the other 19 of the 44 are the "extra" keypoints

Report = Callable[[str, str], None]  # (key, reason) -> None


class InvalidSample(ValueError):
    """A sample or person that breaks the format; the message names the field and the problem."""


class _NotFinite(InvalidSample):
    """A field holds NaN or inf (a SKEL label turns this into "no label" instead of a refusal)."""


# ------------------------------------------------------------------------------ restricted unpickling
class DataUnpickler(RestrictedUnpickler):
    """`RestrictedUnpickler` narrowed to what `data.pyd` needs: numpy arrays, dtypes and scalars.

    Model files need scipy.sparse, chumpy and `copyreg` on top; dataset pickles get none of them.
    """

    _allowed = {
        **{
            (module, name): value
            for (module, name), value in RestrictedUnpickler._allowed.items()
            if name in ("_reconstruct", "scalar", "ndarray", "dtype") or module == "_codecs"
        },
        # Protocol-5 pickles rebuild arrays from their raw buffer.
        ("numpy._core.numeric", "_frombuffer"): numeric._frombuffer,
        ("numpy.core.numeric", "_frombuffer"): numeric._frombuffer,
    }

    def find_class(self, module: str, name: str) -> Any:
        # The parent maps any chumpy.* name to its stand-in before it consults the allow-list.
        if module.split(".")[0] == "chumpy":
            raise pickle.UnpicklingError(f"refusing to load global '{module}.{name}'")
        return super().find_class(module, name)


def unpickle_data(data: bytes) -> Any:
    """Unpickle `data.pyd` bytes through `DataUnpickler`; any failure is an `InvalidSample`."""
    try:
        # latin1 reads the byte strings inside Python 2 era numpy pickles.
        return DataUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as err:  # a damaged pickle fails in many ways (EOFError, KeyError, ValueError, ...)
        raise InvalidSample(f"unreadable {DATA_EXT} ({type(err).__name__}: {err})") from None


# ----------------------------------------------------------------------------------- field checks
def _array(name: str, value: Any, shape: tuple[int, ...], kinds: str = "fiu") -> np.ndarray:
    """`value` as a finite array of exactly `shape` with a dtype of `kinds`, kept as it is (bit-exact round trips)."""
    array = np.asarray(value)
    if array.dtype.kind not in kinds:
        raise InvalidSample(f"{name} has dtype {array.dtype}, expected real numbers")
    if array.shape != shape:
        raise InvalidSample(f"{name} has shape {array.shape}, expected {shape}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise _NotFinite(f"{name} contains NaN or infinite values")
    return array


def _number(name: str, value: Any, kinds: str = "fiu") -> float:
    """A finite scalar (Python or numpy number, or a 0-d array)."""
    return float(_array(name, value, (), kinds))


def _person_id(value: Any) -> int:
    array = np.asarray(value)
    if array.shape != () or array.dtype.kind not in "iu":
        raise InvalidSample(f"personid is {value!r}, expected an integer")
    return int(array)


def check_key(key: str) -> None:
    """Refuse keys webdataset would mangle: it splits a file name at the first dot of its last path part
    into key and extension (dots in folder names are fine)."""
    if not key or key.endswith("/") or "." in key.rsplit("/", 1)[-1]:
        raise ValueError(
            f"sample key {key!r} is empty or has a dot in its last path part (webdataset splits keys on dots)"
        )


def image_ext(data: bytes) -> str:
    """The entry name an encoded image is written under: "png" for a PNG, else "jpg"."""
    return "png" if data.startswith(b"\x89PNG") else IMAGE_EXT


def _check_image(data: bytes, ext: str = IMAGE_EXT) -> None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            # Draft mode (JPEG only) decodes at 1/8 scale: the whole stream is still read, so damage still shows.
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except Exception as err:  # PIL reports bad data as OSError, SyntaxError, ValueError, DecompressionBombError...
        raise InvalidSample(f"undecodable image '{ext}' ({type(err).__name__}: {err})") from None


# ------------------------------------------------------------------------------- person <-> dict
def person_to_dict(sample: PersonSample) -> dict[str, Any]:
    """The `data.pyd` dict of one person: HMR2.0's keys, plus `orig_*`/`flip_*` for its SKEL labels.

    keypoints_2d (44,3), keypoints_3d (44,4), center (2), scale (2), body_pose (72: the global
    orientation, then the 23 body joints, as HMR2.0's tars hold it), betas (10), personid,
    has_body_pose, has_betas, extra_info; per label poses (46), betas (10), trans (3), pve_max,
    pve_mean. Arrays go in as they are, so reading gives them back bit-exact.
    """
    person: dict[str, Any] = {name: getattr(sample, name) for name in (*_PLAIN_ARRAYS, "scale")}
    person["body_pose"] = np.concatenate([sample.global_orient, sample.body_pose])
    person |= {
        "personid": sample.person_id,
        "has_body_pose": float(sample.has_body_pose),
        "has_betas": float(sample.has_betas),
        "extra_info": sample.extra_info,
    }
    for attribute, prefix in _SKEL_PREFIXES.items():
        label: SkelLabel | None = getattr(sample, attribute)
        if label is not None:
            person |= {f"{prefix}_{name}": getattr(label, name) for name in SKEL_LABEL_SHAPES}
            person |= {f"{prefix}_{name}": float(getattr(label, name)) for name in _SKEL_SCALARS}
    return person


def person_from_dict(raw: Any, key: str, dataset: str, image_jpeg: bytes, note: Report, index: int = 0) -> PersonSample:
    """Validate one `data.pyd` dict and build its `PersonSample`; raises `InvalidSample` naming the problem.

    `extra_info` is optional (an empty dict when absent); so is `personid` (then `index`, the person's
    place in the list, as HMR2.0 numbers them). A non-finite SKEL label becomes `None` and is
    reported through `note(sample_id, reason)`.
    """
    if not isinstance(raw, dict):
        raise InvalidSample(f"a person is a {type(raw).__name__}, expected a dict")
    missing = [name for name in _REQUIRED_KEYS if name not in raw]
    if missing:
        raise InvalidSample(f"missing key(s) {', '.join(missing)}")
    extra_info = raw.get("extra_info", {})
    if not isinstance(extra_info, dict):
        raise InvalidSample(f"extra_info is a {type(extra_info).__name__}, expected a dict")
    person_id = _person_id(raw["personid"]) if "personid" in raw else index
    arrays = {name: _array(name, raw[name], shape) for name, shape in _PLAIN_ARRAYS.items()}
    arrays["global_orient"], arrays["body_pose"] = _smpl_pose(raw)
    arrays["scale"] = _scale(raw["scale"])
    flags = {name: _number(name, raw[name], kinds="fiub") for name in ("has_body_pose", "has_betas")}
    labels = {}
    for attribute, prefix in _SKEL_PREFIXES.items():
        try:
            labels[attribute] = _skel_label(raw, prefix)
        except _NotFinite as err:
            labels[attribute] = None
            note(sample_id(key, person_id), f"{prefix}_* SKEL label read as no label: {err}")
    return PersonSample(
        key=key,
        person_id=person_id,
        dataset=dataset,
        image_jpeg=image_jpeg,
        **arrays,
        **flags,
        extra_info=extra_info,
        **labels,
    )


def _smpl_pose(raw: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(global_orient (3,), body_pose (69,)) from `body_pose` (72,), or from (69,) + `global_orient`."""
    if "global_orient" in raw:
        return _array("global_orient", raw["global_orient"], (3,)), _array("body_pose", raw["body_pose"], (69,))
    shape = np.shape(raw["body_pose"])
    if shape != (72,):
        raise InvalidSample(f"body_pose has shape {shape}, expected (72,) (or (69,) with a global_orient key)")
    full = _array("body_pose", raw["body_pose"], (72,))
    return full[:3], full[3:]


def _scale(value: Any) -> np.ndarray:
    """`scale` (2,); one number (a scalar or (1,)) is a square box and is used for both sides."""
    scale = np.asarray(value)
    if scale.shape in ((), (1,)):
        scale = np.repeat(scale.reshape(1), 2)
    return _array("scale", scale, (2,))


def _skel_label(raw: dict[str, Any], prefix: str) -> SkelLabel | None:
    """The `{prefix}_*` SKEL label of a person dict, None when it has none."""
    names = [f"{prefix}_{name}" for name in (*SKEL_LABEL_SHAPES, *_SKEL_SCALARS)]
    present = [name for name in names if name in raw]
    if not present:
        return None
    if len(present) < len(names):
        raise InvalidSample(f"incomplete SKEL label: missing {', '.join(n for n in names if n not in raw)}")
    return SkelLabel(
        **{
            name: _array(f"{prefix}_{name}", raw[f"{prefix}_{name}"], shape)
            for name, shape in SKEL_LABEL_SHAPES.items()
        },
        **{name: _number(f"{prefix}_{name}", raw[f"{prefix}_{name}"]) for name in _SKEL_SCALARS},
    )


def decode_image(
    key: str, entries: dict[str, bytes], dataset: str, refuse: Report, note: Report
) -> Iterator[PersonSample]:
    """The people of one tar sample (`entries`: extension -> bytes), each validated.

    A problem with the image as a whole (missing entry, undecodable image, unreadable or forbidden
    pickle) refuses it under `key`; a problem with one person refuses that person under its sample
    id (or `key` when its personid is unreadable) and its image-mates still come. An unreadable
    `detection.npz` (optional: masks) is dropped with a note; the people are kept.
    """
    try:
        image, people = _people(entries)
    except InvalidSample as err:
        refuse(key, str(err))
        return
    detection = _detection(key, entries.get(DETECTION_EXT), note)
    seen: set[int] = set()
    for index, raw in enumerate(people):
        try:
            sample = person_from_dict(raw, key, dataset, image, note, index)
            sample.detection_npz = detection
            if sample.person_id in seen:
                raise InvalidSample(f"personid {sample.person_id} appears twice in this image")
        except InvalidSample as err:
            refuse(*_person_problem(key, raw, index, err))
            continue
        seen.add(sample.person_id)
        yield sample


def _people(entries: dict[str, bytes]) -> tuple[bytes, list[Any]]:
    """The image bytes and the list of person dicts of a sample."""
    images = [ext for ext in IMAGE_EXTS if ext in entries]
    if len(images) > 1:
        raise InvalidSample(f"more than one image entry ({', '.join(images)})")
    missing = ([] if images else ["/".join(IMAGE_EXTS)]) + ([] if DATA_EXT in entries else [DATA_EXT])
    if missing:
        raise InvalidSample(f"missing entry {', '.join(repr(ext) for ext in missing)}")
    _check_image(entries[images[0]], images[0])
    people = unpickle_data(entries[DATA_EXT])
    if not isinstance(people, list) or not people:
        raise InvalidSample(f"{DATA_EXT} holds {type(people).__name__} {people!r:.60}, expected a non-empty list")
    return entries[images[0]], people


def _detection(key: str, data: bytes | None, note: Report) -> bytes | None:
    """The `detection.npz` bytes if they hold arrays numpy reads without pickle, else None (with a note)."""
    if data is None:
        return None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            for name in archive.files:
                archive[name]
    except Exception as err:  # a damaged zip or .npy fails in many ways (BadZipFile, ValueError, EOFError...)
        note(key, f"{DETECTION_EXT} dropped: unreadable without pickle ({type(err).__name__}: {err})")
        return None
    return data


def _person_problem(key: str, raw: Any, index: int, err: InvalidSample) -> tuple[str, str]:
    if isinstance(raw, dict) and "personid" not in raw:
        return sample_id(key, index), str(err)
    try:
        return sample_id(key, _person_id(raw["personid"])), str(err)
    except (InvalidSample, KeyError, TypeError):
        return key, f"person #{index}: {err}"


# ------------------------------------------------------------------------------------ tar reading
def read_shards(
    paths: str | Path | Iterable[str | Path], dataset: str, quarantine: Quarantine
) -> Iterator[PersonSample]:
    """Every valid person in the shards, in file order; everything refused goes to `quarantine`.

    `paths` are shard URLs (local tar files, plain or compressed, `file:`, `pipe:`, http(s) or fsspec
    URLs: see `hsmr_data.datasets`), or one string with webdataset's brace pattern
    (`"shards/{000000..000009}.tar"`). A damaged shard gives the samples before the damage, one
    quarantine entry for the damage (the sample it hit is lost), and reading goes on with the next.
    A key that comes again (two images with one key) is refused, so sample ids stay unique.
    """
    seen: set[str] = set()
    for url in _expand(paths):
        for key, entries in _tar_samples(url, quarantine):
            if key in seen:
                quarantine.add(url, key, "the key of an earlier sample: sample ids would not be unique")
                continue
            seen.add(key)
            yield from decode_image(
                key, entries, dataset, refuse=partial(quarantine.add, url), note=partial(quarantine.note, url)
            )


def _expand(paths: str | Path | Iterable[str | Path]) -> list[str]:
    items = [paths] if isinstance(paths, str | Path) else list(paths)
    return [url for item in items for url in (expand_urls(item) if isinstance(item, str) else [str(item)])]


@dataclass
class _Group:
    key: str
    entries: dict[str, bytes] = field(default_factory=dict)
    duplicates: list[str] = field(default_factory=list)


class _StrictTarInfo(tarfile.TarInfo):
    """Makes a damaged or missing header an error: tarfile itself just ends the archive there.

    Only the zero block of a whole archive (`EOFHeaderError`) ends it quietly. This works on streams
    (pipes, HTTP), where the end of the archive cannot be checked by seeking back.
    """

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tar)
        except tarfile.EOFHeaderError:
            raise
        except tarfile.HeaderError as err:
            problem = "no end-of-archive marker" if isinstance(err, tarfile.EmptyHeaderError) else str(err)
            raise tarfile.ReadError(f"{problem} at byte {tar.offset}: truncated or corrupt header") from None


def _tar_samples(url: str, quarantine: Quarantine) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) for each run of consecutive files with one key, as webdataset groups them.

    Damage inside a file's data loses the sample that file belongs to; damage at a header (where
    tarfile would just stop) leaves the sample before it whole, so that one still comes.
    """
    group: _Group | None = None
    reading: str | None = None  # the file whose data is being read when damage shows
    try:
        with open_shard(url) as stream, tarfile.open(fileobj=stream, mode="r|*", tarinfo=_StrictTarInfo) as tar:
            for member in tar:
                key, ext = base_plus_ext(member.name)
                if not member.isfile() or key is None:
                    continue
                if group is None or key != group.key:
                    yield from _finished(url, group, quarantine)
                    group = _Group(key)
                ext = ext.lower()  # webdataset lower-cases extensions too
                if ext in group.entries:
                    group.duplicates.append(member.name)
                reading = member.name
                group.entries[ext] = tar.extractfile(member).read()
                reading = None
    except (tarfile.TarError, OSError, EOFError, ValueError, zlib.error) as err:
        # ValueError: webdataset's gopen refuses a URL it cannot open (and some codecs report damage so).
        damage = f"unreadable shard ({type(err).__name__}: {err})"
        if reading is not None:
            quarantine.add(url, group.key, f"{damage} in {reading}; this sample and the rest of the shard are lost")
            return
        yield from _finished(url, group, quarantine)
        quarantine.add(url, None, f"{damage}; the rest of the shard is lost")
        return
    yield from _finished(url, group, quarantine)


def _finished(url: str, group: _Group | None, quarantine: Quarantine) -> Iterator[tuple[str, dict[str, bytes]]]:
    if group is None:
        return
    if group.duplicates:
        quarantine.add(url, group.key, f"duplicate entries {', '.join(group.duplicates)}")
    else:
        yield group.key, group.entries


# ------------------------------------------------------------------------------------ tar writing
def write_shards(
    samples: Iterable[PersonSample], out_dir: Path | str, maxcount: int = 1000, maxsize: float = 1e9
) -> list[Path]:
    """Write HMR2.0-style shards `out_dir/000000.tar`, `000001.tar`, ... and return their paths.

    The people of one image (same key) must come one after another; they share one tar sample, in
    the order given. A shard is closed after `maxcount` images, or once it holds `maxsize` bytes
    (so it can pass `maxsize` by one image). Each shard appears under its name only when complete.
    Same samples in, same bytes out. No samples give one empty shard.

    Raises ValueError for a sample the reader would refuse; the shard being written is then
    discarded, finished shards stay.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    failed = False

    def publish(tmp_name: str) -> None:  # ShardWriter calls this after closing each shard
        if failed:
            Path(tmp_name).unlink()
            return
        final = Path(tmp_name).with_suffix("")
        Path(tmp_name).replace(final)
        written.append(final)

    pattern = str(out_dir).replace("%", "%%") + "/%06d.tar.tmp"
    with ShardWriter(
        pattern, maxcount=maxcount, maxsize=maxsize, post=publish, verbose=0, encoder=False, **_TAR_HEADER
    ) as sink:
        try:
            for people in _images(samples):
                sink.write(encode_image(people))
        except BaseException:
            failed = True
            raise
    return written


def _images(samples: Iterable[PersonSample]) -> Iterator[list[PersonSample]]:
    """Runs of samples with one key; a key that comes back after another key is an error."""
    done: set[str] = set()
    people: list[PersonSample] = []
    for sample in samples:
        if people and sample.key != people[0].key:
            done.add(people[0].key)
            yield people
            people = []
        if sample.key in done:
            raise ValueError(f"key {sample.key!r} comes again after other keys: give the people of an image together")
        people.append(sample)
    if people:
        yield people


def encode_image(people: Sequence[PersonSample]) -> dict[str, Any]:
    """The WebDataset sample of one image: `__key__`, `jpg` or `png` (the bytes as they are), `data.pyd`
    and, when the people have one, `detection.npz`.

    The encoded sample is read back through `decode_image`, so nothing the reader would refuse is written.
    """
    key, image, detection = people[0].key, people[0].image_jpeg, people[0].detection_npz
    check_key(key)
    for person in people:
        if person.key != key or person.image_jpeg != image or person.detection_npz != detection:
            raise ValueError(
                f"{person.sample_id}: the people of one image must share its key, image and detection bytes"
            )
    entries = {
        image_ext(image): image,
        DATA_EXT: pickle.dumps([person_to_dict(p) for p in people], protocol=PICKLE_PROTOCOL),
    }
    if detection is not None:
        entries[DETECTION_EXT] = detection
    # A NaN SKEL label is how HSMR's tars say "no label": the reader notes it, the writer may write it.
    list(decode_image(key, entries, people[0].dataset, refuse=_raise, note=_ignore))
    return {"__key__": key, **entries}


def _raise(key: str, reason: str) -> None:
    raise ValueError(f"{key}: {reason}")


def _ignore(key: str, reason: str) -> None:
    pass


# -------------------------------------------------------------------------------- evaluation .npz
def read_eval_npz(
    path: Path | str, dataset: str, image_root: Path | str | None = None, *, quarantine: Quarantine
) -> Iterator[PersonSample]:
    """The people of an HMR2.0 evaluation .npz (loaded without pickle), each validated.

    Keypoints: `body_keypoints_*` (N,25,·) and `extra_keypoints_*` (N,19,·) joined into the 44;
    a missing part is zeros (confidence 0, as HMR2.0 reads it). SMPL: `body_pose` (N,72) holds the
    global orientation first (HMR2.0), or `global_orient` (N,3) + `body_pose` (N,69) (MOYO). Missing
    pose or betas are zeros with `has_* = 0`; present ones without `has_*` count as given (1).
    `scale` may be (N,) and is then used for both sides. The key is `imgname` without its extension,
    dots made underscores; `personid` when the file has it, else the person's index in its image.
    Images are read from `image_root / imgname`; without `image_root`, `image_jpeg` is b"".
    A file that cannot be read at all is one quarantine entry with key None.
    """
    path = Path(path)
    try:
        data = load_npz_arrays(path)
    except InvalidSample as err:
        quarantine.add(path, None, str(err))
        return
    yield from read_eval_arrays(data, path, dataset, image_root, quarantine=quarantine)


def load_npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz, loaded without pickle; InvalidSample when it cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise InvalidSample(f"unreadable .npz ({type(err).__name__}: {err})") from None


def read_eval_arrays(
    data: dict[str, np.ndarray],
    source: Path,
    dataset: str,
    image_root: Path | str | None = None,
    *,
    quarantine: Quarantine,
    extra_info: dict[str, np.ndarray] | None = None,
) -> Iterator[PersonSample]:
    """`read_eval_npz` on arrays already loaded from `source`; `extra_info` columns (N, ...) go into
    each person's `extra_info` as lists (e.g. a camera's intrinsics)."""
    try:
        columns = _eval_columns(data)
    except InvalidSample as err:
        quarantine.add(source, None, str(err))
        return
    for row, (name, key, person_id, problem) in enumerate(_eval_keys(columns["imgname"], columns.get("personid"))):
        try:
            if problem:
                raise InvalidSample(problem)
            sample = _eval_row(columns, row, name, key, person_id, dataset, image_root)
        except InvalidSample as err:
            quarantine.add(source, sample_id(key, person_id), str(err))
            continue
        sample.extra_info.update({extra: values[row].tolist() for extra, values in (extra_info or {}).items()})
        yield sample


def _eval_columns(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays of the file, normalised to the HMR2.0 per-person fields with N rows each."""
    missing = [name for name in ("imgname", "center", "scale") if name not in data]
    if missing:
        raise InvalidSample(f"missing array(s) {', '.join(missing)}")
    if data["imgname"].ndim != 1 or data["imgname"].dtype.kind not in "US":
        raise InvalidSample(f"imgname is {data['imgname'].dtype} {data['imgname'].shape}, expected (N,) strings")
    n = len(data["imgname"])
    columns = {
        "imgname": data["imgname"],
        "center": data["center"],
        "scale": _scale_pairs(data["scale"]),
        "keypoints_2d": _joined_keypoints(data, "2d", 3, n),
        "keypoints_3d": _joined_keypoints(data, "3d", 4, n),
        **_smpl_columns(data, n),
    }
    if "personid" in data:
        if data["personid"].dtype.kind not in "iu":
            raise InvalidSample(f"personid has dtype {data['personid'].dtype}, expected integers")
        columns["personid"] = data["personid"]
    for name, column in columns.items():
        expected = (n, *PERSON_ARRAY_SHAPES.get(name, ()))
        if column.shape != expected:
            raise InvalidSample(f"{name} has shape {column.shape}, expected {expected}")
    return columns


def _scale_pairs(scale: np.ndarray) -> np.ndarray:
    # HMR2.0 files keep one scale per person, (N,) or (N, 1), for a square box.
    if scale.ndim == 1 or (scale.ndim == 2 and scale.shape[1] == 1):
        return np.repeat(scale.reshape(-1, 1), 2, axis=1)
    return scale


def _joined_keypoints(data: dict[str, np.ndarray], kind: str, width: int, n: int) -> np.ndarray:
    parts = [
        (f"body_keypoints_{kind}", _NUM_BODY_KEYPOINTS),
        (f"extra_keypoints_{kind}", C.NUM_KEYPOINTS - _NUM_BODY_KEYPOINTS),
    ]
    arrays = [data[name] if name in data else np.zeros((n, count, width), np.float32) for name, count in parts]
    for (name, count), array in zip(parts, arrays, strict=True):
        if array.shape != (n, count, width):
            raise InvalidSample(f"{name} has shape {array.shape}, expected {(n, count, width)}")
    return np.concatenate(arrays, axis=1)


def _smpl_columns(data: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    def given(name: str) -> np.ndarray:
        return np.full(n, 1.0 if name in data else 0.0)

    if "global_orient" in data:
        global_orient, body_pose = data["global_orient"], data.get("body_pose", np.zeros((n, 69), np.float32))
    else:
        full_pose = data.get("body_pose", np.zeros((n, 72), np.float32))
        if full_pose.shape != (n, 72):
            raise InvalidSample(f"body_pose has shape {full_pose.shape}, expected {(n, 72)} (or add global_orient)")
        global_orient, body_pose = full_pose[:, :3], full_pose[:, 3:]
    return {
        "global_orient": global_orient,
        "body_pose": body_pose,
        "has_body_pose": data["has_body_pose"] if "has_body_pose" in data else given("body_pose"),
        "betas": data.get("betas", np.zeros((n, C.NUM_BETAS), np.float32)),
        "has_betas": data["has_betas"] if "has_betas" in data else given("betas"),
    }


def _eval_keys(imgnames: np.ndarray, person_ids: np.ndarray | None) -> list[tuple[str, str, int, str | None]]:
    """(imgname, key, personid, problem or None) per row; two image names with one key are a problem."""
    image_of: dict[str, str] = {}
    count: dict[str, int] = {}
    rows = []
    for row, raw_name in enumerate(imgnames):
        name = raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)
        key = str(PurePosixPath(name).with_suffix("")).replace(".", "_") if name else ""
        other = image_of.setdefault(key, name)
        problem = "empty imgname" if not name else None
        if other != name:
            problem = f"imgname {name!r} and {other!r} map to the same key"
        person_id = int(person_ids[row]) if person_ids is not None else count.get(key, 0)
        count[key] = count.get(key, 0) + 1
        rows.append((name, key, person_id, problem))
    return rows


def _eval_row(
    columns: dict[str, np.ndarray],
    row: int,
    imgname: str,
    key: str,
    person_id: int,
    dataset: str,
    image_root: Path | str | None,
) -> PersonSample:
    image = b""
    if image_root is not None:
        image_path = Path(image_root) / imgname
        if not image_path.is_file():
            raise InvalidSample(f"image {image_path} not found")
        image = image_path.read_bytes()
        _check_image(image)
    return PersonSample(
        key=key,
        person_id=person_id,
        dataset=dataset,
        image_jpeg=image,
        # A copy, so a kept sample does not pin the whole column in memory.
        **{name: _array(name, columns[name][row], shape).copy() for name, shape in PERSON_ARRAY_SHAPES.items()},
        has_body_pose=_number("has_body_pose", columns["has_body_pose"][row]),
        has_betas=_number("has_betas", columns["has_betas"][row]),
    )


def write_eval_npz(samples: Iterable[PersonSample], path: Path | str, image_root: Path | str | None = None) -> None:
    """Write samples as an HMR2.0 evaluation .npz (`body_pose` (N,72) with the global orientation first).

    `imgname` is `{key}.jpg`; with `image_root` the image bytes are written there too. SKEL labels and
    `extra_info` have no place in this format and are not written. The file appears whole or not at all.
    """
    samples = list(samples)
    if not samples:
        raise ValueError("an evaluation .npz needs at least one sample")
    for sample in samples:
        check_key(sample.key)
        person_from_dict(person_to_dict(sample), sample.key, sample.dataset, b"", note=_raise)
    if len({s.sample_id for s in samples}) < len(samples):
        raise ValueError("two samples share a sample id (key and personid)")
    imgnames = [f"{s.key}.jpg" for s in samples]
    if image_root is not None:
        for name, sample in zip(imgnames, samples, strict=True):
            (Path(image_root) / name).parent.mkdir(parents=True, exist_ok=True)
            (Path(image_root) / name).write_bytes(sample.image_jpeg)

    def stack(name: str) -> np.ndarray:
        return np.stack([getattr(s, name) for s in samples])

    keypoints_2d, keypoints_3d = stack("keypoints_2d"), stack("keypoints_3d")
    write_npz_atomically(
        path,
        imgname=np.array(imgnames),
        personid=np.array([s.person_id for s in samples], np.int64),
        center=stack("center"),
        scale=stack("scale"),
        body_keypoints_2d=keypoints_2d[:, :_NUM_BODY_KEYPOINTS],
        extra_keypoints_2d=keypoints_2d[:, _NUM_BODY_KEYPOINTS:],
        body_keypoints_3d=keypoints_3d[:, :_NUM_BODY_KEYPOINTS],
        extra_keypoints_3d=keypoints_3d[:, _NUM_BODY_KEYPOINTS:],
        body_pose=np.concatenate([stack("global_orient"), stack("body_pose")], axis=1),
        has_body_pose=np.array([s.has_body_pose for s in samples], np.float64),
        betas=stack("betas"),
        has_betas=np.array([s.has_betas for s in samples], np.float64),
    )
