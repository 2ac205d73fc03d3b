"""The HMR2.0 crop and keypoints in it: one definition for every step that cuts or draws a person.

A person's box is the square of side max(scale) · 200 px around `center`; it is cut out bilinearly as
a 256² crop (`CROP_SIZE`, the network's input). Keypoints are normalised as (pixel − centre) / side
∈ [−0.5, 0.5] (`hsmr_model.camera.to_crop_coordinates`, the crop camera's units); (normalised + 0.5)
· size are crop pixels. The training shards, predict's crops, the dashboard's gallery and the
synthetic world's contact sheet all come from these functions.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from hsmr_model import camera
from hsmr_model import skel_constants as C
from hsmr_model.camera import CROP_SIZE, FOCAL_PIXELS

BOX_SIDE_PER_SCALE = 200.0  # HMR2.0: the box side in pixels is scale × 200


def box_sides(scale: torch.Tensor) -> torch.Tensor:
    """Box sides in pixels of (B, 2) scales: (B,), in the scales' dtype (float32 labels stay float32)."""
    return scale.max(dim=1).values * BOX_SIDE_PER_SCALE


def crop_side(scale: np.ndarray) -> float:
    """Box side in pixels of one person's (2,) scale, exact in float64."""
    return float(box_sides(torch.as_tensor(scale, dtype=torch.float64)[None])[0])


def focal_in_image(side: float | np.ndarray) -> float | np.ndarray:
    """Focal length in image pixels of the crop camera of a box of `side` px: the crop is a pinhole of
    focal `FOCAL_PIXELS` per `CROP_SIZE` px, centred on the box, so in the image it is 5000 · side / 256."""
    return FOCAL_PIXELS * side / CROP_SIZE


def crop_image(image: Image.Image | np.ndarray, center: np.ndarray, side: float, size: int = CROP_SIZE) -> np.ndarray:
    """The HMR2.0 crop of `image` (PIL, or (H, W, 3) uint8), bilinear: (size, size, 3) uint8, black outside."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    step = side / size
    # PIL maps output pixel centres through the affine map and samples the input at pixel centres,
    # so continuous coordinates (pixel i spans [i, i+1)) go straight in.
    affine = (step, 0.0, center[0] - side / 2, 0.0, step, center[1] - side / 2)
    resample = Image.Resampling.BILINEAR
    crop = image.convert("RGB").transform((size, size), Image.Transform.AFFINE, affine, resample, fillcolor=(0, 0, 0))
    return np.asarray(crop)


def normalised_keypoints(keypoints_2d: np.ndarray, center: np.ndarray, side: float) -> np.ndarray:
    """One person's image-pixel keypoints (K, 3) → normalised crop coordinates (K, 3) float64, confidence kept."""
    keypoints, center = (torch.as_tensor(np.asarray(a, dtype=np.float64))[None] for a in (keypoints_2d, center))
    return camera.to_crop_coordinates(keypoints, center, torch.tensor([side], dtype=torch.float64))[0].numpy()


def crop_pixels(normalised: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """Normalised crop coordinates (..., K, 2 or 3) → pixels of the size² crop; a confidence column is kept."""
    pixels = np.array(normalised, dtype=np.float64)
    pixels[..., :2] = (pixels[..., :2] + 0.5) * size
    return pixels


# OpenPose BODY_25 bones for drawing; right side red, left side blue, centre green.
OPENPOSE_BONES = (
    (8, 12), (12, 13), (13, 14), (14, 19), (19, 20), (14, 21), (8, 9), (9, 10), (10, 11), (11, 22), (22, 23),
    (11, 24), (8, 1), (1, 0), (0, 16), (16, 18), (0, 15), (15, 17), (1, 5), (5, 6), (6, 7), (1, 2), (2, 3), (3, 4),
)  # fmt: skip


def _keypoint_colour(index: int) -> tuple[int, int, int]:
    name = C.KEYPOINT_NAMES[index]
    return (230, 40, 40) if "right" in name else (40, 90, 235) if "left" in name else (40, 200, 60)


def draw_keypoints(crop: np.ndarray, keypoints_crop: np.ndarray) -> np.ndarray:
    """Bones as lines and keypoints as dots on a crop; keypoints (44, 3) in crop pixels + confidence."""
    out = crop.copy()
    size = out.shape[0]

    def dot(x: float, y: float, colour, radius: int) -> None:
        r, c = int(round(y)), int(round(x))
        out[max(r - radius, 0) : r + radius + 1, max(c - radius, 0) : c + radius + 1] = colour

    for a, b in OPENPOSE_BONES:
        if keypoints_crop[a, 2] > 0 and keypoints_crop[b, 2] > 0:
            for t in np.linspace(0.0, 1.0, 40):
                x, y = (1 - t) * keypoints_crop[a, :2] + t * keypoints_crop[b, :2]
                if 0 <= x < size and 0 <= y < size:
                    dot(x, y, _keypoint_colour(b), 0)
    for index, (x, y, conf) in enumerate(keypoints_crop):
        if conf > 0 and 0 <= x < size and 0 <= y < size:
            dot(x, y, _keypoint_colour(index), 2)
    return out
