"""Conversion quality on the synthetic world, where the truth behind the SMPL pseudo-GT is known."""

from __future__ import annotations

import numpy as np
import pytest

from hsmr_data import conversion, label_table
from hsmr_data.synthetic.world import SynthConfig, generate_dataset
from hsmr_data.truth_report import errors_by_corruption, label_errors

PEOPLE = 64


@pytest.fixture(scope="module")
def converted(model_paths, tmp_path_factory):
    root = tmp_path_factory.mktemp("quality")
    generate_dataset(model_paths, root / "synth", SynthConfig(count=PEOPLE, seed=3, batch_size=PEOPLE))
    config = conversion.ConvertConfig(
        dataset_dir=str(root / "synth"), table_uri=str(root / "labels"), models_root=str(model_paths.smpl.parent.parent)
    )
    conversion.convert_dataset(config)
    labels = label_table.read_labels(config.table_uri)
    errors = label_errors(labels, str(root / "synth/truth/ground_truth.parquet"), conversion.Converter(config).skel)
    return labels, errors


@pytest.mark.slow
def test_labels_follow_the_smpl_mesh_closely(converted):
    labels, _ = converted
    assert labels.num_rows == PEOPLE
    # Mean vertex distance to the SMPL pseudo-GT: the synthetic SMPL and SKEL differ in the shoulder
    # girdle and spine (SKEL's scapula and spine translations), which bounds the median fit near 1 cm.
    pve_mean = labels.column("pve_mean").to_numpy()
    assert np.median(pve_mean) < 0.015


@pytest.mark.slow
def test_clean_pseudo_gt_gives_the_true_pose_and_gross_failures_are_flagged(converted):
    _, errors = converted
    report = errors_by_corruption(errors)
    print(report)
    clean, gross = report["clean"], report["gross"]
    # Clean SMPL is itself a fit to the true skin (~2 cm mean vertex error), so the recovered DoFs
    # sit a few degrees from the truth; a gross failure puts them tens of degrees away.
    assert clean["q_error_deg"] < 5.0 and clean["joint_error_mm"] < 30.0
    assert gross["share_pve_max_over_6cm"] == 1.0 and gross["share_passed"] == 0.0
    assert clean["share_passed"] > gross["share_passed"] + 0.5
    corrupted = np.array([kind != "clean" for kind in errors.corruption])
    assert (errors.pve_max_m[corrupted] > 0.06).mean() > (errors.pve_max_m[~corrupted] > 0.06).mean()
