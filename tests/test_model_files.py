"""Model files: official layouts, chumpy-free SMPL loading, refusal of unsafe pickles, clear errors."""

from __future__ import annotations

import os
import pickle
import pickletools
import sys
import types

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from hsmr_model import skel_constants as C
from hsmr_model.model_files import (
    ModelFileError,
    load_pickle_restricted,
    read_keypoint_regressor,
    read_skel_model,
    read_smpl_model,
)
from hsmr_model.smpl_layer import SMPLWithKeypoints, build_smpl

OFFICIAL_SKEL_KEYS = {
    "version", "skin_template_v", "skin_template_f", "shapedirs", "posedirs", "J_regressor",
    "J_regressor_osim", "skin_weights", "skel_template_v", "skel_template_f", "skel_weights",
    "skel_weights_rigid", "osim_kintree_table", "apose_rel_transfo", "apose_transfo", "tpose_transfo",
    "per_joint_rot", "parameter_mapping", "bone_names", "joints_name", "pose_params_name",
}  # fmt: skip


def _globals_in(path) -> set[str]:
    names, strings = set(), []
    for op, arg, _ in pickletools.genops(path.read_bytes()):
        if op.name == "GLOBAL":
            names.add(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            names.add(".".join(strings[-2:]))
        if isinstance(arg, str):
            strings.append(arg)
    return names


def test_synthetic_skel_file_has_the_official_layout(model_paths):
    data = load_pickle_restricted(model_paths.skel_male)
    assert set(data) == OFFICIAL_SKEL_KEYS
    assert data["version"] == "1.1.1"
    assert data["skin_template_v"].shape == (C.SMPL_NUM_VERTICES, 3)
    assert data["skin_template_f"].shape == (C.SMPL_NUM_FACES, 3)
    assert data["posedirs"].shape == (C.SMPL_NUM_VERTICES, 3, 207)
    for key in ("J_regressor", "J_regressor_osim", "skin_weights", "skel_weights", "skel_weights_rigid"):
        assert isinstance(data[key], sp.coo_matrix), key
    assert list(data["pose_params_name"]) == list(C.DOF_NAMES)
    male, female = read_skel_model(model_paths.skel_male), read_skel_model(model_paths.skel_female)
    assert np.array_equal(male.skin_template_f, female.skin_template_f)  # one topology, as SMPL/SKEL
    assert not np.allclose(male.skin_template_v, female.skin_template_v)


def test_synthetic_smpl_file_holds_chumpy_arrays_like_the_official_one(model_paths):
    globals_used = _globals_in(model_paths.smpl)
    assert "chumpy.ch.Ch" in globals_used
    assert any(name.endswith("csc_matrix") for name in globals_used)
    model = read_smpl_model(model_paths.smpl)
    assert model.v_template.shape == (C.SMPL_NUM_VERTICES, 3)
    assert model.f.shape == (C.SMPL_NUM_FACES, 3)
    assert model.kintree_table[0, 0] == -1


class _ChumpyStandIn:
    """Just enough of chumpy's Ch for smplx's own loader (chumpy itself does not install on numpy 2)."""

    def __setstate__(self, state):
        self.x = np.asarray(state["x"])

    def __array__(self, dtype=None, copy=None):
        return self.x if dtype is None else self.x.astype(dtype)

    @property
    def shape(self):
        return self.x.shape

    def __getitem__(self, index):
        return self.x[index]


@pytest.fixture
def chumpy_stand_in(monkeypatch):
    package, module = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")
    module.Ch = _ChumpyStandIn
    monkeypatch.setitem(sys.modules, "chumpy", package)
    monkeypatch.setitem(sys.modules, "chumpy.ch", module)


def test_smpl_through_smplx_own_loader_and_ours_is_identical(model_paths, chumpy_stand_in):
    import smplx

    theirs = smplx.SMPL(model_path=str(model_paths.smpl))  # smplx's plain-pickle path
    ours = build_smpl(model_paths.smpl)
    rng = np.random.default_rng(0)
    args = {
        "global_orient": torch.as_tensor(rng.normal(scale=0.5, size=(5, 3)), dtype=torch.float32),
        "body_pose": torch.as_tensor(rng.normal(scale=0.4, size=(5, 69)), dtype=torch.float32),
        "betas": torch.as_tensor(rng.normal(size=(5, 10)), dtype=torch.float32),
        "transl": torch.as_tensor(rng.normal(size=(5, 3)), dtype=torch.float32),
    }
    a, b = theirs(**args), ours(**args)
    assert torch.equal(a.vertices, b.vertices)
    assert torch.equal(a.joints, b.joints)
    assert (a.vertices - theirs.v_template).abs().max() > 0.1  # really posed


def test_python2_era_protocol0_smpl_pickle_loads_the_same(model_paths, tmp_path):
    from hsmr_data.synthetic.body_models import smpl_model_dict, write_pickle
    from hsmr_data.synthetic.humanoid import build_humanoid

    old = tmp_path / "SMPL_NEUTRAL.pkl"
    write_pickle(smpl_model_dict(build_humanoid("neutral", seed=0)), old, protocol=0)
    assert "copy_reg._reconstructor" in _globals_in(old)  # the Python 2 names, as in v1.0 files
    a, b = read_smpl_model(old), read_smpl_model(model_paths.smpl)
    assert np.array_equal(a.v_template, b.v_template) and np.array_equal(a.posedirs, b.posedirs)
    assert (a.J_regressor != b.J_regressor).nnz == 0


def test_smpl_npz_loads_like_the_pkl(model_paths, tmp_path):
    model = read_smpl_model(model_paths.smpl)
    npz = tmp_path / "SMPL_NEUTRAL.npz"
    np.savez(
        npz,
        v_template=model.v_template,
        shapedirs=model.shapedirs,
        posedirs=model.posedirs,
        J_regressor=model.J_regressor.toarray(),
        weights=model.weights,
        kintree_table=model.kintree_table,
        f=model.f,
    )
    pose = torch.as_tensor(np.random.default_rng(1).normal(scale=0.3, size=(1, 69)), dtype=torch.float32)
    assert torch.equal(build_smpl(npz)(body_pose=pose).vertices, build_smpl(model_paths.smpl)(body_pose=pose).vertices)


def test_smpl_keypoints_follow_the_stored_regressor(model_paths):
    model = SMPLWithKeypoints.from_files(model_paths.smpl, model_paths.keypoint_regressor)
    zeros = torch.zeros(1, 3)
    out = model(zeros, torch.zeros(1, 69), torch.zeros(1, 10))
    assert out.vertices.shape == (1, 6890, 3) and out.joints.shape == (1, 24, 3)
    assert out.keypoints.shape == (1, C.NUM_KEYPOINTS, 3)
    regressor = read_keypoint_regressor(model_paths.keypoint_regressor).matrix
    expected = regressor @ out.vertices[0].detach().double().numpy()
    assert np.abs(out.keypoints[0].detach().numpy() - expected).max() < 1e-5


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_execution_payload_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "SMPL_NEUTRAL.pkl"
    evil.write_bytes(pickle.dumps({"v_template": _Payload(marker)}, protocol=2))
    with pytest.raises(ModelFileError, match=r"refusing to load global '(posix|os)\.system'") as err:
        read_smpl_model(evil)
    assert str(evil) in str(err.value)
    assert not marker.exists()


def _rewrite(source, target, **changes):
    data = load_pickle_restricted(source)
    for key, value in changes.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    target.write_bytes(pickle.dumps(data, protocol=2))
    return target


def test_wrong_skel_version_names_file_key_and_expectation(model_paths, tmp_path):
    bad = _rewrite(model_paths.skel_male, tmp_path / "skel_male.pkl", version="1.0.0")
    with pytest.raises(ModelFileError) as err:
        read_skel_model(bad)
    message = str(err.value)
    assert str(bad) in message and "'version'" in message and "1.1.1" in message and "1.0.0" in message
    assert "skel.is.tue.mpg.de" in message


def test_missing_key_and_dense_sparse_key_are_reported(model_paths, tmp_path):
    missing = _rewrite(model_paths.skel_male, tmp_path / "a.pkl", per_joint_rot=None)
    with pytest.raises(ModelFileError, match="key 'per_joint_rot': missing key"):
        read_skel_model(missing)
    dense = load_pickle_restricted(model_paths.skel_male)["skin_weights"].toarray()
    not_sparse = _rewrite(model_paths.skel_male, tmp_path / "b.pkl", skin_weights=dense)
    with pytest.raises(ModelFileError, match="key 'skin_weights': expected a scipy.sparse COO matrix"):
        read_skel_model(not_sparse)
    wrong_shape = _rewrite(model_paths.skel_male, tmp_path / "c.pkl", per_joint_rot=np.zeros((23, 3, 3)))
    with pytest.raises(ModelFileError, match=r"expected shape \(24, 3, 3\), found \(23, 3, 3\)"):
        read_skel_model(wrong_shape)


def test_missing_or_truncated_files_get_clear_errors(model_paths, tmp_path):
    with pytest.raises(ModelFileError, match="file not found.*smpl.is.tue.mpg.de"):
        read_smpl_model(tmp_path / "SMPL_NEUTRAL.pkl")
    truncated = tmp_path / "skel_female.pkl"
    truncated.write_bytes(model_paths.skel_female.read_bytes()[:1000])
    with pytest.raises(ModelFileError, match="skel_female.pkl"):
        read_skel_model(truncated)
    with pytest.raises(ModelFileError, match="expected a .pkl or .npz"):
        read_smpl_model(tmp_path / "model.txt")
