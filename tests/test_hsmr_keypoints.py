"""HSMR's 44-keypoint regressor from its two pickles, against smplx's own composition."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from smplx.lbs import vertices2joints
from smplx.vertex_ids import vertex_ids
from smplx.vertex_joint_selector import VertexJointSelector

from hsmr_data.cli import main
from hsmr_data.synthetic.humanoid import build_humanoid
from hsmr_model.hsmr_keypoints import build_keypoint_regressor, keypoint_sources
from hsmr_model.model_files import ModelFileError, read_keypoint_regressor

# HSMR's skel_wrapper: the OpenPose order over [24 joints, smplx's appended vertex joints].
OPENPOSE_IDX = [24, 12, 17, 19, 21, 16, 18, 20, 0, 2, 5, 8, 1, 4, 7, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34]


def smplx_keypoints(joints_pkl, extra_pkl, vertices: torch.Tensor) -> torch.Tensor:
    """The 44 keypoints as HSMR computes them, through smplx: (B, 6890, 3) → (B, 44, 3)."""
    # Plain pickle as HSMR's loader does: these are files this test session wrote itself.
    with open(joints_pkl, "rb") as handle:
        joints_regressor = pickle.load(handle, encoding="latin1")
    with open(extra_pkl, "rb") as handle:
        extra_regressor = pickle.load(handle, encoding="latin1")
    if sp.issparse(joints_regressor):
        joints_regressor = joints_regressor.todense()
    joints = vertices2joints(torch.tensor(np.asarray(joints_regressor)), vertices)
    joints = VertexJointSelector(vertex_ids=vertex_ids["smplh"]).double()(vertices, joints)
    extra = vertices2joints(torch.tensor(np.asarray(extra_regressor)), vertices)
    return torch.cat([joints[:, OPENPOSE_IDX], extra], dim=1)


def test_synthetic_body_has_smpl_vertex_count(model_paths):
    assert build_humanoid("neutral").vertices.shape == (6890, 3)


def test_builder_matches_smplx_composition(model_paths, tmp_path):
    joints_pkl, extra_pkl = keypoint_sources(model_paths.smpl.parent.parent)
    regressor = build_keypoint_regressor(joints_pkl, extra_pkl, tmp_path / "keypoint_regressor_44.npz")
    stored = read_keypoint_regressor(tmp_path / "keypoint_regressor_44.npz").matrix
    assert (stored != regressor).nnz == 0

    vertices = torch.randn(3, 6890, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = smplx_keypoints(joints_pkl, extra_pkl, vertices).numpy()
    ours = np.stack([stored @ v for v in vertices.numpy()])
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)
    # the synthetic models ship exactly this regressor (`hsmr models synth` composes it the same way)
    assert (read_keypoint_regressor(model_paths.keypoint_regressor).matrix != stored).nnz == 0


def test_smplh_vertices_sit_on_the_synthetic_landmarks(model_paths):
    """The synthetic skin's vertex order puts nose, eyes, ears, toes and heels at smplx's smplh ids."""
    body = build_humanoid("neutral")
    composed = read_keypoint_regressor(model_paths.keypoint_regressor).matrix @ body.vertices
    designed = body.keypoint_regressor @ body.vertices  # the humanoid's own landmarks (3-vertex means)
    assert np.abs(composed - designed).max() < 0.02  # metres


def test_dense_latin1_pickles_compose_the_same(model_paths, tmp_path):
    joints_pkl, extra_pkl = keypoint_sources(model_paths.smpl.parent.parent)
    with open(joints_pkl, "rb") as handle:
        dense = pickle.load(handle, encoding="latin1").toarray()
    (tmp_path / "joints.pkl").write_bytes(pickle.dumps(dense, protocol=0))  # a Python 2 era pickle
    regressor = build_keypoint_regressor(tmp_path / "joints.pkl", extra_pkl, tmp_path / "out.npz")
    reference = build_keypoint_regressor(joints_pkl, extra_pkl, tmp_path / "reference.npz")
    np.testing.assert_allclose(regressor.toarray(), reference.toarray(), rtol=0, atol=0)


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_bad_pickles_are_refused_with_the_file_named(model_paths, tmp_path):
    _, extra_pkl = keypoint_sources(model_paths.smpl.parent.parent)
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(ModelFileError, match="evil.pkl.*refusing to load global"):
        build_keypoint_regressor(tmp_path / "evil.pkl", extra_pkl, tmp_path / "out.npz")
    (tmp_path / "short.pkl").write_bytes(pickle.dumps(np.zeros((23, 6890))))
    with pytest.raises(ModelFileError, match=r"short.pkl.*expected shape \(24, 6890\).*HSMR-data_inputs"):
        build_keypoint_regressor(tmp_path / "short.pkl", extra_pkl, tmp_path / "out.npz")
    assert not (tmp_path / "out.npz").exists()


def test_models_keypoints_command(model_paths, tmp_path, capsys):
    joints_pkl, extra_pkl = keypoint_sources(model_paths.smpl.parent.parent)
    argv = ["models", "keypoints", "--joints", str(joints_pkl), "--extra", str(extra_pkl), "--out", str(tmp_path)]
    assert main(argv) == 0
    assert read_keypoint_regressor(tmp_path / "keypoint_regressor_44.npz").matrix.shape == (44, 6890)
    assert main([*argv[:3], str(tmp_path / "missing.pkl"), *argv[4:]]) == 2
    assert "missing.pkl: file not found" in capsys.readouterr().err
