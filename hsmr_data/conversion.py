"""SMPL pseudo-GT → SKEL labels, chunk by chunk, committed to the label table (round 0).

The input is one or more datasets named by URL specs (`NAME=SPEC`, see `hsmr_data.datasets`). A
chunk is one shard URL of one dataset: it is read (bad samples quarantined, one report per chunk
under the dataset's quarantine folder), its SMPL meshes are fitted with SKEL, each label is placed
in the crop camera and scored against the 2D keypoints, the quality filters give their verdicts,
and the rows are committed in one idempotent transaction named after the dataset and the shard URL.
A rerun skips committed chunks, so a run killed anywhere and started again ends with the table an
uninterrupted run gives. Everything here is plain Python; the Prefect flow only wires it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from hsmr_data import label_table, layout
from hsmr_data.datasets import DatasetSpec, parse_datasets, shard_label
from hsmr_data.filters import FilterConfig, apply_filters, clean_confidences
from hsmr_data.geometry import box_sides
from hsmr_data.hmr2_format import read_shards
from hsmr_data.param_files import read_param_file
from hsmr_data.progress import Progress, gather
from hsmr_data.quarantine import Quarantine
from hsmr_data.records import PersonSample
from hsmr_model import camera
from hsmr_model.body_models import SKEL_SEX, BodyModels
from hsmr_model.model_files import BodyModelPaths
from hsmr_model.skel_fit import SkelFitConfig, fit_in_batches
from hsmr_model.smpl_layer import SmplParams, posed_vertices

CONVERT_APP_PREFIX = "convert-smpl-to-skel"


@dataclass(frozen=True)
class ConvertConfig:
    """Everything a conversion run needs: where things are, and the knobs of fitting and filtering."""

    dataset_dir: str | None  # a plain dataset (a folder holding shards/*.tar, or any SPEC) named `dataset`
    table_uri: str  # the label table (a local path or any URI deltalake opens)
    models_root: str = layout.DEFAULT.models
    dataset: str = "synth"
    skel_sex: str = SKEL_SEX
    fit: SkelFitConfig = field(default_factory=SkelFitConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    datasets: tuple[DatasetSpec, ...] = ()  # further datasets by NAME=SPEC, converted after `dataset_dir`
    # Quarantine reports go to {quarantine_root}/{dataset}/; without a root, to a local dataset
    # folder's quarantine/ and for URLs to storage/quarantine/{dataset}/.
    quarantine_root: str | None = None
    image_root: str | None = None  # images of parameter-file datasets (default: each file's folder)

    @property
    def specs(self) -> list[DatasetSpec]:
        """Every dataset of the run, in order; two with one name are refused."""
        specs = ([DatasetSpec(self.dataset, self.dataset_dir)] if self.dataset_dir else []) + list(self.datasets)
        if not specs:
            raise ValueError("no dataset to convert: give a dataset folder or NAME=SPEC datasets")
        names = [spec.name for spec in specs]
        if len(set(names)) < len(names):
            raise ValueError(f"dataset names must differ, got {names}")
        return specs

    def quarantine_dir(self, spec: DatasetSpec) -> Path:
        if self.quarantine_root is not None:
            return Path(self.quarantine_root) / spec.name
        local = spec.local_dir
        return local / "quarantine" if local is not None else Path(layout.DEFAULT.quarantine(spec.name))


@dataclass(frozen=True)
class Chunk:
    """One shard URL of one dataset: the unit of work, commit and resume."""

    spec: DatasetSpec
    url: str

    @property
    def id(self) -> str:
        """The `chunk_id` of its label rows."""
        return f"{self.spec.name}/{self.url}"

    @property
    def app_id(self) -> str:
        """The Delta transaction id that records the chunk as committed."""
        return f"{CONVERT_APP_PREFIX}/{self.id}"

    @property
    def label(self) -> str:
        """A short, file-name-safe name (task runs, quarantine reports)."""
        return f"{self.spec.name}-{shard_label(self.url)}"


def list_chunks(config: ConvertConfig) -> list[Chunk]:
    """Every shard of every dataset, datasets in the order given, shards in their order."""
    return [Chunk(spec, url) for spec in config.specs for url in spec.shard_urls()]


def read_chunk(config: ConvertConfig, chunk: Chunk, quarantine: Quarantine) -> list[PersonSample]:
    """The people of one chunk: an HMR2.0 tar, or a CameraHMR/BEDLAM-style parameter file (.npz)."""
    if chunk.url.endswith(".npz"):
        path = Path(chunk.url)
        image_root = config.image_root or path.parent
        return list(read_param_file(path, chunk.spec.name, image_root, quarantine=quarantine))
    return list(read_shards([chunk.url], chunk.spec.name, quarantine))


class Converter:
    """A conversion's configuration and its body models (`BodyModels.load`: one bundle per process).

    Sent to another process (a Dask worker), a Converter travels as its configuration alone and finds
    the models that process has loaded, or loads them there once: tasks never carry the models.
    """

    def __init__(self, config: ConvertConfig):
        self.config = config
        models = BodyModels.load(BodyModelPaths.from_root(config.models_root), config.skel_sex, config.fit.device)
        self.device, self.smpl, self.skel = models.device, models.smpl, models.skel
        self.link, self.keypoints = models.link, models.keypoints

    def __reduce__(self):
        return Converter, (self.config,)

    def label_rows(self, samples: list[PersonSample], chunk: str) -> pa.Table:
        """Fit, place, score and filter: one label row per sample (the label table's input schema)."""
        stack = {name: torch.as_tensor(np.stack([getattr(s, name) for s in samples]), dtype=torch.float32)
                 for name in ("global_orient", "body_pose", "betas", "keypoints_2d", "center", "scale")}  # fmt: skip
        params = SmplParams(stack["global_orient"], stack["body_pose"], stack["betas"], torch.zeros(len(samples), 3))
        vertices = posed_vertices(self.smpl, params)
        fit = fit_in_batches(self.skel, self.link, vertices, None, params, self.config.fit)

        keypoints = camera.to_crop_coordinates(stack["keypoints_2d"], stack["center"], box_sides(stack["scale"]))
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
    dataset: str = ""
    samples: int = 0
    quarantined: int = 0
    seconds: float = 0.0


def convert_chunk(converter: Converter, chunk: Chunk) -> ChunkOutcome:
    """Convert one shard and commit it, unless an earlier run already did."""
    config = converter.config
    name = chunk.spec.name
    if label_table.is_committed(config.table_uri, chunk.app_id, 0):
        return ChunkOutcome(chunk.id, "skipped", name)
    started = time.perf_counter()
    quarantine = Quarantine()
    samples = read_chunk(config, chunk, quarantine)
    if len(quarantine) or quarantine.notes:
        quarantine.write_report(config.quarantine_dir(chunk.spec) / f"{shard_label(chunk.url)}.json")
    if not samples:
        return ChunkOutcome(chunk.id, "empty", name, 0, len(quarantine))
    rows = converter.label_rows(samples, chunk.id)
    label_table.commit_chunk(config.table_uri, rows, app_id=chunk.app_id, txn_version=0)
    return ChunkOutcome(chunk.id, "committed", name, len(samples), len(quarantine), time.perf_counter() - started)


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


# A chunk runner converts the chunks it is given (in this process, or as tasks of a flow on threads or Dask
# workers) and yields each chunk with its outcome, or with the error that stopped it, as they finish.
ChunkRunner = Callable[[Converter, list[Chunk]], Iterable[tuple[Chunk, ChunkOutcome | Exception]]]


def convert_in_order(converter: Converter, chunks: list[Chunk]) -> Iterator[tuple[Chunk, ChunkOutcome]]:
    """The plain runner: chunk after chunk in this process; an error stops the run."""
    for chunk in chunks:
        yield chunk, convert_chunk(converter, chunk)


def convert_chunks(
    config: ConvertConfig,
    run_chunks: ChunkRunner = convert_in_order,
    on_chunk: Callable[[ChunkOutcome], None] | None = None,
) -> tuple[list[ChunkOutcome], dict[str, str]]:
    """Convert every chunk through `run_chunks`, calling `on_chunk` after each that finished, with a progress
    bar (a progress artifact in a flow). Returns the outcomes and the failed chunks' errors by chunk id."""
    chunks = list_chunks(config)  # a dataset without shards fails before the models load
    label_table.create_or_open(config.table_uri)  # once, before parallel chunks race to create it
    converter = Converter(config)  # the body models, loaded once and shared by every chunk
    names = ", ".join(spec.name for spec in config.specs)
    with Progress(f"convert {names} on {converter.device}", total=len(chunks), unit="chunk") as progress:
        return gather(run_chunks(converter, chunks), progress, on_chunk, name=lambda chunk: chunk.id)


def convert_dataset(
    config: ConvertConfig, on_chunk: Callable[[ChunkOutcome], None] | None = None
) -> list[ChunkOutcome]:
    """Convert every chunk in order in this process, calling `on_chunk` after each."""
    return convert_chunks(config, on_chunk=on_chunk)[0]


def quarantined_by_dataset(outcomes: list[ChunkOutcome]) -> dict[str, int]:
    """Samples quarantined per dataset (every dataset of the run, zero included)."""
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.dataset] = counts.get(outcome.dataset, 0) + outcome.quarantined
    return counts


