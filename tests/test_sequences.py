"""Motion sequences: the AMASS-style reader, pelvis unwrapping, the smoothness anchors, and whole
synthetic sequences converted with no seams at batch boundaries and no wrapped angles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hsmr_data.sequences import (
    SequenceConfig,
    SequenceConverter,
    SequenceFileError,
    SkelSequence,
    batch_starts,
    convert_sequences,
    neighbour_anchors,
    read_amass_npz,
    unwrap_pelvis,
)
from hsmr_data.synthetic.motion import read_truth, write_motion_sequences
from hsmr_model import skel_constants as C
from hsmr_model.model_files import ModelFileError, gendered_smpl_path
from hsmr_model.skel_fit import SkelFitConfig
from hsmr_model.skel_fit_init import bone_rotation

FRAMES = 40


def _amass_arrays(frames: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "poses": rng.normal(scale=0.3, size=(frames, 156)),
        "betas": rng.normal(size=16),
        "trans": rng.normal(size=(frames, 3)),
        "gender": np.array("female"),
        "mocap_framerate": np.array(120.0),
    }


def test_reader_accepts_every_key_variant(tmp_path):
    base = _amass_arrays()
    np.savez(tmp_path / "smplh.npz", **base)
    reference = read_amass_npz(tmp_path / "smplh.npz")
    assert reference.gender == "female" and reference.frame_rate == 120.0 and reference.frames == 6
    assert np.array_equal(reference.body_pose[:, 63:], np.zeros((6, 6)))  # SMPL joints 22, 23 zeroed
    assert np.array_equal(reference.global_orient, base["poses"][:, :3])
    assert np.array_equal(reference.betas, base["betas"][:10])

    smpl72 = np.concatenate([base["poses"][:, :66], np.zeros((6, 6))], axis=1)
    variants = {
        "smpl72": {**base, "poses": smpl72},
        "split": {
            **{k: v for k, v in base.items() if k != "poses"},
            "global_orient": base["poses"][:, :3],
            "body_pose": base["poses"][:, 3:66],
        },
        "axis_angle": {
            **{k: v for k, v in base.items() if k not in ("poses", "trans", "mocap_framerate")},
            "global_orient_axis_angle": base["poses"][:, :3],
            "body_pose_axis_angle": base["poses"][:, 3:66].reshape(6, 21, 3),
            "transl": base["trans"],
            "mocap_frame_rate": np.array(120.0),
        },
        "bytes_gender": {**base, "gender": np.array(b"female")},
    }
    for name, arrays in variants.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        sequence = read_amass_npz(tmp_path / f"{name}.npz")
        for field in ("global_orient", "body_pose", "betas", "transl"):
            assert np.allclose(getattr(sequence, field), getattr(reference, field)), (name, field)
        assert sequence.gender == "female" and sequence.frame_rate == 120.0, name


def test_reader_refuses_pickles_and_names_the_problem(tmp_path):
    arrays = _amass_arrays()
    np.savez(tmp_path / "pickled.npz", **{**arrays, "gender": np.array({"sex": "male"}, dtype=object)})
    with pytest.raises(SequenceFileError, match=r"pickled\.npz: holds pickled"):
        read_amass_npz(tmp_path / "pickled.npz")
    np.savez(tmp_path / "no_trans.npz", **{k: v for k, v in arrays.items() if k != "trans"})
    with pytest.raises(SequenceFileError, match=r"no_trans\.npz: missing key 'trans'"):
        read_amass_npz(tmp_path / "no_trans.npz")
    np.savez(tmp_path / "shape.npz", betas=arrays["betas"], gender=arrays["gender"])  # AMASS's per-subject file
    with pytest.raises(SequenceFileError, match="no pose"):
        read_amass_npz(tmp_path / "shape.npz")
    np.savez(tmp_path / "bad_gender.npz", **{**arrays, "gender": np.array("robot")})
    with pytest.raises(SequenceFileError, match="gender"):
        read_amass_npz(tmp_path / "bad_gender.npz")


def test_unwrap_pelvis_removes_wraps_and_branch_flips():
    rng = np.random.default_rng(1)
    frames = 200
    truth = np.zeros((frames, C.NUM_DOFS))
    truth[:, 0] = 0.4 * np.sin(np.linspace(0, 6, frames))
    truth[:, 1] = np.linspace(-0.3, 2.2, frames)  # past 90°: only the second Euler branch stays continuous
    truth[:, 2] = np.linspace(0, 5 * np.pi, frames)  # 2.5 turns
    truth[:, 3:] = rng.uniform(-0.5, 0.5, size=(frames, C.NUM_DOFS - 3))
    scrambled = truth.copy()
    flip = rng.random(frames) < 0.5
    scrambled[flip, :3] = scrambled[flip, :3] + np.array([math.pi, 0, math.pi])
    scrambled[flip, 1] = math.pi - truth[flip, 1]
    scrambled[:, :3] = np.remainder(scrambled[:, :3] + math.pi, 2 * math.pi) - math.pi
    as_rotation = torch.as_tensor(scrambled[:, :3])
    assert torch.allclose(bone_rotation(as_rotation, 0), bone_rotation(torch.as_tensor(truth[:, :3]), 0), atol=1e-9)

    unwrapped = unwrap_pelvis(scrambled, reference=truth[0])
    assert np.allclose(unwrapped, truth, atol=1e-9)
    # Without a reference the first frame may sit on the other branch or 2π away; it stays continuous.
    free = unwrap_pelvis(scrambled)
    assert np.abs(np.diff(free[:, :3], axis=0)).max() <= np.abs(np.diff(truth[:, :3], axis=0)).max() + 1e-9


def test_neighbour_anchors_match_the_pairwise_term():
    q = torch.randn(5, C.NUM_DOFS, dtype=torch.float64)
    before = torch.randn(C.NUM_DOFS, dtype=torch.float64)
    anchor, weight = neighbour_anchors(q, before, 0.5)
    x = torch.randn(5, C.NUM_DOFS, dtype=torch.float64)
    for t in range(5):
        neighbours = [before if t == 0 else q[t - 1]] + ([q[t + 1]] if t < 4 else [])
        pairwise = sum(0.5 * (x[t] - n).square().sum() for n in neighbours)
        anchored = (weight[t, : C.NUM_DOFS] * (x[t] - anchor[t, : C.NUM_DOFS]).square()).sum()
        constant = sum(0.5 * (x[t] * 0 + anchor[t, : C.NUM_DOFS] - n).square().sum() for n in neighbours)
        assert torch.allclose(pairwise, anchored + constant)
    assert weight[:, C.NUM_DOFS :].abs().sum() == 0  # β and translation are not pulled


def test_batch_starts_cover_every_frame_with_the_overlap():
    assert batch_starts(40, 16, 4) == [0, 12, 24]
    assert batch_starts(10, 16, 4) == [0]
    for frames in (1, 16, 17, 100):
        starts = batch_starts(frames, 16, 4)
        assert starts[-1] + 16 >= frames and all(b - a == 12 for a, b in zip(starts, starts[1:], strict=False))


def test_gendered_smpl_files(model_paths, tmp_path):
    assert model_paths.smpl_for("neutral") == model_paths.smpl
    for gender in ("male", "female"):
        assert model_paths.smpl_for(gender) == gendered_smpl_path(model_paths.smpl.parent, gender)
    from dataclasses import replace

    empty = replace(model_paths, smpl=tmp_path / "smpl" / "SMPL_NEUTRAL.pkl")
    with pytest.raises(ModelFileError, match="SMPL_MALE.pkl: file not found"):
        empty.smpl_for("male")


# ------------------------------------------------------------------------- whole sequences
@pytest.fixture(scope="module")
def motion_dir(model_paths, tmp_path_factory):
    out = tmp_path_factory.mktemp("motion")
    write_motion_sequences(model_paths, out, frames=FRAMES, names=("walking", "sitting_down"), smpl_iterations=8)
    return out


def _config(batch_size: int, **kwargs) -> SequenceConfig:
    return SequenceConfig(batch_size=batch_size, overlap=4, shape_frames=8, fit=SkelFitConfig(device="cpu"), **kwargs)


@pytest.fixture(scope="module")
def walking_fits(model_paths, motion_dir):
    sequence = read_amass_npz(motion_dir / "sequences" / "walking.npz")
    batched = SequenceConverter(model_paths, _config(16)).convert(sequence)
    whole = SequenceConverter(model_paths, _config(FRAMES)).convert(sequence)
    return batched, whole, read_truth(motion_dir / "truth" / "walking.npz")


@pytest.mark.slow
def test_walking_converts_without_wraps(walking_fits):
    batched, _, truth = walking_fits
    assert np.ptp(truth.q[:, 2]) > 2 * math.pi  # the walk turns more than once: a fitter in [−π, π) wraps
    true_jump = np.abs(np.diff(truth.q, axis=0)).max(axis=0)
    jump = np.abs(np.diff(batched.poses, axis=0)).max(axis=0)
    assert np.all(jump <= true_jump + np.radians(2.0)), C.DOF_NAMES[int(np.argmax(jump - true_jump))]
    offset = 2 * math.pi * np.round((batched.poses[0, :3] - truth.q[0, :3]) / (2 * math.pi))
    assert np.degrees(np.abs(batched.poses[:, :3] - offset - truth.q[:, :3])).max() < 3.0
    assert np.degrees(np.abs(batched.poses[:, 3:] - truth.q[:, 3:])).mean() < 2.0
    assert batched.pve_mean.mean() < 0.01 and batched.passed.all()


@pytest.mark.slow
def test_batches_leave_no_seam(walking_fits):
    batched, whole, _ = walking_fits
    difference = np.degrees(np.abs(batched.poses - whole.poses)).max(axis=1)  # (T,) worst DoF per frame
    assert difference.max() < 1.0, f"frame {difference.argmax()} differs by {difference.max():.2f}°"
    assert np.abs(batched.trans - whole.trans).max() < 0.005
    for start in batch_starts(FRAMES, 16, 4)[1:]:
        seam = np.abs(batched.poses[start] - batched.poses[start - 1]).max()
        assert seam <= np.abs(np.diff(whole.poses, axis=0)).max() + 1e-6


@pytest.mark.slow
def test_convert_sequences_writes_skel_npz_and_resumes(model_paths, motion_dir, tmp_path):
    out = tmp_path / "skel"
    (motion_dir / "extra").mkdir(exist_ok=True)
    bad = motion_dir / "extra" / "broken.npz"
    np.savez(bad, betas=np.zeros(10))
    converter = SequenceConverter(model_paths, _config(32))
    outcomes = convert_sequences(motion_dir, out, converter)
    bad.unlink()
    status = {o.sequence_id: o.status for o in outcomes}
    assert status["sequences/sitting_down"] == "converted" and status["extra/broken"] == "quarantined"
    assert (out / "quarantine.json").is_file()
    result = SkelSequence.read(out / "sequences" / "sitting_down.npz")
    assert result.poses.shape == (FRAMES, 46) and result.betas.shape == (10,) and result.trans.shape == (FRAMES, 3)
    assert result.gender == "female" and result.skel_gender == "female" and result.frame_rate == 30.0
    truth = read_truth(motion_dir / "truth" / "sitting_down.npz")
    # The heading crosses ±180°: continuous in the output, and on the truth's 2π branch.
    assert np.abs(np.diff(result.poses[:, 2])).max() < np.radians(5)
    offset = 2 * math.pi * np.round((result.poses[0, 2] - truth.q[0, 2]) / (2 * math.pi))
    assert np.degrees(np.abs(result.poses[:, 2] - offset - truth.q[:, 2])).max() < 3.0
    again = convert_sequences(motion_dir / "sequences", out / "sequences", converter)
    assert {o.status for o in again} == {"skipped"}


def test_cli_convert_seq_reports_a_refused_file(model_paths, tmp_path, capsys):
    from hsmr_data.cli import main

    (tmp_path / "in").mkdir()
    np.savez(tmp_path / "in" / "broken.npz", betas=np.zeros(10))
    models = str(model_paths.smpl.parent.parent)
    assert (
        main(["convert-seq", "--input", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--models", models]) == 1
    )
    assert '"status": "quarantined"' in capsys.readouterr().out
    assert (tmp_path / "out" / "quarantine.json").is_file()


@pytest.mark.slow
def test_a_broken_frame_is_flagged_not_hidden(model_paths, motion_dir, tmp_path):
    arrays = dict(np.load(motion_dir / "sequences" / "walking.npz", allow_pickle=False))
    frames = 12
    arrays.update(poses=arrays["poses"][:frames].copy(), trans=arrays["trans"][:frames])
    rng = np.random.default_rng(0)
    arrays["poses"][6, 3:66] += rng.normal(scale=1.2, size=63)  # a mocap glitch: every joint thrown
    np.savez(tmp_path / "glitch.npz", **arrays)
    result = SequenceConverter(model_paths, _config(16)).convert(read_amass_npz(tmp_path / "glitch.npz"))
    assert not result.pve_ok[6] and not result.passed[6]
    assert result.passed[[0, 1, 2, 3, 9, 10, 11]].all(), result.pve_max
