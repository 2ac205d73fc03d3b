"""SMPL pseudo-GT → SKEL labels, chunk by chunk, committed to the label table (round 0).

A chunk is one input shard: it is read (bad samples quarantined), its SMPL meshes are fitted with
SKEL, each label is placed in the crop camera and scored against the 2D keypoints, the quality
filters give their verdicts, and the rows are committed in one idempotent transaction named after
the chunk. A rerun skips committed chunks, so a run killed anywhere and started again ends with the
table an uninterrupted run gives. Everything here is plain Python; the Prefect flow only wires it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from hsmr_data import label_table
from hsmr_data.filters import FilterConfig, apply_filters, clean_confidences
from hsmr_data.hmr2_format import read_shards
from hsmr_data.param_files import read_param_file
from hsmr_data.quarantine import Quarantine
from hsmr_data.records import PersonSample
from hsmr_model import camera
from hsmr_model.model_files import BodyModelPaths, read_skel_model
from hsmr_model.regressor import VertexRegressor
from hsmr_model.skel_fit import SkelFitConfig, SmplToSkel, fit_in_batches, resolve_device
from hsmr_model.skel_layer import SKELLayer
from hsmr_model.smpl_layer import SmplParams, SMPLWithKeypoints, posed_vertices

CONVERT_APP_PREFIX = "convert-smpl-to-skel"


@dataclass(frozen=True)
class ConvertConfig:
    """Everything a conversion run needs: where things are, and the knobs of fitting and filtering."""

    dataset_dir: str  # holds shards/*.tar
    table_uri: str  # the label table (a local path or any URI deltalake opens)
    models_root: str = "storage/models"
    dataset: str = "synth"
    skel_sex: str = "male"  # HSMR labels with the male SKEL model; there is no neutral one
    fit: SkelFitConfig = field(default_factory=SkelFitConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    image_root: str | None = None  # images of parameter-file datasets (default: each file's folder)

    @property
    def quarantine_dir(self) -> Path:
        return Path(self.dataset_dir) / "quarantine"


def list_chunks(dataset_dir: str | Path) -> list[Path]:
    """The input shards in name order, else the parameter files (*.npz) in `dataset_dir`; each is one chunk."""
    shards = sorted((Path(dataset_dir) / "shards").glob("*.tar")) or sorted(Path(dataset_dir).glob("*.npz"))
    if not shards:
        where = f"{Path(dataset_dir) / 'shards'} nor parameter files (*.npz) in {dataset_dir}"
        raise FileNotFoundError(f"no shards (*.tar) under {where}")
    return shards


def read_chunk(config: ConvertConfig, chunk: Path, quarantine: Quarantine) -> list[PersonSample]:
    """The people of one chunk: an HMR2.0 tar, or a CameraHMR/BEDLAM-style parameter file (.npz)."""
    if chunk.suffix == ".npz":
        image_root = config.image_root or chunk.parent
        return list(read_param_file(chunk, config.dataset, image_root, quarantine=quarantine))
    return list(read_shards([chunk], config.dataset, quarantine))


def chunk_id(dataset: str, shard: Path) -> str:
    return f"{dataset}/{shard.stem}"


def chunk_app_id(dataset: str, shard: Path) -> str:
    """The Delta transaction id that records a chunk as committed."""
    return f"{CONVERT_APP_PREFIX}/{chunk_id(dataset, shard)}"


class Converter:
    """The body models and fitter, loaded once and reused for every chunk."""

    def __init__(self, config: ConvertConfig):
        self.config = config
        paths = BodyModelPaths.from_root(config.models_root)
        self.device = resolve_device(config.fit.device)
        self.smpl = SMPLWithKeypoints.from_files(paths.smpl, paths.keypoint_regressor).to(self.device)
        skel_path = paths.skel(config.skel_sex)
        self.skel = SKELLayer.from_file(skel_path).to(self.device)
        self.link = SmplToSkel.from_models(self.skel, read_skel_model(skel_path).J_regressor_osim, self.smpl.smpl)
        self.keypoints = VertexRegressor(self.smpl.keypoint_ids, self.smpl.keypoint_weights, 6890)

    def label_rows(self, samples: list[PersonSample], chunk: str) -> pa.Table:
        """Fit, place, score and filter: one label row per sample (the label table's input schema)."""
        stack = {name: torch.as_tensor(np.stack([getattr(s, name) for s in samples]), dtype=torch.float32)
                 for name in ("global_orient", "body_pose", "betas", "keypoints_2d", "center", "scale")}  # fmt: skip
        params = SmplParams(stack["global_orient"], stack["body_pose"], stack["betas"], torch.zeros(len(samples), 3))
        vertices = posed_vertices(self.smpl.smpl, params)
        fit = fit_in_batches(self.skel, self.link, vertices, None, params, self.config.fit)

        keypoints = camera.to_crop_coordinates(
            stack["keypoints_2d"], stack["center"], stack["scale"].max(dim=1).values * 200
        )
        conf = clean_confidences(keypoints[..., 2].numpy(), self.config.filters.keypoint_conf_floor)
        keypoints[..., 2] = torch.as_tensor(conf)
        q, betas = torch.as_tensor(fit.q, dtype=torch.float32), torch.as_tensor(fit.betas, dtype=torch.float32)
        with torch.no_grad():
            points = self.skel.keypoints(q.to(self.device), betas.to(self.device), None, self.keypoints).cpu()
        trans = camera.fit_translation(points, keypoints)
        kp2d_err = camera.reprojection_error(camera.project(points, trans), keypoints)

        verdicts = apply_filters(fit.pve_max, fit.betas, conf, self.config.filters)
        return label_table.validate_rows(
            {
                "sample_id": [s.sample_id for s in samples],
                "dataset": [s.dataset for s in samples],
                "chunk_id": [chunk] * len(samples),
                "q": fit.q,
                "betas": fit.betas,
                "trans": trans.numpy(),
                "pve_mean": fit.pve_mean,
                "pve_max": fit.pve_max,
                "kp2d_err": kp2d_err.numpy(),
                "fit_iterations": fit.iterations,
                "fit_seconds": fit.seconds,
                "converged": fit.converged,
                **verdicts.columns(),
            }
        )


@dataclass
class ChunkOutcome:
    chunk_id: str
    status: str  # "committed", "skipped" (committed by an earlier run) or "empty"
    samples: int = 0
    quarantined: int = 0
    seconds: float = 0.0


def convert_chunk(converter: Converter, shard: Path) -> ChunkOutcome:
    """Convert one shard and commit it, unless an earlier run already did."""
    config = converter.config
    name, app_id = chunk_id(config.dataset, shard), chunk_app_id(config.dataset, shard)
    if label_table.is_committed(config.table_uri, app_id, 0):
        return ChunkOutcome(name, "skipped")
    started = time.perf_counter()
    quarantine = Quarantine()
    samples = read_chunk(config, shard, quarantine)
    if len(quarantine):
        config.quarantine_dir.mkdir(parents=True, exist_ok=True)
        quarantine.write_report(config.quarantine_dir / f"{shard.stem}.json")
    if not samples:
        return ChunkOutcome(name, "empty", 0, len(quarantine))
    rows = converter.label_rows(samples, name)
    label_table.commit_chunk(config.table_uri, rows, app_id=app_id, txn_version=0)
    return ChunkOutcome(name, "committed", len(samples), len(quarantine), time.perf_counter() - started)


def summarize(labels: pa.Table) -> dict:
    """Counts per filter rule and PVE percentiles (cm) of a label table."""
    pve_max = np.asarray(labels.column("pve_max").to_numpy(), dtype=np.float64) * 100
    pve_mean = np.asarray(labels.column("pve_mean").to_numpy(), dtype=np.float64) * 100
    count = labels.num_rows

    def rejected(column: str) -> int:
        return int(count - np.sum(labels.column(column).to_numpy()))

    percentiles = (50, 90, 99)
    return {
        "samples": count,
        "passed": int(np.sum(labels.column("passed").to_numpy())),
        "rejected_pve_max": rejected("pve_ok"),
        "rejected_betas": rejected("betas_ok"),
        "rejected_keypoints": rejected("keypoints_ok"),
        **{f"pve_mean_p{p}_cm": round(float(np.percentile(pve_mean, p)), 3) for p in percentiles if count},
        **{f"pve_max_p{p}_cm": round(float(np.percentile(pve_max, p)), 3) for p in percentiles if count},
    }


def convert_dataset(
    config: ConvertConfig, on_chunk: Callable[[ChunkOutcome], None] | None = None
) -> list[ChunkOutcome]:
    """Convert every chunk in order (the plain-Python twin of the flow), calling `on_chunk` after each."""
    label_table.create_or_open(config.table_uri)
    converter = Converter(config)
    outcomes = []
    for shard in list_chunks(config.dataset_dir):
        outcomes.append(convert_chunk(converter, shard))
        if on_chunk is not None:
            on_chunk(outcomes[-1])
    return outcomes
