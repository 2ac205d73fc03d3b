"""Sparse vertex regressors (keypoints, joints) applied to meshes, or to only the vertices they use."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch


@dataclass(frozen=True)
class VertexRegressor:
    """A (K, V) regressor kept as its support: the S vertices it uses and a dense (K, S) block."""

    vertex_ids: torch.Tensor  # (S,) int64
    weights: torch.Tensor  # (K, S)
    num_vertices: int

    @classmethod
    def from_sparse(cls, matrix: sp.spmatrix) -> VertexRegressor:
        csc = sp.csc_matrix(matrix)
        support = np.flatnonzero(np.diff(csc.indptr))
        return cls(
            vertex_ids=torch.as_tensor(support, dtype=torch.int64),
            weights=torch.as_tensor(csc[:, support].toarray(), dtype=torch.float32),
            num_vertices=csc.shape[1],
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> VertexRegressor:
        return VertexRegressor(self.vertex_ids.to(device), self.weights.to(device, dtype), self.num_vertices)

    def apply_to_support(self, support_vertices: torch.Tensor) -> torch.Tensor:
        """(B, S, 3) vertices already restricted to `vertex_ids` → (B, K, 3)."""
        return torch.einsum("ks,bsc->bkc", self.weights.to(support_vertices), support_vertices)

    def __call__(self, vertices: torch.Tensor) -> torch.Tensor:
        """(B, V, 3) full meshes → (B, K, 3)."""
        return self.apply_to_support(vertices[:, self.vertex_ids.to(vertices.device)])
