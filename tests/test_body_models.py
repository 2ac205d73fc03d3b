"""The body-model bundle: one per process and key, members read on first use, the link fitting needs."""

from __future__ import annotations

import pytest
import torch

from hsmr_model.body_models import SKEL_SEX, BodyModels
from hsmr_model.model_files import BodyModelPaths, ModelFileError


def test_one_bundle_per_files_sex_and_device(model_paths):
    models = BodyModels.load(model_paths)
    assert models is BodyModels.load(model_paths, SKEL_SEX, "cpu")
    assert models.skel is BodyModels.load(model_paths).skel  # loaded once, then shared
    assert BodyModels.load(model_paths, "female") is not models
    assert models.device == torch.device("cpu") and models.sex == "male"


def test_auto_device_is_resolved(model_paths):
    expected = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert BodyModels.load(model_paths, device="auto").device == expected


def test_members_match_the_files(model_paths):
    models = BodyModels.load(model_paths)
    skin = models.skel(torch.zeros(1, 46), torch.zeros(1, 10)).skin_verts
    assert skin.shape == (1, 6890, 3)
    assert models.keypoints(skin).shape == (1, 44, 3)
    assert models.smpl().vertices.shape == (1, 6890, 3)
    assert models.link.beta_matrix.shape == (10, 10)


def test_smpl_is_read_only_when_used(model_paths, tmp_path):
    # SKEL and the keypoints of files whose SMPL is missing: a step that never poses SMPL still runs.
    paths = BodyModelPaths(tmp_path / "absent.pkl", model_paths.skel_male, model_paths.skel_female,
                           model_paths.keypoint_regressor)  # fmt: skip
    models = BodyModels.load(paths)
    assert models.skel.faces.shape[1] == 3 and models.keypoints.num_vertices == 6890
    with pytest.raises(ModelFileError, match="absent.pkl"):
        models.smpl()  # the property reads the file


def test_a_sex_skel_lacks_is_refused_before_reading(model_paths):
    with pytest.raises(ValueError, match="no neutral SKEL"):
        BodyModels.load(model_paths, "neutral")
