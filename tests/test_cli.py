"""The `hsmr` command line and the demo, run the way a user runs them."""

from __future__ import annotations

import pickle

import pytest

from hsmr_data.cli import main
from hsmr_data.demo import run_demo
from hsmr_model.model_files import load_pickle_restricted


def test_models_synth_writes_the_three_model_files(tmp_path, capsys):
    assert main(["models", "synth", "--out", str(tmp_path)]) == 0
    for relative in ("smpl/SMPL_NEUTRAL.pkl", "skel/skel_male.pkl", "skel/skel_female.pkl"):
        assert (tmp_path / relative).stat().st_size > 100_000, relative
    assert (tmp_path / "smpl/keypoint_regressor_44.npz").is_file()
    assert "skel_female" in capsys.readouterr().out


def test_models_check_reports_a_broken_file_and_exits_nonzero(model_paths, tmp_path, capsys):
    for name in ("smpl", "skel"):
        (tmp_path / name).mkdir()
    for path in (model_paths.smpl, model_paths.skel_female, model_paths.keypoint_regressor):
        (tmp_path / path.parent.name / path.name).write_bytes(path.read_bytes())
    data = load_pickle_restricted(model_paths.skel_male)
    data["version"] = "1.0.0"
    (tmp_path / "skel" / "skel_male.pkl").write_bytes(pickle.dumps(data, protocol=2))

    assert main(["models", "check", "--root", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "skel_male.pkl" in error and "'version'" in error and "1.1.1" in error


def test_models_check_summarises_good_files(model_paths, capsys):
    root = model_paths.smpl.parent.parent
    assert main(["models", "check", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert '"rest_residual_m"' in out and '"skeleton_vertices"' in out


@pytest.mark.slow
def test_demo_writes_meshes_and_a_contact_sheet(model_paths, tmp_path):
    summary = run_demo(model_paths, tmp_path, seed=0)
    sheet = tmp_path / "bodies.png"
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sheet.stat().st_size > 5_000
    skin_obj = (tmp_path / "skel_male_skin.obj").read_text().splitlines()
    assert sum(line.startswith("v ") for line in skin_obj) == 6890
    assert sum(line.startswith("f ") for line in skin_obj) == 13776
    assert summary["models"]["skel_male"]["rest_residual_m"] < 1e-5
