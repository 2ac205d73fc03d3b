"""The crop camera: placing a label by its translation, and scoring it."""

from __future__ import annotations

import torch

from hsmr_model.camera import DEFAULT_DEPTH, fit_translation, project, reprojection_error, to_crop_coordinates


def _body_points(count: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(count, 44, 3, generator=generator, dtype=torch.float64) * torch.tensor([0.3, 0.8, 0.2])


def test_fit_translation_recovers_the_true_translation_from_exact_keypoints():
    generator = torch.Generator().manual_seed(0)
    points = _body_points(8, generator)
    true = torch.stack([torch.randn(8, generator=generator) * 0.5, torch.randn(8, generator=generator) * 0.5,
                        30 + 20 * torch.rand(8, generator=generator)], dim=1).double()  # fmt: skip
    conf = torch.rand(8, 44, 1, generator=generator, dtype=torch.float64)
    keypoints = torch.cat([project(points, true), conf], dim=-1)
    fitted = fit_translation(points, keypoints)
    assert torch.allclose(fitted, true, atol=1e-4)
    assert reprojection_error(project(points, fitted), keypoints).max() < 1e-12


def test_noisy_keypoints_give_the_least_squares_translation():
    generator = torch.Generator().manual_seed(1)
    points = _body_points(4, generator)
    true = torch.tensor([[0.1, -0.2, 40.0]] * 4, dtype=torch.float64)
    keypoints = torch.cat([project(points, true) + 0.01 * torch.randn(4, 44, 2, generator=generator),
                           torch.ones(4, 44, 1, dtype=torch.float64)], dim=-1)  # fmt: skip
    fitted = fit_translation(points, keypoints)
    best = reprojection_error(project(points, fitted), keypoints)
    for delta in ([0.01, 0, 0], [0, 0.01, 0], [0, 0, 0.5], [0, 0, -0.5]):
        moved = fitted + torch.tensor(delta, dtype=torch.float64)
        assert (reprojection_error(project(points, moved), keypoints) > best).all()


def test_no_confident_keypoint_falls_back_to_the_default_depth_and_nan_error():
    points = torch.zeros(1, 44, 3, dtype=torch.float64)
    keypoints = torch.zeros(1, 44, 3, dtype=torch.float64)
    fitted = fit_translation(points, keypoints)
    assert torch.allclose(fitted, torch.tensor([[0.0, 0.0, DEFAULT_DEPTH]], dtype=torch.float64), atol=1e-6)
    assert torch.isnan(reprojection_error(project(points, fitted), keypoints)).all()


def test_crop_coordinates_put_the_box_edges_at_half():
    keypoints = torch.tensor([[[100.0, 50.0, 0.7], [300.0, 250.0, 1.0]]])
    crop = to_crop_coordinates(keypoints, torch.tensor([[200.0, 150.0]]), torch.tensor([200.0]))
    assert torch.allclose(crop, torch.tensor([[[-0.5, -0.5, 0.7], [0.5, 0.5, 1.0]]]))


def test_a_label_that_fits_badly_stays_in_front_of_the_camera_and_never_gets_worse():
    generator = torch.Generator().manual_seed(2)
    points = _body_points(16, generator)
    # Keypoints of a different, mirrored and shrunken body: no translation explains them.
    other = -0.3 * _body_points(16, generator)
    keypoints = torch.cat([project(other, torch.tensor([[0.0, 0.0, 40.0]] * 16, dtype=torch.float64)),
                           torch.rand(16, 44, 1, generator=generator, dtype=torch.float64)], dim=-1)  # fmt: skip
    fitted = fit_translation(points, keypoints)
    assert ((points[..., 2] + fitted[:, None, 2]) >= 0.1 - 1e-9).all()
    start = fit_translation(points, keypoints, iterations=0)
    error = reprojection_error(project(points, fitted), keypoints)
    assert (error <= reprojection_error(project(points, start), keypoints) + 1e-12).all()
    assert error.max() < 1.0  # normalised units: the crop is 1 wide
