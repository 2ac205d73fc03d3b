"""The body models a step works with, loaded in one place: SKEL, SMPL, the 44-keypoint regressor and
the SMPL↔SKEL link that fitting needs.

`BodyModels.load(paths, sex, device)` gives one bundle per (files, sex, SMPL gender, device) and
process: a second call returns the same bundle, so every chunk a (Dask) worker process converts uses
the models that process loaded first. Each member is read on first use, so a step that never poses
SMPL (the dashboard, predict, training) never reads the SMPL file. The bundle is shared: treat its
members as read-only (no in-place `.to()` to another device; load a bundle for that device instead).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import smplx
import torch

from hsmr_model.devices import resolve_device
from hsmr_model.model_files import BodyModelPaths, read_keypoint_regressor, read_skel_model
from hsmr_model.regressor import VertexRegressor
from hsmr_model.skel_fit_init import SmplToSkel
from hsmr_model.skel_layer import SKELLayer
from hsmr_model.smpl_layer import build_smpl

SKEL_SEX = "male"  # HSMR labels and trains with the male SKEL model; there is no neutral one


@dataclass(frozen=True)
class BodyModels:
    """SKEL of one sex, SMPL of one gender, the keypoint regressor and their link, all on `device`."""

    paths: BodyModelPaths
    sex: str  # SKEL's: "male" or "female"
    device: torch.device
    smpl_gender: str = "neutral"  # motion sequences pose their own gender's SMPL

    @classmethod
    def load(
        cls,
        paths: BodyModelPaths,
        sex: str = SKEL_SEX,
        device: str | torch.device = "cpu",
        smpl_gender: str = "neutral",
    ) -> BodyModels:
        """The process's bundle for these files, SKEL sex, device ("auto": CUDA when present) and SMPL gender."""
        paths.skel(sex)  # a sex SKEL does not have fails here, before anything is read
        return _bundle(paths, sex, resolve_device(device), smpl_gender)

    @functools.cached_property
    def skel(self) -> SKELLayer:
        return SKELLayer.from_file(self.paths.skel(self.sex)).to(self.device)

    @functools.cached_property
    def smpl(self) -> smplx.SMPL:
        return build_smpl(self.paths.smpl_for(self.smpl_gender)).to(self.device)

    @functools.cached_property
    def keypoints(self) -> VertexRegressor:
        """The 44 keypoints (25 OpenPose + 19 extra) as a regressor of SMPL's or SKEL's 6890 vertices."""
        return VertexRegressor.from_sparse(read_keypoint_regressor(self.paths.keypoint_regressor).matrix).to(
            self.device
        )

    @functools.cached_property
    def link(self) -> SmplToSkel:
        """What fitting SKEL to SMPL meshes needs of the two models (bone overlap, shape map, joints)."""
        osim_regressor = read_skel_model(self.paths.skel(self.sex)).J_regressor_osim
        return SmplToSkel.from_models(self.skel, osim_regressor, self.smpl).to(self.device)


@functools.lru_cache(maxsize=8)
def _bundle(paths: BodyModelPaths, sex: str, device: torch.device, smpl_gender: str) -> BodyModels:
    return BodyModels(paths, sex, device, smpl_gender)
