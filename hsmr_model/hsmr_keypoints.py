"""HSMR's 44 keypoints as one (44, 6890) regressor, composed from the files a user has.

HSMR computes its keypoints from the SKEL (or SMPL) skin, every step linear in the 6890 vertices:

1. `J_regressor_SKEL_mix_MALE.pkl` (24, 6890), dense or scipy sparse, gives 24 joints;
2. smplx's vertex-joint selector with `vertex_ids['smplh']` appends 11 skin vertices: nose, right
   and left eye, right and left ear, left big toe, small toe and heel, right big toe, small toe and
   heel (`SMPLH_FACE_FEET_VERTICES`; the fingertips smplx appends after them are not used);
3. the OpenPose BODY_25 order takes `OPENPOSE_FROM_JOINTS` of those 35 rows;
4. HMR2.0's `SMPL_to_J19.pkl` (19, 6890) adds the 19 extra keypoints.

So the keypoints are `regressor @ vertices`; `build_keypoint_regressor` writes that regressor in the
format `read_keypoint_regressor` reads (`keypoint_regressor_44.npz`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from hsmr_model import skel_constants as C
from hsmr_model.model_files import read_regressor_pickle, write_keypoint_regressor

# smplx's vertex_ids['smplh'] for the keypoints its VertexJointSelector appends, in its order.
SMPLH_FACE_FEET_VERTICES: tuple[tuple[str, int], ...] = (
    ("nose", 332), ("reye", 6260), ("leye", 2800), ("rear", 4071), ("lear", 583),
    ("LBigToe", 3216), ("LSmallToe", 3226), ("LHeel", 3387), ("RBigToe", 6617), ("RSmallToe", 6624), ("RHeel", 6787),
)  # fmt: skip
# Rows of [24 joints, 11 selected vertices] in the OpenPose BODY_25 order (HSMR's skel_wrapper).
OPENPOSE_FROM_JOINTS = (24, 12, 17, 19, 21, 16, 18, 20, 0, 2, 5, 8, 1, 4, 7, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34)
NUM_JOINTS = 24
NUM_EXTRA = C.NUM_KEYPOINTS - len(OPENPOSE_FROM_JOINTS)  # 19

JOINTS_HINT = (
    "J_regressor_SKEL_mix_MALE.pkl comes with HSMR's data inputs "
    "(https://huggingface.co/IsshikiHugh/HSMR-data_inputs, body_models/); "
    "`hsmr models synth` writes a synthetic stand-in."
)
EXTRA_HINT = (
    "SMPL_to_J19.pkl comes with HMR2.0's data (4D-Humans) and HSMR's data inputs "
    "(https://huggingface.co/IsshikiHugh/HSMR-data_inputs, body_models/); "
    "`hsmr models synth` writes a synthetic stand-in."
)


def compose_keypoint_regressor(joints: sp.spmatrix, extra: sp.spmatrix) -> sp.csr_matrix:
    """The (44, V) keypoint regressor from the (24, V) joint regressor and the (19, V) extra one."""
    if joints.shape[0] != NUM_JOINTS or extra.shape[0] != NUM_EXTRA or joints.shape[1] != extra.shape[1]:
        raise ValueError(
            f"expected ({NUM_JOINTS}, V) and ({NUM_EXTRA}, V) regressors, got {joints.shape}, {extra.shape}"
        )
    num_vertices = joints.shape[1]
    ids = np.array([vertex for _, vertex in SMPLH_FACE_FEET_VERTICES])
    if ids.max() >= num_vertices:
        raise ValueError(f"the smplh vertex ids need the 6890-vertex SMPL topology, got {num_vertices} vertices")
    selected = sp.csr_matrix((np.ones(len(ids)), (np.arange(len(ids)), ids)), shape=(len(ids), num_vertices))
    body = sp.vstack([sp.csr_matrix(joints), selected]).tocsr()[list(OPENPOSE_FROM_JOINTS)]
    return sp.vstack([body, sp.csr_matrix(extra)]).tocsr()


def keypoint_sources(models_root: Path | str) -> tuple[Path, Path]:
    """Where the two pickles go in a models folder: hsmr/J_regressor_SKEL_mix_MALE.pkl, hsmr/SMPL_to_J19.pkl."""
    folder = Path(models_root) / "hsmr"
    return folder / "J_regressor_SKEL_mix_MALE.pkl", folder / "SMPL_to_J19.pkl"


def build_keypoint_regressor(
    joints_path: Path | str, extra_path: Path | str, out_path: Path | str, num_vertices: int = C.SMPL_NUM_VERTICES
) -> sp.csr_matrix:
    """Read both pickles (restricted unpickler), compose, and write `out_path` (keypoint_regressor_44.npz)."""
    joints = read_regressor_pickle(joints_path, NUM_JOINTS, num_vertices, JOINTS_HINT)
    extra = read_regressor_pickle(extra_path, NUM_EXTRA, num_vertices, EXTRA_HINT)
    regressor = compose_keypoint_regressor(joints, extra)
    write_keypoint_regressor(out_path, regressor)
    return regressor
