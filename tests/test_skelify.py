"""SKELify: the objective's terms, the keypoint paths, the one scoring procedure, and fits to clean keypoints."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from hsmr_model import camera
from hsmr_model import skel_constants as C
from hsmr_model.metrics import skel_violations
from hsmr_model.model_files import read_keypoint_regressor
from hsmr_model.regressor import VertexRegressor
from hsmr_model.skel_layer import SKELLayer
from hsmr_model.skelify import (
    EXCLUDED_KEYPOINTS,
    REFINER_STAGES,
    Skelify,
    SkelifyConfig,
    Stage,
    bounded_dofs,
    from_scratch_stages,
    geman_mcclure,
    joint_limit_prior,
    keypoint_mask,
    limit_tensors,
    reprojection_term,
    torso_scale,
    unbounded_dofs,
)

# Few LBFGS iterations keep the fits to a few seconds on a CPU; the paper's refiner is REFINER_STAGES.
LIGHT = SkelifyConfig(
    stages=(Stage(steps=3, reprojection=1.0, shape=5.0, angle=4.78 * 0.17),), max_iter=10, device="cpu"
)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def bodies(model_paths):
    skel = SKELLayer.from_file(model_paths.skel("male"))
    regressor = VertexRegressor.from_sparse(read_keypoint_regressor(model_paths.keypoint_regressor).matrix)
    return skel, regressor


@pytest.fixture(scope="module")
def world(bodies):
    """Four people inside the limits, seen by the crop camera with every keypoint and no noise."""
    skel, regressor = bodies
    generator = torch.Generator().manual_seed(0)
    lower, upper = (
        torch.as_tensor(np.nan_to_num(b, posinf=0.0, neginf=0.0), dtype=torch.float32) for b in C.dof_limits()
    )
    q = (lower + upper) / 2 + (upper - lower) / 2 * 0.5 * (2 * torch.rand(4, 46, generator=generator) - 1)
    q[:, 0] = math.pi + 0.2 * torch.randn(4, generator=generator)
    q[:, 1:3] = 0.2 * torch.randn(4, 2, generator=generator)
    betas = 0.5 * torch.randn(4, 10, generator=generator)
    trans = torch.tensor([[0.0, 0.1, 45.0]]).expand(4, 3)
    with torch.no_grad():
        points = skel.keypoints(q, betas, None, regressor)
    keypoints = torch.cat([camera.project(points, trans), torch.ones(4, 44, 1)], dim=-1)
    return {"q": q, "betas": betas, "trans": trans, "keypoints": keypoints, "generator": generator}


def _limit_violation(q: torch.Tensor) -> torch.Tensor:
    lower, upper = limit_tensors(CPU)
    limited = q[:, list(C.LIMITED_DOFS)]
    return (torch.relu(lower - limited) + torch.relu(limited - upper)).sum(-1)


# ---------------------------------------------------------------------------------------- terms
def test_geman_mcclure_is_quadratic_near_zero_and_bounded():
    x = torch.tensor([0.0, 1e-3, 1.0, 1e4])
    rho = geman_mcclure(x, sigma=100.0)
    assert rho[0] == 0 and torch.isclose(rho[1], torch.tensor(1e-6), rtol=1e-4)
    assert torch.isclose(rho[2], torch.tensor(1e4 / (1e4 + 1)))
    assert rho[3] < 100.0**2 and torch.all(rho[1:] > rho[:-1])


def test_joint_limit_prior_is_the_mean_of_squared_exponentials():
    lower, upper = limit_tensors(CPU)
    at_lower = torch.zeros(1, 46)
    at_lower[0, list(C.LIMITED_DOFS)] = lower
    expected = (1 + torch.exp(lower - upper).square()).mean()
    assert torch.isclose(joint_limit_prior(at_lower, lower, upper)[0], expected)
    # Soft: lowest in the middle of the range, growing past either bound.
    middle = at_lower.clone()
    middle[0, list(C.LIMITED_DOFS)] = (lower + upper) / 2
    outside = at_lower.clone()
    outside[0, list(C.LIMITED_DOFS)] = lower - 0.5
    values = [joint_limit_prior(q, lower, upper)[0] for q in (middle, at_lower, outside)]
    assert 0 < values[0] < values[1] < values[2]
    assert joint_limit_prior(torch.zeros(1, 46), lower, upper).shape == (1,)


def test_torso_scale_uses_seen_edges_and_falls_back():
    keypoints = torch.zeros(3, 44, 3)
    keypoints[:, [5, 2], 1] = -0.1  # shoulders
    keypoints[:, [12, 9], 1] = 0.2  # hips
    keypoints[0, [5, 12, 2, 9], 2] = 1.0  # both edges seen: 0.3
    keypoints[1, [5, 12], 2] = 1.0  # one edge seen
    fallback = torch.tensor([0.5, 0.5, 0.25])
    assert torch.allclose(torso_scale(keypoints, fallback), torch.tensor([0.3, 0.3, 0.25]))
    assert torso_scale(torch.zeros(1, 44, 3), torch.zeros(1)) > 0  # never divides by zero


def test_excluded_and_unconfident_keypoints_do_not_count():
    generator = torch.Generator().manual_seed(1)
    keypoints = torch.cat([torch.rand(2, 44, 2, generator=generator), torch.full((2, 44, 1), 0.8)], -1)
    projected = torch.rand(2, 44, 2, generator=generator)
    mask, scale = keypoint_mask(REFINER_STAGES[0], CPU), torch.full((2,), 0.3)
    moved = keypoints.clone()
    moved[:, list(EXCLUDED_KEYPOINTS), :2] += 5.0
    base = reprojection_term(projected, keypoints, scale, mask)
    assert torch.allclose(base, reprojection_term(projected, moved, scale, mask))
    unseen = keypoints.clone()
    unseen[:, 0, 2] = 0.0
    unseen[:, 0, :2] += 5.0
    assert torch.all(reprojection_term(projected, unseen, scale, mask) < base)
    camera_mask = keypoint_mask(from_scratch_stages()[0], CPU)
    assert camera_mask.sum() == 13 and camera_mask[list(EXCLUDED_KEYPOINTS)].sum() == 0


def test_from_scratch_schedule_is_a_camera_stage_then_four_weighted_stages():
    stages = from_scratch_stages(steps=30, angle_scale=1.0)
    assert stages[0].camera_only and stages[0].depth == 100.0 and stages[0].reprojection == 1.78
    assert [s.shape for s in stages[1:]] == [100.0, 50.0, 10.0, 5.0]
    assert [s.angle for s in stages[1:]] == [404.0, 404.0, 57.4, 4.78]
    assert all(s.steps == 30 and not s.camera_only for s in stages[1:])


def test_bounded_dofs_stay_inside_the_limits_and_invert_inside_them():
    lower, upper = limit_tensors(CPU)
    free = torch.linspace(-20.0, 20.0, 41)[:, None].expand(41, lower.numel())
    q = bounded_dofs(free, lower, upper)
    assert torch.all(q >= lower) and torch.all(q <= upper)
    assert (bounded_dofs(torch.full((1, lower.numel()), math.pi / 2), lower, upper) - upper).abs().max() < 1e-4
    inside = (lower + upper) / 2 + (upper - lower) / 2 * torch.linspace(-0.9, 0.9, lower.numel())
    assert torch.allclose(bounded_dofs(unbounded_dofs(inside[None], lower, upper), lower, upper)[0], inside, atol=1e-5)
    outside = torch.stack([lower - 1.0, upper + 1.0])
    assert torch.allclose(
        bounded_dofs(unbounded_dofs(outside, lower, upper), lower, upper), torch.stack([lower, upper]), atol=1e-4
    )


@pytest.mark.slow
@pytest.mark.parametrize("hard_limits", [True, False])
def test_hard_limits_keep_every_dof_inside_where_the_soft_prior_does_not(bodies, world, hard_limits):
    """Keypoints of people far past their limits (knees bent backwards, elbows over-extended), fitted from
    that pose: the soft prior of HSMR's refiner lets the fit follow the keypoints outside, hard limits never
    leave the limits (Table 4's measure at tolerance 0, and every DoF)."""
    skel, regressor = bodies
    q_outside = world["q"].clone()
    lower, upper = (torch.as_tensor(b, dtype=torch.float32) for b in C.dof_limits())
    for name in ("knee_angle_r", "knee_angle_l", "elbow_flexion_r", "elbow_flexion_l"):
        q_outside[:, C.DOF_NAMES.index(name)] = lower[C.DOF_NAMES.index(name)] - 0.6
    with torch.no_grad():
        points = skel.keypoints(q_outside, world["betas"], None, regressor)
    keypoints = torch.cat([camera.project(points, world["trans"]), torch.ones(4, 44, 1)], dim=-1)
    skelify = Skelify(skel, regressor, replace(LIGHT, hard_limits=hard_limits))
    fit = skelify.fit(q_outside, world["betas"], keypoints)
    table4 = skel_violations(fit.q.numpy(), tolerance_deg=0.0)
    if hard_limits:
        assert torch.all(_limit_violation(fit.q) == 0)
        assert all(np.all(degrees == 0) for degrees in table4.values())
        assert torch.all(torch.isfinite(fit.kp2d_err))
    else:
        assert any(np.any(degrees > 10) for degrees in table4.values())


# ------------------------------------------------------------------------------ paths and scoring
def test_support_vertex_and_full_mesh_keypoints_agree(bodies, world):
    skel, regressor = bodies
    support = Skelify(skel, regressor, SkelifyConfig(device="cpu")).keypoints_3d(world["q"], world["betas"])
    mesh = Skelify(skel, regressor, SkelifyConfig(device="cpu", keypoint_path="mesh")).keypoints_3d(
        world["q"], world["betas"]
    )
    assert torch.allclose(support, mesh, atol=1e-5)
    with pytest.raises(ValueError, match="keypoint_path"):
        Skelify(skel, regressor, SkelifyConfig(keypoint_path="joints"))


def test_score_places_the_true_label_at_its_camera_with_no_error(bodies, world):
    skel, regressor = bodies
    trans, error = Skelify(skel, regressor, LIGHT).score(world["q"], world["betas"], world["keypoints"])
    assert torch.allclose(trans, world["trans"], atol=1e-2)
    assert torch.all(error < 1e-8)
    # A different label scores worse, in the same units: kp2d_err is Σc‖Δ‖²/Σc in normalised crop units.
    _, worse = Skelify(skel, regressor, LIGHT).score(world["q"] + 0.1, world["betas"], world["keypoints"])
    assert torch.all(worse > 1e-6)


# ------------------------------------------------------------------------------------------ fits
@pytest.mark.slow
def test_skelify_from_a_perturbed_pose_fits_the_keypoints_and_moves_towards_the_truth(bodies, world):
    skel, regressor = bodies
    generator = world["generator"]
    q0 = world["q"] + 0.15 * torch.randn(4, 46, generator=generator)
    knees = [C.DOF_NAMES.index("knee_angle_r"), C.DOF_NAMES.index("knee_angle_l")]
    q0[:, knees] = -0.3  # hyperextended: outside [0, 135°]
    betas0 = world["betas"] + 0.3 * torch.randn(4, 10, generator=generator)
    skelify = Skelify(skel, regressor, LIGHT)
    _, start_error = skelify.score(q0, betas0, world["keypoints"])
    fit = skelify.fit(q0, betas0, world["keypoints"])

    assert torch.all(fit.kp2d_err < 0.2 * start_error)  # hard limits: 0.03–0.14 of it here, soft: 0.01–0.08
    limited = list(C.LIMITED_DOFS)
    q_error = (fit.q - world["q"])[:, limited].abs().mean()
    assert q_error < (q0 - world["q"])[:, limited].abs().mean()
    assert torch.all(_limit_violation(fit.q) == 0)  # hard limits: the hyperextended knees start at the bound
    assert fit.q.shape == (4, 46) and fit.betas.shape == (4, 10) and fit.trans.shape == (4, 3)
    assert torch.all(fit.iterations > 0) and torch.all(fit.seconds > 0)
    # The result's translation and error are `score`'s, not the optimiser's camera.
    trans, error = skelify.score(fit.q, fit.betas, world["keypoints"])
    assert torch.equal(trans, fit.trans) and torch.equal(error, fit.kp2d_err)


@pytest.mark.slow
def test_camera_stage_moves_only_the_camera_and_global_orientation(bodies, world):
    skel, regressor = bodies
    q0 = world["q"].clone()
    q0[:, :3] += 0.1
    config = SkelifyConfig(stages=from_scratch_stages(steps=2)[:1], max_iter=10, device="cpu", batch_size=3)
    skelify = Skelify(skel, regressor, config)
    _, start_error = skelify.score(q0, world["betas"], world["keypoints"])
    batches = []
    fit = skelify.fit(q0, world["betas"], world["keypoints"], on_batch=batches.append)
    assert batches == [3, 1]  # each finished batch reports its size (the refine round's progress bar)
    # The body's DoFs go through q = mid + half·sin(u) and back: equal up to float32 rounding.
    assert torch.allclose(fit.q[:, 3:], q0[:, 3:], atol=1e-5) and torch.equal(fit.betas, world["betas"])
    assert not torch.equal(fit.q[:, :3], q0[:, :3])
    assert torch.all(fit.kp2d_err < start_error)