# ------------------------------------------------------------------------------ the step's front door
@dataclass(frozen=True)
class ConvertOptions:
    """A conversion as the `hsmr convert` command and the convert-smpl-to-skel flow take it (flat, JSON-able).

    The datasets: `dataset_dir` (a folder holding shards/*.tar, or any SPEC) named `dataset`, and
    `datasets`, NAME=SPEC each (brace patterns, folders, file:, pipe:, http(s), fsspec URLs; see
    `hsmr_data.datasets`); a bare NAME among them names `dataset_dir` instead.
    """

    dataset_dir: str | None = field(default=None, metadata={"help": "a plain dataset folder holding shards/*.tar"})
    table_uri: str = field(default=layout.DEFAULT.table(), metadata={"flag": "--table", "help": "label table URI"})
    models_root: str = field(default=layout.DEFAULT.models, metadata={"flag": "--models", "help": "body models"})
    dataset: str = field(
        default=layout.DEMO_DATASET, metadata={"flag": "--dataset-name", "help": "the name of --dataset-dir"}
    )
    device: str = field(default=SkelFitConfig.device, metadata={"help": '"auto" (CUDA when present), "cpu", ...'})
    batch_size: int | None = field(
        default=SkelFitConfig.batch_size,
        metadata={"help": "fitting batch (none: 256 on a CPU, by memory on CUDA)"},
    )
    max_pve_max: float = field(default=FilterConfig.max_pve_max, metadata={"help": "filter: max per-vertex error, m"})
    max_abs_beta: float = field(default=FilterConfig.max_abs_beta, metadata={"help": "filter: any |beta| above"})
    min_keypoints: int = field(default=FilterConfig.min_keypoints, metadata={"help": "filter: confident keypoints"})
    keypoint_conf_floor: float = field(default=FilterConfig.keypoint_conf_floor, metadata={"help": "their confidence"})
    datasets: tuple[str, ...] = field(
        default=(), metadata={"flag": "--dataset", "help": "NAME=SPEC: a brace pattern, a folder, file:, pipe:, a URL"}
    )
    quarantine_root: str | None = field(
        default=None, metadata={"flag": "--quarantine", "help": "folder for quarantine reports, one per dataset"}
    )

    def config(self) -> ConvertConfig:
        """The library's configuration; a bare NAME in `datasets` names `dataset_dir` (the older command line)."""
        bare = [item for item in self.datasets if "=" not in item]
        if len(bare) > 1 or (bare and not self.dataset_dir):
            raise ValueError("datasets take NAME=SPEC; a bare NAME only names the dataset folder (once)")
        if not self.dataset_dir and not self.datasets:
            raise ValueError("no dataset to convert: give a dataset folder or NAME=SPEC datasets")
        return ConvertConfig(
            dataset_dir=self.dataset_dir,
            table_uri=self.table_uri,
            models_root=self.models_root,
            dataset=bare[0] if bare else self.dataset,
            fit=SkelFitConfig(device=self.device, batch_size=self.batch_size),
            filters=FilterConfig(self.max_pve_max, self.max_abs_beta, self.min_keypoints, self.keypoint_conf_floor),
            datasets=tuple(parse_datasets([item for item in self.datasets if "=" in item])),
            quarantine_root=self.quarantine_root,
        )


