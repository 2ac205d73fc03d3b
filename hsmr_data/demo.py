"""`hsmr demo`: load the body models through the real loaders, pose SKEL bodies, and write meshes
and renders a person can look at. Grows into the full pipeline demo as the flows land."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from hsmr_data.model_check import check_models
from hsmr_data.render import look_at_body, render_mesh, write_png
from hsmr_data.synthetic.poses import sample_betas, sample_skel_poses
from hsmr_model.body_models import BodyModels
from hsmr_model.model_files import BodyModelPaths

TILE = 256


def write_obj(path: Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    """Wavefront OBJ, 1-based faces."""
    lines = [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in faces]
    path.write_text("\n".join(lines) + "\n")


def _render(vertices: np.ndarray, faces: np.ndarray, view: str = "front") -> np.ndarray:
    centred = vertices - (vertices.max(0) + vertices.min(0)) / 2
    return render_mesh(
        look_at_body(centred, view=view, distance=5.0),
        faces,
        focal=TILE * 2.4,
        principal=(TILE / 2, TILE / 2),
        image_size=(TILE, TILE),
    )


def run_demo(paths: BodyModelPaths, out_dir: Path, seed: int = 0, count: int = 4) -> dict:
    """Pose `count` random male and female SKEL bodies; write OBJ meshes and a PNG contact sheet
    (SMPL at rest, then per sex a row of skins and a row of their skeleton meshes).

    Returns:
        A JSON-ready summary: the model check, what was written, and timings.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    summary: dict = {"models": check_models(paths), "written": []}

    smpl = BodyModels.load(paths).smpl
    rest = smpl().vertices[0].detach().numpy()
    faces = smpl.faces.astype(np.int64)
    rows = [np.concatenate([_render(rest, faces, "front"), _render(rest, faces, "side")] * (count // 2), axis=1)]

    for sex in ("male", "female"):
        layer = BodyModels.load(paths, sex).skel
        q = torch.as_tensor(sample_skel_poses(count, rng), dtype=torch.float32)
        betas = torch.as_tensor(sample_betas(count, rng), dtype=torch.float32)
        start = time.perf_counter()
        with torch.no_grad():
            out = layer(q, betas, skeleton_mesh=True)
        summary[f"skel_{sex}_forward_s"] = round(time.perf_counter() - start, 4)
        skin, skeleton = out.skin_verts.numpy(), out.skel_verts.numpy()
        for name, vertices, tri in (
            (f"skel_{sex}_skin.obj", skin[0], layer.faces.numpy()),
            (f"skel_{sex}_skeleton.obj", skeleton[0], layer.skel_faces.numpy()),
        ):
            write_obj(out_dir / name, vertices, tri)
            summary["written"].append(str(out_dir / name))
        rows.append(np.concatenate([_render(v, layer.faces.numpy()) for v in skin], axis=1))
        rows.append(np.concatenate([_render(v, layer.skel_faces.numpy()) for v in skeleton], axis=1))

    sheet = out_dir / "bodies.png"
    write_png(sheet, np.concatenate(rows, axis=0))
    summary["written"].append(str(sheet))
    return summary
