"""The synthetic world: people with known SKEL bodies, rendered and labelled like an HMR2.0 dataset.

For each person: a true SKEL pose and shape (natural or hard, see `poses`), a camera that frames
them the way HMR2.0 crops (a box of side scale × 200 px around `center`, focal length 5000 px for
the 256 px crop), a rendered RGB image (shaded, clothed in colours, cluttered background, sometimes
an occluder), 44 keypoints in 2D (noise, occlusion, dropouts) and 3D, and SMPL pseudo-GT fitted to
the true skin then corrupted (see `pseudo_gt`). The tars hold what a real dataset holds; the truth
goes to a separate Parquet table the pipeline never reads.

The image's principal point is the crop centre, so the 256 px crop is exactly a pinhole camera of
focal length 5000 centred on the crop: the true translation is the label in crop camera terms.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import smplx
import torch
from PIL import Image

from hsmr_data import layout
from hsmr_data.geometry import (
    BOX_SIDE_PER_SCALE,
    crop_image,
    crop_pixels,
    crop_side,
    draw_keypoints,
    focal_in_image,
    normalised_keypoints,
)
from hsmr_data.hmr2_format import write_shards
from hsmr_data.progress import Progress
from hsmr_data.records import PersonSample
from hsmr_data.render import Raster, project, rasterize, shade, write_png
from hsmr_data.synthetic import pseudo_gt
from hsmr_data.synthetic.poses import PoseBatch, sample_true_poses
from hsmr_model import skel_constants as C
from hsmr_model.body_models import SKEL_SEX, BodyModels
from hsmr_model.camera import CROP_SIZE, FOCAL_PIXELS
from hsmr_model.model_files import BodyModelPaths
from hsmr_model.regressor import VertexRegressor
from hsmr_model.skel_layer import SKELLayer


@dataclass
class SynthConfig:
    count: int
    seed: int = 0
    hard_fraction: float = 0.2
    dataset: str = "synth"
    image_size: int = 320  # square images; the person's box is 160–300 px inside
    batch_size: int = 128
    shard_maxcount: int = 250
    smpl_fit_iterations: int = 30  # LBFGS iterations: ~2 cm mean PVE; the cost that dominates
    # Held-out people: shares of `count` written as their own datasets under out_dir/val and
    # out_dir/test (out_dir itself holds the training people). 0 by default so a library caller
    # gets `count` people in one dataset; `hsmr data synth` and the demo ask for 0.1 each.
    val_fraction: float = 0.0
    test_fraction: float = 0.0

    def split_counts(self) -> dict[str, int]:
        """People per split, train first: the held-out shares rounded, the rest for training."""
        if self.val_fraction < 0 or self.test_fraction < 0 or self.val_fraction + self.test_fraction >= 1:
            raise ValueError(f"val and test fractions must be >= 0 and leave people to train on, got "
                             f"{self.val_fraction}, {self.test_fraction}")  # fmt: skip
        held_out = {"val": round(self.count * self.val_fraction), "test": round(self.count * self.test_fraction)}
        counts = {"train": self.count - sum(held_out.values()), **held_out}
        if counts["train"] < 1:
            raise ValueError(f"{self.count} people leave none to train on after the held-out splits {held_out}")
        return {name: n for name, n in counts.items() if n > 0}


@dataclass
class SynthSummary:
    out_dir: str
    shards: list[str]
    ground_truth: str
    contact_sheet: str
    count: int
    corruption_counts: dict[str, int]
    hard_count: int
    seconds: float
    seconds_per_sample: dict[str, float] = field(default_factory=dict)
    splits: dict[str, dict] = field(default_factory=dict)  # held-out split → its folder, count and hard count


@dataclass
class Framing:
    """Where a person is put: camera-frame translation and the crop box in the image."""

    trans: np.ndarray  # (N, 3)
    center: np.ndarray  # (N, 2) pixels: crop centre and principal point
    box_side: np.ndarray  # (N,) pixels: scale × 200

    @property
    def image_focal(self) -> np.ndarray:
        return focal_in_image(self.box_side)


def frame_people(vertices: np.ndarray, image_size: int, rng: np.random.Generator) -> Framing:
    """Choose depth and offset so each body fills its crop like an HMR2.0 box (person ≈ 1/1.2 of the side).

    Args:
        vertices: (N, V, 3) posed skins at zero translation, camera frame.
    """
    count = len(vertices)
    low, high = vertices[..., :2].min(1), vertices[..., :2].max(1)
    middle, half_extent = (low + high) / 2, (high - low).max(1) / 2
    margin = rng.uniform(1.1, 1.35, count)
    # Angular half-side of the crop is (CROP_SIZE / 2) / FOCAL_PIXELS whatever the image resolution.
    depth = half_extent * margin * FOCAL_PIXELS / (CROP_SIZE / 2)
    jitter = rng.uniform(-0.05, 0.05, (count, 2)) * half_extent[:, None]
    trans = np.concatenate([-middle + jitter, depth[:, None]], axis=1)
    box_side = rng.uniform(160.0, 300.0, count)
    center = image_size / 2 + rng.uniform(-30.0, 30.0, (count, 2))
    return Framing(trans, center, box_side)


def cluttered_background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth colour field with random rectangles and discs on it: (size, size, 3) uint8."""
    corners = rng.uniform(40, 220, (2, 2, 3))
    t = np.linspace(0.0, 1.0, size)[:, None, None]
    s = np.linspace(0.0, 1.0, size)[None, :, None]
    image = (1 - t) * ((1 - s) * corners[0, 0] + s * corners[0, 1]) + t * ((1 - s) * corners[1, 0] + s * corners[1, 1])
    rows, cols = np.mgrid[0:size, 0:size]
    for _ in range(rng.integers(4, 10)):
        colour = rng.uniform(0, 255, 3)
        y, x, h, w = rng.integers(0, size, 4)
        if rng.random() < 0.5:
            image[y : y + h // 3 + 4, x : x + w // 3 + 4] = colour
        else:
            image[(rows - y) ** 2 + (cols - x) ** 2 < (h // 6 + 3) ** 2] = colour
    image += rng.normal(0, 6, image.shape)
    return image.clip(0, 255).astype(np.uint8)


# Clothing regions by SKEL bone: shirt on the trunk and arms, trousers on the legs, bare hands and
# head, shoes on the feet.
_SHIRT = {"lumbar_body", "thorax", "scapula_r", "scapula_l", "humerus_r", "humerus_l", "ulna_r", "ulna_l"}
_SKIN = {"head", "hand_r", "hand_l", "radius_r", "radius_l"}
_SHOES = {"talus_r", "talus_l", "calcn_r", "calcn_l", "toes_r", "toes_l"}


def clothing_colours(vertex_part: np.ndarray, vertices_rest: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-vertex colours (V, 3) in [0, 255]: a random outfit and skin tone, stripes on some shirts."""
    shirt, trousers, shoes = rng.uniform(20, 235, (3, 3))
    skin = np.array([224, 172, 140]) * rng.uniform(0.45, 1.05)
    by_part = {
        bone: skin if name in _SKIN else shirt if name in _SHIRT else shoes if name in _SHOES else trousers
        for bone, name in enumerate(C.BONE_NAMES)
    }
    colours = np.stack([by_part[p] for p in vertex_part]).astype(np.float64)
    if rng.random() < 0.5:
        on_shirt = np.isin(vertex_part, [C.BONE_NAMES.index(n) for n in _SHIRT])
        stripes = np.sin(vertices_rest[:, 1] * rng.uniform(40, 120)) > 0
        colours[on_shirt & stripes] *= 0.6
    return colours


@dataclass
class KeypointObservation:
    keypoints_2d: np.ndarray  # (44, 3) pixels + confidence
    visible: np.ndarray  # (44,) bool: not hidden by the body or an occluder, inside the image


def observe_keypoints(
    keypoints_cam: np.ndarray,
    focal: float,
    center: np.ndarray,
    raster: Raster,
    occluder: np.ndarray,
    box_side: float,
    rng: np.random.Generator,
) -> KeypointObservation:
    """What a 2D keypoint detector reports: noisy positions, lower confidence where hidden, dropouts.

    Args:
        keypoints_cam: (44, 3) camera frame; occluder: (H, W) bool pixels covered by an occluder.
    """
    size = raster.depth.shape[0]
    uv = project(keypoints_cam, focal, tuple(center))
    pixel = np.floor(uv).astype(int)
    inside = ((pixel >= 0) & (pixel < size)).all(1)
    row, col = pixel[:, 1].clip(0, size - 1), pixel[:, 0].clip(0, size - 1)
    # Joints sit inside the body: behind the visible surface by up to a limb's half-thickness.
    self_hidden = keypoints_cam[:, 2] > raster.depth[row, col] + 0.15
    covered = occluder[row, col]
    visible = inside & ~self_hidden & ~covered
    confidence = np.where(visible, rng.uniform(0.55, 1.0, 44), rng.uniform(0.05, 0.5, 44))
    confidence[~inside | covered] = 0.0
    confidence[rng.random(44) < 0.05] = 0.0  # detector misses
    noise = rng.normal(0.0, 1.0, (44, 2)) * box_side * np.where(visible, 0.008, 0.025)[:, None]
    keypoints = np.concatenate([uv + noise, confidence[:, None]], axis=1)
    keypoints[confidence == 0.0, :2] = 0.0  # as HMR2.0 stores missing keypoints
    return KeypointObservation(keypoints, visible)


def random_occluder(size: int, center: np.ndarray, box_side: float, rng: np.random.Generator) -> np.ndarray | None:
    """A box over part of the person in about one image in five: (H, W) bool, or None."""
    if rng.random() > 0.2:
        return None
    mask = np.zeros((size, size), dtype=bool)
    h, w = (rng.uniform(0.15, 0.4, 2) * box_side).astype(int)
    y, x = (center + rng.uniform(-0.35, 0.35, 2) * box_side).astype(int)
    mask[max(y - h // 2, 0) : max(y + h // 2, 0), max(x - w // 2, 0) : max(x + w // 2, 0)] = True
    return mask


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@dataclass
class WorldModels:
    """The body models of the world (the male SKEL, neutral SMPL, the keypoints) and what it derives from them."""

    skel: SKELLayer
    smpl: smplx.SMPL
    keypoints: VertexRegressor
    vertex_part: np.ndarray
    rest_vertices: np.ndarray
    smpl_rest_joints: np.ndarray

    @classmethod
    def load(cls, paths: BodyModelPaths) -> WorldModels:
        models = BodyModels.load(paths, SKEL_SEX)
        skel, smpl = models.skel, models.smpl
        weights = skel.skin_weights.numpy()
        with torch.no_grad():
            rest = smpl().joints[0, :24].numpy().astype(np.float64)
        return cls(skel, smpl, models.keypoints, weights.argmax(1), skel.skin_template.numpy(), rest)


@dataclass
class TruthRows:
    """Columns of the ground-truth table, appended batch by batch."""

    columns: dict[str, list] = field(default_factory=dict)

    def add(self, **values) -> None:
        for name, value in values.items():
            self.columns.setdefault(name, []).extend(value)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.table({name: list(values) for name, values in self.columns.items()})
        pq.write_table(table, path)


def _batch_people(
    models: WorldModels, config: SynthConfig, batch_index: int, start: int, count: int, truth: TruthRows, timer
) -> Iterator[PersonSample]:
    rng = np.random.default_rng([config.seed, batch_index])
    with timer("pose"):
        poses: PoseBatch = sample_true_poses(count, rng, config.hard_fraction)
        q = torch.as_tensor(poses.q, dtype=torch.float32)
        betas = torch.as_tensor(poses.betas, dtype=torch.float32)
        with torch.no_grad():
            skin = models.skel(q, betas).skin_verts
            _, world_r, _, _ = models.skel.pose_skeleton(q, models.skel.rest_joints(betas))
        framing = frame_people(skin.numpy(), config.image_size, rng)
        trans = torch.as_tensor(framing.trans, dtype=torch.float32)
        skin_cam = (skin + trans[:, None]).numpy().astype(np.float64)
        keypoints_cam = models.keypoints(skin + trans[:, None]).numpy().astype(np.float64)
    with timer("smpl_fit"):
        fit = pseudo_gt.fit_smpl_to_vertices(
            models.smpl, skin + trans[:, None], world_r, betas, config.smpl_fit_iterations
        )
        clean_pose = (fit.global_orient.copy(), fit.body_pose.copy())
        kinds = pseudo_gt.sample_corruptions(count, rng, poses.hard)
        corruption = pseudo_gt.corrupt(fit, kinds, models.smpl_rest_joints, rng)

    keys = [f"{config.dataset}-{start + i:07d}" for i in range(count)]
    faces = models.skel.faces.numpy()
    size = config.image_size
    for i in range(count):
        with timer("render"):
            focal = float(framing.image_focal[i])
            raster = rasterize(skin_cam[i], faces, focal, tuple(framing.center[i]), (size, size))
            colours = clothing_colours(models.vertex_part, models.rest_vertices, rng)
            light = rng.normal(0, 0.4, 3) + np.array([0.0, -0.3, -1.0])
            image = shade(
                raster, skin_cam[i], faces, colours, cluttered_background(size, rng), light / np.linalg.norm(light)
            )
            occluder = random_occluder(size, framing.center[i], framing.box_side[i], rng)
            if occluder is not None:
                image[occluder] = rng.uniform(0, 255, 3).astype(np.uint8)
            else:
                occluder = np.zeros((size, size), dtype=bool)
            observed = observe_keypoints(
                keypoints_cam[i], focal, framing.center[i], raster, occluder, framing.box_side[i], rng
            )
            jpeg = encode_jpeg(image)
        yield PersonSample(
            key=keys[i],
            person_id=0,
            dataset=config.dataset,
            image_jpeg=jpeg,
            keypoints_2d=observed.keypoints_2d.astype(np.float32),
            keypoints_3d=np.concatenate([keypoints_cam[i], np.ones((44, 1))], axis=1).astype(np.float32),
            center=framing.center[i].astype(np.float32),
            scale=np.full(2, framing.box_side[i] / BOX_SIDE_PER_SCALE, dtype=np.float32),
            body_pose=fit.body_pose[i].astype(np.float32),
            global_orient=fit.global_orient[i].astype(np.float32),
            betas=fit.betas[i].astype(np.float32),
            has_body_pose=1.0,
            has_betas=1.0,
        )
    truth.add(
        sample_id=[f"{k}_0" for k in keys],
        key=keys,
        split=["hard" if h else "normal" for h in poses.hard],
        archetype=poses.archetype,
        sex=[SKEL_SEX] * count,
        q=poses.q.tolist(),
        betas=poses.betas.tolist(),
        trans=framing.trans.tolist(),
        camera_elevation_deg=poses.camera_elevation_deg.tolist(),
        crop_focal=[FOCAL_PIXELS] * count,
        image_focal=framing.image_focal.tolist(),
        center=framing.center.tolist(),
        box_side=framing.box_side.tolist(),
        corruption=corruption.kind,
        corruption_level_deg=corruption.level_deg.tolist(),
        smpl_fit_pve_mean=fit.pve_mean.tolist(),
        smpl_clean_global_orient=clean_pose[0].tolist(),
        smpl_clean_body_pose=clean_pose[1].tolist(),
        smpl_betas=fit.betas.tolist(),
        smpl_transl=fit.transl.tolist(),
    )


class _Timer:
    """Seconds spent per stage, summed over the run."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def generate_dataset(paths: BodyModelPaths, out_dir: Path | str, config: SynthConfig) -> SynthSummary:
    """Write `config.count` people: shards under out_dir/shards, the truth under out_dir/truth,
    a contact sheet of the first 16 and a manifest. Deterministic for a seed.

    With `val_fraction` / `test_fraction`, those shares of the people go to complete datasets of
    their own under out_dir/val and out_dir/test (same layout), and out_dir holds the training
    people: disjoint people (keys numbered on across the splits), drawn from the same distribution,
    each split with its hard share. The summary is the training part's, `splits` lists the others.
    """
    if config.count < 1:
        raise ValueError(f"count must be at least 1, got {config.count}")
    out_dir = Path(out_dir)
    started = time.perf_counter()
    models = WorldModels.load(paths)
    first_person, first_batch, parts = 0, 0, {}
    with Progress(f"synth {out_dir.name}", total=config.count, unit="person") as progress:
        for split, count in config.split_counts().items():
            folder = out_dir if split == "train" else out_dir / split
            parts[split] = _write_people(models, folder, config, split, count, first_person, first_batch, progress)
            first_person += count
            first_batch += -(-count // config.batch_size)
    summary = parts.pop("train")
    summary.splits = {
        name: {"out_dir": p.out_dir, "count": p.count, "hard_count": p.hard_count} for name, p in parts.items()
    }
    summary.seconds = round(time.perf_counter() - started, 2)
    _write_manifest(out_dir, config, "train", summary)
    return summary


def _write_manifest(out_dir: Path, config: SynthConfig, split: str, summary: SynthSummary) -> None:
    manifest = {"config": asdict(config), "split": split, **asdict(summary)}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _write_people(
    models: WorldModels,
    out_dir: Path,
    config: SynthConfig,
    split: str,
    count: int,
    first_person: int,
    first_batch: int,
    progress: Progress,
) -> SynthSummary:
    """One split's dataset: `count` people keyed from `first_person`, batch seeds from `first_batch`."""
    started = time.perf_counter()
    truth, timer, sheet_samples = TruthRows(), _Timer(), []

    def people() -> Iterator[PersonSample]:
        for offset, start in enumerate(range(0, count, config.batch_size)):
            size = min(config.batch_size, count - start)
            for sample in _batch_people(models, config, first_batch + offset, first_person + start, size, truth, timer):
                if len(sheet_samples) < 16:
                    sheet_samples.append(sample)
                yield sample
                progress.update(1)

    shards = write_shards(people(), out_dir / "shards", maxcount=config.shard_maxcount)
    truth_path = out_dir / "truth" / "ground_truth.parquet"
    truth.write(truth_path)
    sheet_path = out_dir / "contact_sheet.png"
    write_png(sheet_path, contact_sheet(sheet_samples))
    kinds = truth.columns["corruption"]
    summary = SynthSummary(
        out_dir=str(out_dir),
        shards=[str(s) for s in shards],
        ground_truth=str(truth_path),
        contact_sheet=str(sheet_path),
        count=count,
        corruption_counts={k: kinds.count(k) for k in pseudo_gt.CORRUPTION_KINDS},
        hard_count=truth.columns["split"].count("hard"),
        seconds=round(time.perf_counter() - started, 2),
        seconds_per_sample={k: round(v / count, 4) for k, v in timer.seconds.items()},
    )
    if split != "train":
        _write_manifest(out_dir, config, split, summary)
    return summary


def contact_sheet(samples: list[PersonSample], columns: int = 4) -> np.ndarray:
    """Crops of the samples with their 2D keypoints drawn, in a grid: (rows·256, columns·256, 3)."""
    tiles = []
    for sample in samples:
        side = crop_side(sample.scale)
        with Image.open(io.BytesIO(sample.image_jpeg)) as image:
            crop = crop_image(image, sample.center, side)
        tiles.append(draw_keypoints(crop, crop_pixels(normalised_keypoints(sample.keypoints_2d, sample.center, side))))
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.concatenate(tiles[r : r + columns], axis=1) for r in range(0, len(tiles), columns)]
    return np.concatenate(rows, axis=0)


# ------------------------------------------------------------------------------ the step's front door
HELD_OUT = 0.1  # the share of people in each of the val and test splits that `hsmr data synth` and the demo ask


@dataclass(frozen=True)
class SynthOptions:
    """A synthetic dataset as `hsmr data synth` (and the pipeline) asks for it: flat, JSON-able."""

    count: int = field(metadata={"flag": "--n", "help": "number of people"})
    out_dir: str = field(metadata={"flag": "--out", "help": "output folder (shards/, truth/, contact_sheet.png)"})
    seed: int = SynthConfig.seed
    hard_fraction: float = field(default=SynthConfig.hard_fraction, metadata={"help": "share of MOYO-like poses"})
    dataset: str = field(default=SynthConfig.dataset, metadata={"help": "dataset name, the prefix of every key"})
    val_fraction: float = field(default=HELD_OUT, metadata={"help": "share of people held out in OUT/val"})
    test_fraction: float = field(default=HELD_OUT, metadata={"help": "share of people held out in OUT/test"})
    models_root: str = field(default=layout.DEFAULT.models, metadata={"help": "body models (written if absent)"})

    def config(self) -> SynthConfig:
        return SynthConfig(
            count=self.count,
            seed=self.seed,
            hard_fraction=self.hard_fraction,
            dataset=self.dataset,
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
        )


def run(options: SynthOptions) -> SynthSummary:
    """Write the dataset `options` describe (people on a progress bar): the front door of `hsmr data synth`."""
    from hsmr_data.synthetic.body_models import ensure_synthetic_models

    return generate_dataset(ensure_synthetic_models(options.models_root), options.out_dir, options.config())
