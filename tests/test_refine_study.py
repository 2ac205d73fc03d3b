"""The refiner study at test size: its table has every figure, and the default refiner does not make the
labels worse in 3D when it starts from good predictions, with no refined label past its joint limits."""

from __future__ import annotations

import math

import pytest

from hsmr_data import cli
from hsmr_data.refine_study import StudyConfig, default_variant, run_study, to_markdown


@pytest.mark.slow
def test_the_default_refiner_does_not_raise_the_3d_error_from_good_predictions(model_paths, tmp_path):
    models = str(model_paths.smpl.parent.parent)
    config = StudyConfig(models, str(tmp_path / "study"), people=24, cases=("truth_noise",),
                         variants=(default_variant(),))  # fmt: skip
    result = run_study(config, log=lambda line: None)
    (row,) = result.rows
    assert row["samples"] == 24 and 0 < row["share_replaced"] <= 1
    before, after = row["joint_mm_all"]
    assert after <= before, f"the default refiner raised the mean joint error {before:.1f} -> {after:.1f} mm"
    assert row["mpvpe_mm_all"][1] <= row["mpvpe_mm_all"][0]
    assert row["violations_replaced"] == {"0": 0.0, "10": 0.0}
    assert all(math.isfinite(v) for v in row["joint_mm_replaced"])
    table = to_markdown(result)
    assert "| truth_noise | default |" in table and result.qualifying == ["default"]


def test_cli_has_the_study():
    args = cli.build_parser().parse_args(["study", "refine", "--people", "8", "--work", "w", "--out", "o.json"])
    assert args.people == 8 and args.run.__name__ == "_study_refine"
