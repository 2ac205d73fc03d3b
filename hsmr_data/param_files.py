"""Parameter files of image datasets (CameraHMR / BEDLAM-style .npz) → `PersonSample` records.

One file holds N people: `imgname` (N,) image paths under an image root, `center` (N, 2) and
`scale` (N,) or (N, 2) (box side = scale × 200 px), `pose` (N, 72) SMPL axis-angle with the global
orientation first, `shape` (N, ≥10) SMPL β (the first 10 used), optional `cam_int` (N, 3, 3) (kept
in each person's `extra_info`), optional `gt_keypoints` or `keypoints` (N, 44, 3) in pixels with
confidence (absent: zeros, confidence 0). The file is loaded without pickle, mapped onto the HMR2.0
evaluation-npz fields and read by the same validating reader (`hmr2_format.read_eval_arrays`), so a
bad row is quarantined with its sample id and reason and the rest goes on, like the tars.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from hsmr_data.hmr2_format import InvalidSample, load_npz_arrays, read_eval_arrays
from hsmr_data.quarantine import Quarantine
from hsmr_data.records import PersonSample
from hsmr_model import skel_constants as C

NUM_BODY_KEYPOINTS = 25  # OpenPose BODY_25, then the 19 extra keypoints


def eval_fields(data: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The HMR2.0 evaluation-npz arrays of a parameter file, and the per-person extra columns (cam_int).

    Raises InvalidSample when a key is missing or has the wrong shape.
    """
    missing = [name for name in ("imgname", "center", "scale", "pose", "shape") if name not in data]
    if missing:
        raise InvalidSample(f"missing array(s) {', '.join(missing)} (found {sorted(data)})")
    shape = np.asarray(data["shape"])
    if shape.ndim != 2 or shape.shape[1] < C.NUM_BETAS:
        raise InvalidSample(f"shape has shape {shape.shape}, expected (N, ≥{C.NUM_BETAS})")
    fields = {
        "imgname": data["imgname"],
        "center": data["center"],
        "scale": data["scale"],
        "body_pose": data["pose"],
        "betas": shape[:, : C.NUM_BETAS],
    }
    keypoints = data.get("gt_keypoints", data.get("keypoints"))
    if keypoints is not None:
        if keypoints.ndim != 3 or keypoints.shape[1:] != (C.NUM_KEYPOINTS, 3):
            raise InvalidSample(f"keypoints have shape {keypoints.shape}, expected (N, {C.NUM_KEYPOINTS}, 3)")
        fields["body_keypoints_2d"] = keypoints[:, :NUM_BODY_KEYPOINTS]
        fields["extra_keypoints_2d"] = keypoints[:, NUM_BODY_KEYPOINTS:]
    extra = {}
    if "cam_int" in data:
        cam_int = data["cam_int"]
        if cam_int.shape != (len(data["imgname"]), 3, 3) or cam_int.dtype.kind != "f":
            raise InvalidSample(f"cam_int is {cam_int.dtype} {cam_int.shape}, expected (N, 3, 3) floats")
        extra["cam_int"] = cam_int
    return fields, extra


def read_param_file(
    path: Path | str, dataset: str, image_root: Path | str | None, *, quarantine: Quarantine
) -> Iterator[PersonSample]:
    """The people of one parameter file; an unreadable file is one quarantine entry (key None)."""
    path = Path(path)
    try:
        fields, extra = eval_fields(load_npz_arrays(path))
    except InvalidSample as err:
        quarantine.add(path, None, str(err))
        return
    yield from read_eval_arrays(fields, path, dataset, image_root, quarantine=quarantine, extra_info=extra)