@dataclass
class ConvertReport:
    """What a run did (chunks by outcome, samples quarantined) and the quality of the whole table after it."""

    table_uri: str
    table_version: int
    chunks: dict[str, int]  # committed, skipped, empty, failed
    quarantined: int
    quarantined_by_dataset: dict[str, int]
    summary: dict  # `summarize` of the whole table
    failed: dict[str, str]  # chunk id → the error that stopped it (after retries, in a flow)


def run(
    options: ConvertOptions,
    run_chunks: ChunkRunner = convert_in_order,
    on_chunk: Callable[[ChunkOutcome], None] | None = None,
) -> ConvertReport:
    """Convert the datasets of `options` into the table: the front door of `hsmr convert` and the flow (which
    passes its Prefect chunk runner and a dashboard update as `on_chunk`)."""
    config = options.config()
    outcomes, failed = convert_chunks(config, run_chunks, on_chunk)
    statuses = Counter(outcome.status for outcome in outcomes)
    return ConvertReport(
        table_uri=config.table_uri,
        table_version=label_table.history(config.table_uri)[-1]["version"],
        chunks={status: statuses[status] for status in ("committed", "skipped", "empty")} | {"failed": len(failed)},
        quarantined=sum(outcome.quarantined for outcome in outcomes),
        quarantined_by_dataset=quarantined_by_dataset(outcomes),
        summary=summarize(label_table.read_labels(config.table_uri)),
        failed=failed,
    )
