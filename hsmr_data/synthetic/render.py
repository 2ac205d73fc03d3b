"""A small dependency-free rasteriser: z-buffered, Lambert-shaded meshes to PNG."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Literal

import numpy as np

# SMPL's frame (Y up, facing +Z) seen by a camera looking at the body's front, back or left side.
_VIEWS = {
    "front": np.diag([-1.0, -1.0, -1.0]),
    "back": np.diag([1.0, -1.0, 1.0]),
    "side": np.array([[0.0, 0.0, -1.0], [0.0, -1.0, 0.0], [-1.0, 0.0, 0.0]]),
}


def look_at_body(vertices: np.ndarray, view: Literal["front", "side", "back"], distance: float) -> np.ndarray:
    """Body vertices (N, 3) in SMPL's frame → camera frame (x right, y down, z forward), `distance` away."""
    return vertices @ _VIEWS[view].T + np.array([0.0, 0.0, distance])


def render_mesh(
    vertices_cam: np.ndarray,
    faces: np.ndarray,
    focal: float,
    principal: tuple[float, float],
    image_size: tuple[int, int],
    color: tuple[int, int, int] = (200, 170, 150),
    background: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """Render a mesh seen by a pinhole camera: u = f·x/z + cx, v = f·y/z + cy.

    Returns:
        (H, W, 3) uint8, Lambert shading with the light at the camera.
    """
    height, width = image_size
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = background
    depth = np.full((height, width), np.inf)
    tri = vertices_cam[faces]  # (F, 3, 3)
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True).clip(1e-12)
    view_dir = -tri.mean(axis=1)
    view_dir /= np.linalg.norm(view_dir, axis=1, keepdims=True)
    shade = np.abs((normals * view_dir).sum(axis=1))
    z = tri[..., 2]
    in_front = (z > 1e-6).all(axis=1)
    uv = focal * tri[..., :2] / np.where(z > 1e-6, z, 1.0)[..., None] + np.asarray(principal)
    lo = np.floor(uv.min(axis=1)).astype(int).clip(0, [width - 1, height - 1])
    hi = np.ceil(uv.max(axis=1)).astype(int).clip(0, [width - 1, height - 1])
    for f in np.flatnonzero(in_front & (hi >= lo).all(axis=1)):
        (x0, y0), (x1, y1) = lo[f], hi[f]
        xs, ys = np.meshgrid(np.arange(x0, x1 + 1) + 0.5, np.arange(y0, y1 + 1) + 0.5)
        a, b, c = uv[f]
        den = (b[1] - c[1]) * (a[0] - c[0]) + (c[0] - b[0]) * (a[1] - c[1])
        if abs(den) < 1e-12:
            continue
        w0 = ((b[1] - c[1]) * (xs - c[0]) + (c[0] - b[0]) * (ys - c[1])) / den
        w1 = ((c[1] - a[1]) * (xs - c[0]) + (a[0] - c[0]) * (ys - c[1])) / den
        w2 = 1.0 - w0 - w1
        inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
        if not inside.any():
            continue
        zz = w0 * z[f, 0] + w1 * z[f, 1] + w2 * z[f, 2]
        region = depth[y0 : y1 + 1, x0 : x1 + 1]
        closer = inside & (zz < region)
        region[closer] = zz[closer]
        image[y0 : y1 + 1, x0 : x1 + 1][closer] = (np.asarray(color) * (0.25 + 0.75 * shade[f])).astype(np.uint8)
    return image


def write_png(path: Path | str, image: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 image as an 8-bit RGB PNG."""
    height, width, _ = image.shape
    raw = b"".join(b"\x00" + image[row].tobytes() for row in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    Path(path).write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    )
