"""The .npz codec of the training shards: float arrays without pickle, with the same bytes for the
same arrays (fixed member dates, members in name order)."""

from __future__ import annotations

import io
import zipfile

import numpy as np

_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip entry can hold: fixed, so npz bytes repeat


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz archive of `arrays` (no pickled objects), byte-identical for identical arrays.

    np.savez stamps each member with the current time; this writes the same .npy members with a
    fixed date, in name order.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(arrays[name]), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE), member.getvalue())
    return buffer.getvalue()


def npz_arrays(data: bytes) -> dict[str, np.ndarray]:
    """The arrays of an .npz archive's bytes, refusing pickled objects."""
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}
