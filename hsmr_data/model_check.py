"""Load a set of body-model files through the real loaders and check they behave: for users
plugging in real SMPL/SKEL files (`hsmr models check`) and for the synthetic ones."""

from __future__ import annotations

from pathlib import Path

import torch

from hsmr_model import skel_constants as C
from hsmr_model.body_models import BodyModels
from hsmr_model.model_files import SKEL_SOURCE_HINT, SMPL_SOURCE_HINT, BodyModelPaths, read_keypoint_regressor

KEYPOINT_REGRESSOR_SOURCE = (
    "built by `hsmr models keypoints --joints J_regressor_SKEL_mix_MALE.pkl --extra SMPL_to_J19.pkl "
    "--out <models>/smpl` from HSMR's two pickles (https://huggingface.co/IsshikiHugh/HSMR-data_inputs, "
    "body_models/)"
)


def missing_files(paths: BodyModelPaths) -> list[tuple[Path, str]]:
    """Every model file that is not there, with where it comes from."""
    sources = {
        paths.smpl: SMPL_SOURCE_HINT,
        paths.skel_male: SKEL_SOURCE_HINT,
        paths.skel_female: SKEL_SOURCE_HINT,
        paths.keypoint_regressor: KEYPOINT_REGRESSOR_SOURCE,
    }
    return [(Path(path), source) for path, source in sources.items() if not Path(path).is_file()]


@torch.no_grad()
def check_models(paths: BodyModelPaths) -> dict:
    """Load every file (raising `ModelFileError` on the first bad one) and run a rest-pose forward.

    Returns:
        A JSON-ready summary per file: sizes and the rest-pose residuals, which must be ~0:
        at q = 0, β = 0 the SKEL skin is its template and the SMPL mesh is its template.
    """
    smpl = BodyModels.load(paths).smpl
    smpl_out = smpl()
    regressor = read_keypoint_regressor(paths.keypoint_regressor, num_vertices=smpl.v_template.shape[0])
    report = {
        "smpl": {
            "path": str(paths.smpl),
            "vertices": int(smpl.v_template.shape[0]),
            "faces": int(smpl.faces.shape[0]),
            "betas": int(smpl.num_betas),
            "rest_residual_m": float((smpl_out.vertices[0] - smpl.v_template).abs().max()),
        },
        "keypoint_regressor": {
            "path": str(paths.keypoint_regressor),
            "keypoints": int(regressor.matrix.shape[0]),
            "support_vertices": int((regressor.matrix.getnnz(axis=0) > 0).sum()),
        },
    }
    for sex in ("male", "female"):
        layer = BodyModels.load(paths, sex).skel
        zero_q, zero_b = torch.zeros(1, C.NUM_DOFS), torch.zeros(1, C.NUM_BETAS)
        out = layer(zero_q, zero_b, skeleton_mesh=True)
        report[f"skel_{sex}"] = {
            "path": str(paths.skel(sex)),
            "skin_vertices": int(layer.skin_template.shape[0]),
            "skeleton_vertices": int(layer.skel_template.shape[0]),
            "rest_residual_m": float((out.skin_verts[0] - layer.skin_template).abs().max()),
            "height_m": float(out.skin_verts[0, :, 1].max() - out.skin_verts[0, :, 1].min()),
        }
    return report
