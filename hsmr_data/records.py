"""The one record type every step downstream of the readers uses: a person in an image.

A dataset sample (WebDataset `__key__`) is an image with one or more people; the pipeline works
per person, so a record is one person and its id is `{__key__}_{personid}`. Arrays follow the
HMR2.0 per-person keys (pixels for 2D keypoints, metres for 3D), so a record maps onto a tar entry
field for field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hsmr_model import skel_constants as C


@dataclass
class SkelLabel:
    """A SKEL label of one person (the HSMR `orig_*` or `flip_*` keys)."""

    poses: np.ndarray  # (46,) q
    betas: np.ndarray  # (10,)
    trans: np.ndarray  # (3,) camera-frame translation
    pve_max: float  # max over the 6890 vertices of the SMPL–SKEL distance, metres
    pve_mean: float  # mean of the same distances, metres


@dataclass
class PersonSample:
    """One person: keypoints, crop, SMPL pseudo-GT, and the SKEL label once one exists."""

    key: str  # the image's WebDataset `__key__` (may hold folders; no dot after the last '/')
    person_id: int
    dataset: str
    image_jpeg: bytes  # the encoded image (JPEG, or PNG) the person is in (shared by the people of one image)
    keypoints_2d: np.ndarray  # (44, 3) x, y in pixels, confidence
    keypoints_3d: np.ndarray  # (44, 4) x, y, z in metres, confidence
    center: np.ndarray  # (2,) crop centre, pixels
    scale: np.ndarray  # (2,) crop side = scale × 200 pixels
    body_pose: np.ndarray  # (69,) SMPL axis-angle, joints 1–23
    global_orient: np.ndarray  # (3,) SMPL axis-angle
    betas: np.ndarray  # (10,) SMPL shape
    has_body_pose: float
    has_betas: float
    extra_info: dict[str, Any] = field(default_factory=dict)
    skel: SkelLabel | None = None
    skel_flip: SkelLabel | None = None
    detection_npz: bytes | None = None  # the image's HMR2.0 `detection.npz` (masks), kept as it is, if it has one

    @property
    def sample_id(self) -> str:
        return sample_id(self.key, self.person_id)


def sample_id(key: str, person_id: int) -> str:
    """The id of a person across the pipeline (label table rows, shards, predictions)."""
    return f"{key}_{person_id}"


# Per-person array fields and their shapes: the readers validate against this table.
PERSON_ARRAY_SHAPES: dict[str, tuple[int, ...]] = {
    "keypoints_2d": (C.NUM_KEYPOINTS, 3),
    "keypoints_3d": (C.NUM_KEYPOINTS, 4),
    "center": (2,),
    "scale": (2,),
    "body_pose": (69,),
    "global_orient": (3,),
    "betas": (C.NUM_BETAS,),
}
SKEL_LABEL_SHAPES: dict[str, tuple[int, ...]] = {"poses": (C.NUM_DOFS,), "betas": (C.NUM_BETAS,), "trans": (3,)}
