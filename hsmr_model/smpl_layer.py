"""SMPL through `smplx.SMPL`, built from arrays our own loader read (no chumpy, no plain pickle),
plus the 44 dataset keypoints from the keypoint regressor stored next to the model."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, fields
from pathlib import Path
from types import SimpleNamespace

import smplx
import torch
from torch import nn

from hsmr_model.model_files import SmplModelData, read_keypoint_regressor, read_smpl_model
from hsmr_model.regressor import VertexRegressor


def smplx_data_struct(model: SmplModelData) -> SimpleNamespace:
    """The attributes `smplx.SMPL(data_struct=...)` reads, from our loaded arrays."""
    return SimpleNamespace(
        v_template=model.v_template,
        shapedirs=model.shapedirs,
        posedirs=model.posedirs,
        J_regressor=model.J_regressor,
        weights=model.weights,
        kintree_table=model.kintree_table,
        f=model.f,
    )


def build_smpl(path: Path | str, **smplx_kwargs) -> smplx.SMPL:
    """An `smplx.SMPL` module from an official SMPL file (.pkl or .npz), read without chumpy."""
    model = read_smpl_model(path)
    num_betas = min(smplx_kwargs.pop("num_betas", 10), model.shapedirs.shape[2])
    # smplx prints a warning to stdout for 10-component models; that is the normal case here.
    with contextlib.redirect_stdout(io.StringIO()):
        return smplx.SMPL(
            model_path=str(path), data_struct=smplx_data_struct(model), num_betas=num_betas, **smplx_kwargs
        )


@dataclass
class SmplOutput:
    vertices: torch.Tensor  # (B, 6890, 3)
    joints: torch.Tensor  # (B, 24, 3) SMPL's posed skeleton joints
    keypoints: torch.Tensor  # (B, 44, 3) the dataset keypoints, regressed from the vertices


class SMPLWithKeypoints(nn.Module):
    """SMPL vertices, its 24 joints, and the 44 keypoints (25 OpenPose + 19 extra) of the datasets."""

    def __init__(self, smpl: smplx.SMPL, keypoint_regressor: VertexRegressor):
        super().__init__()
        self.smpl = smpl
        self.register_buffer("keypoint_ids", keypoint_regressor.vertex_ids)
        self.register_buffer("keypoint_weights", keypoint_regressor.weights)

    @classmethod
    def from_files(cls, smpl_path: Path | str, keypoint_regressor_path: Path | str) -> SMPLWithKeypoints:
        regressor = read_keypoint_regressor(keypoint_regressor_path)
        return cls(build_smpl(smpl_path), VertexRegressor.from_sparse(regressor.matrix))

    def forward(
        self,
        global_orient: torch.Tensor,
        body_pose: torch.Tensor,
        betas: torch.Tensor,
        transl: torch.Tensor | None = None,
    ) -> SmplOutput:
        """Axis-angle global_orient (B, 3), body_pose (B, 69), betas (B, 10), transl (B, 3)."""
        out = self.smpl(global_orient=global_orient, body_pose=body_pose, betas=betas, transl=transl)
        keypoints = torch.einsum("ks,bsc->bkc", self.keypoint_weights, out.vertices[:, self.keypoint_ids])
        return SmplOutput(vertices=out.vertices, joints=out.joints[:, :24], keypoints=keypoints)


@dataclass(frozen=True)
class SmplParams:
    """SMPL parameters of a batch (axis-angle), what the initialisation starts from."""

    global_orient: torch.Tensor  # (B, 3)
    body_pose: torch.Tensor  # (B, 69)
    betas: torch.Tensor  # (B, 10)
    transl: torch.Tensor  # (B, 3)

    def __getitem__(self, index: slice | torch.Tensor) -> SmplParams:
        return SmplParams(*(getattr(self, f.name)[index] for f in fields(self)))

    def to(self, device: torch.device, dtype: torch.dtype = torch.float32) -> SmplParams:
        return SmplParams(*(getattr(self, f.name).to(device, dtype) for f in fields(self)))


@torch.no_grad()
def posed_vertices(smpl: smplx.SMPL, params: SmplParams, batch: int = 256) -> torch.Tensor:
    """SMPL vertices (N, 6890, 3) of N samples, computed `batch` at a time on the model's device."""
    device = smpl.shapedirs.device
    parts = []
    for first in range(0, params.betas.shape[0], batch):
        p = params[first : first + batch].to(device)
        parts.append(
            smpl(global_orient=p.global_orient, body_pose=p.body_pose, betas=p.betas, transl=p.transl).vertices
        )
    return torch.cat(parts)
