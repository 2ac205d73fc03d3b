"""The crop and its keypoints: box sides, the bilinear crop, normalised and pixel keypoints, drawing,
and the rule that production code does not reach into the synthetic world."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hsmr_data import geometry as G

REPO = Path(__file__).resolve().parents[1]


def test_box_side_is_the_larger_scale_times_200():
    scale = np.array([1.2345678, 0.5], dtype=np.float32)
    assert G.crop_side(scale) == float(np.float64(scale[0]) * 200.0)  # exact in float64
    sides = G.box_sides(torch.as_tensor(np.stack([scale, scale[::-1]])))
    assert sides.dtype == torch.float32 and torch.equal(sides, torch.full((2,), scale[0] * np.float32(200)))


def test_the_crop_camera_in_the_image():
    # A box of 512 px is the 256 px crop scaled by 2: the crop's focal of 5000 px becomes 10,000 px.
    assert G.focal_in_image(512.0) == 10_000.0
    np.testing.assert_allclose(G.focal_in_image(np.array([256.0, 128.0])), [5000.0, 2500.0])


def test_bilinear_crop_samples_pixel_centres():
    # A ramp whose value is the pixel's column: bilinear sampling returns the sampled x exactly.
    ramp = Image.fromarray(np.tile(np.arange(200, dtype=np.uint8), (150, 1))).convert("RGB")
    center, side = np.array([100.25, 70.5]), 96.0
    crop = G.crop_image(ramp, center, side, size=32)
    x = center[0] + ((np.arange(32) + 0.5) / 32 - 0.5) * side  # continuous image x of each crop pixel centre
    np.testing.assert_allclose(crop[16, :, 0], x - 0.5, atol=0.51)  # pixel j's centre is at x = j + 0.5
    corner = G.crop_image(ramp, np.array([0.0, 0.0]), side, size=32)
    assert (corner[:15, :15] == 0).all()  # outside the image is black
    np.testing.assert_array_equal(G.crop_image(np.asarray(ramp), center, side, size=32), crop)  # arrays as images


def test_keypoints_in_the_crop():
    keypoints = np.array([[150.0, 100.0, 0.7], [100.0, 50.0, 0.0], [50.0, 0.0, 1.0]], dtype=np.float32)
    center, side = np.array([100.0, 50.0], dtype=np.float32), 200.0
    normalised = G.normalised_keypoints(keypoints, center, side)
    np.testing.assert_allclose(normalised, [[0.25, 0.25, 0.7], [0.0, 0.0, 0.0], [-0.25, -0.25, 1.0]], atol=1e-7)
    assert normalised.dtype == np.float64
    np.testing.assert_allclose(G.crop_pixels(normalised, size=256)[:, :2], [[192, 192], [128, 128], [64, 64]])
    np.testing.assert_array_equal(G.crop_pixels(normalised)[:, 2], normalised[:, 2])


def test_draw_keypoints_marks_confident_keypoints_only():
    blank = np.zeros((64, 64, 3), dtype=np.uint8)
    keypoints = np.zeros((44, 3))
    keypoints[0] = (10, 20, 1.0)
    keypoints[1] = (40, 40, 0.0)
    drawn = G.draw_keypoints(blank, keypoints)
    assert drawn[20, 10].any() and not drawn[40, 40].any() and not blank.any()


PRODUCTION = [
    *(REPO / "hsmr_data").glob("*.py"),
    *(REPO / "hsmr_model").glob("*.py"),
    *(path for path in (REPO / "flows").glob("*.py") if path.name != "pipeline.py"),
]
# The synthetic world's own front doors: `hsmr models synth`, `hsmr data synth|motion`, the demo, and the
# studies (they need a world whose truth is known).
SYNTHETIC_FRONT_DOORS = {"cli.py", "demo.py", "refine_study.py", "table5_study.py"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_production_modules_do_not_import_the_synthetic_world():
    offenders = {
        path.name: sorted(m for m in _imports(path) if m.startswith("hsmr_data.synthetic"))
        for path in PRODUCTION
        if path.name not in SYNTHETIC_FRONT_DOORS
    }
    assert len(PRODUCTION) > 30
    assert {name: found for name, found in offenders.items() if found} == {}
