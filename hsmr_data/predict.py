"""Running a trained HSMR network on people outside its training: HMR2.0-style tars, or images with boxes.

Every person is cut out exactly as the export cut the training crops (the 256² HMR2.0 box, bilinear),
without augmentation, and the network runs on batches of them (GPU when present, bf16 there). The
rows have the columns of a training run's `predictions.parquet` (sample_id, dataset, step, q, betas,
cam_t, keypoints_2d), so `hsmr refine` and `hsmr eval` take either; here `cam_t` and the projected
`keypoints_2d` belong to the un-augmented crop.

Images (`predict_images`) come with person boxes from a JSON file, since this project ships no
detector: `{"IMAGE": [{"box": [x0, y0, x1, y1]}, {"center": [x, y], "scale": s}, ...]}` per image
file name, a tight box (as a detector gives) or an HMR2.0 centre and scale (box side = scale × 200).
A detector plugs in by writing that file. Each person's row adds the image, the person's index and
its box; an overlay PNG per image shows the predicted skin and SKEL skeleton over the image.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image, ImageDraw

from hsmr_data import layout
from hsmr_data.datasets import DatasetSpec
from hsmr_data.geometry import crop_image, crop_side, focal_in_image
from hsmr_data.hmr2_format import read_shards
from hsmr_data.progress import Progress
from hsmr_data.quarantine import Quarantine
from hsmr_data.records import PersonSample
from hsmr_data.render import project, rasterize, shade
from hsmr_model import skel_constants as C
from hsmr_model.body_models import SKEL_SEX, BodyModels
from hsmr_model.devices import resolve_device
from hsmr_model.flip import average_with_mirror
from hsmr_model.losses import predicted_keypoints
from hsmr_model.model_files import BodyModelPaths
from hsmr_model.network import HSMRNetwork, checkpoint_network, weak_perspective_to_translation

CHECKPOINT = "checkpoint.pt"  # the name the Trainer writes in its run folder
TIGHT_BOX_MARGIN = 1.2  # crop side / longer side of a tight box: how the training crops frame people


@dataclass(frozen=True)
class PredictConfig:
    checkpoint: str = field(metadata={"help": "a training run folder or its checkpoint.pt"})
    models_root: str = layout.DEFAULT.models
    batch_size: int = 32
    device: str = field(default="auto", metadata={"help": '"auto" (CUDA when present), "cpu", "cuda:1", ...'})
    # What `run` predicts: HMR2.0-style tars, or images with their people's boxes.
    datasets: tuple[str, ...] = field(
        default=(),
        metadata={"flag": "--dataset", "help": "NAME=SPEC of HMR2.0-style tars (a folder, a URL)"},
    )
    images: str | None = field(default=None, metadata={"help": "a folder of images; their people come from --boxes"})
    boxes: str | None = field(default=None, metadata={"help": 'boxes.json: {"IMAGE": [{"box": [x0, y0, x1, y1]}]}'})
    out: str = field(default=layout.DEFAULT.predictions, metadata={"help": "the Parquet table to write"})
    overlays: str | None = field(default=None, metadata={"help": "with --images: a folder for overlay PNGs"})
    flip_average: bool = field(
        default=False,
        metadata={"help": "also run each mirrored crop and average the two answers (test-time flip; twice the time)"},
    )


@dataclass
class Crop:
    """One person ready for the network: its 256² crop (H, W, 3) uint8 and where it came from."""

    sample_id: str
    dataset: str
    pixels: np.ndarray
    center: np.ndarray  # (2,) box centre in the image, pixels
    side: float  # box side, pixels


def checkpoint_path(checkpoint: str | Path) -> Path:
    path = Path(checkpoint)
    path = path / CHECKPOINT if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: give a training run folder or its {CHECKPOINT}")
    return path


class Predictor:
    """A trained network and the body model that turns its outputs into keypoints, ready to run."""

    def __init__(self, config: PredictConfig):
        self.config = config
        self.device = resolve_device(config.device)
        state = torch.load(checkpoint_path(config.checkpoint), map_location="cpu", weights_only=True)
        train_config = state["config"]
        self.step = int(state["step"])
        self.model = HSMRNetwork(checkpoint_network(state))
        self.model.load_state_dict(state["model"])
        self.model.to(self.device).eval()
        paths = BodyModelPaths.from_root(config.models_root)
        models = BodyModels.load(paths, train_config.get("skel_sex", SKEL_SEX), self.device)
        self.skel, self.regressor = models.skel, models.keypoints
        cuda = self.device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else None

    @torch.no_grad()
    def run(self, crops: list[Crop]) -> list[dict]:
        """One batch of crops → one prediction row each (the training predictions' columns)."""
        images = torch.as_tensor(np.stack([c.pixels for c in crops])).permute(0, 3, 1, 2).float() / 255.0
        q, betas, cam = self._answer(images.to(self.device))
        if self.config.flip_average:
            q, betas, cam = average_with_mirror(q, betas, cam, *self._answer(images.flip(-1).to(self.device)))
        cam_t = weak_perspective_to_translation(cam)
        _, keypoints_2d = predicted_keypoints(self.skel, self.regressor, q, betas, cam_t)
        q, betas, cam_t, keypoints_2d = (t.double().cpu().numpy() for t in (q, betas, cam_t, keypoints_2d))
        return [
            {
                "sample_id": crop.sample_id,
                "dataset": crop.dataset,
                "step": self.step,
                "q": q[i].tolist(),
                "betas": betas[i].tolist(),
                "cam_t": cam_t[i].tolist(),
                "keypoints_2d": keypoints_2d[i].ravel().tolist(),
            }
            for i, crop in enumerate(crops)
        ]

    def _answer(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            output = self.model(images)
        return output.q.float(), output.betas.float(), output.cam.float()

    def run_all(self, crops: Iterable[Crop], on_batch: Callable[[int], None] | None = None) -> Iterator[dict]:
        """Rows of every crop, batch by batch; `on_batch(n)` after each batch of n (a progress bar)."""
        batch: list[Crop] = []
        for crop in crops:
            batch.append(crop)
            if len(batch) == self.config.batch_size:
                yield from self._flush(batch, on_batch)
                batch = []
        if batch:
            yield from self._flush(batch, on_batch)

    def _flush(self, batch: list[Crop], on_batch) -> list[dict]:
        rows = self.run(batch)
        if on_batch is not None:
            on_batch(len(batch))
        return rows


# ------------------------------------------------------------------------------------ tars
def sample_crop(sample: PersonSample) -> Crop:
    """The un-augmented training crop of a dataset person (the export's crop)."""
    side = crop_side(sample.scale)
    with Image.open(io.BytesIO(sample.image_jpeg)) as image:
        pixels = crop_image(image, sample.center, side)
    return Crop(sample.sample_id, sample.dataset, pixels, np.asarray(sample.center, np.float64), side)


def predictions_table(rows: list[dict]) -> pa.Table:
    """Rows in sample-id order as a table; q, betas, cam_t and keypoints_2d as lists of float64."""
    if not rows:
        raise ValueError("nothing to write: no person was predicted")
    rows = sorted(rows, key=lambda row: row["sample_id"])
    return pa.table({name: [row[name] for row in rows] for name in rows[0]})


def write_table(table: pa.Table, out_path: str | Path) -> Path:
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(out)
    return out


@dataclass
class DatasetPrediction:
    predictions: str
    count: int
    quarantined: int
    step: int


def predict_dataset(
    predictor: Predictor,
    datasets: list[str],
    out_path: str | Path,
    on_batch: Callable[[int], None] | None = None,
) -> DatasetPrediction:
    """Every valid person of each NAME=SPEC dataset (`hsmr_data.datasets`) → `out_path` (Parquet); broken
    samples are quarantined (their report next to the output) and the run goes on."""
    quarantine = Quarantine()

    def crops() -> Iterator[Crop]:
        for spec in datasets:
            dataset = DatasetSpec.parse(spec)
            for sample in read_shards(dataset.shard_urls(), dataset.name, quarantine):
                yield sample_crop(sample)

    rows = list(predictor.run_all(crops(), on_batch))
    out = write_table(predictions_table(rows), out_path)
    if len(quarantine):
        quarantine.write_report(out.with_name(out.stem + "_quarantine.json"))
    return DatasetPrediction(str(out), len(rows), len(quarantine), predictor.step)


# ---------------------------------------------------------------------------------- image folders
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class PersonBox:
    """Where one person is in an image: the HMR2.0 box centre and side, pixels."""

    center: np.ndarray  # (2,)
    side: float

    @classmethod
    def parse(cls, entry: dict, where: str) -> PersonBox:
        """`{"box": [x0, y0, x1, y1]}` (tight; the side gets TIGHT_BOX_MARGIN) or `{"center": [x, y], "scale": s}`."""
        if "box" in entry:
            x0, y0, x1, y1 = (float(v) for v in entry["box"])
            if not (x1 > x0 and y1 > y0):
                raise ValueError(f"{where}: box {entry['box']} is empty (want [x0, y0, x1, y1] with x1 > x0, y1 > y0)")
            return cls(np.array([(x0 + x1) / 2, (y0 + y1) / 2]), TIGHT_BOX_MARGIN * max(x1 - x0, y1 - y0))
        if "center" in entry and "scale" in entry:
            scale = np.atleast_1d(np.asarray(entry["scale"], np.float64))
            center = np.asarray(entry["center"], np.float64)
            if center.shape != (2,) or not (scale > 0).all():
                raise ValueError(f"{where}: center must be [x, y] and scale positive, got {entry}")
            return cls(center, crop_side(scale))
        raise ValueError(f"{where}: a person needs 'box' [x0, y0, x1, y1] or 'center' [x, y] and 'scale', got {entry}")


def read_boxes(path: str | Path) -> dict[str, list[PersonBox]]:
    """boxes.json → image file name → its people's boxes, in the file's order."""
    raw = json.loads(Path(path).read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected an object of image name → list of people")
    return {
        image: [PersonBox.parse(entry, f"{path}: {image} person {i}") for i, entry in enumerate(people)]
        for image, people in raw.items()
    }


@dataclass
class ImagePrediction:
    predictions: str
    overlays: list[str]
    count: int
    quarantined: int
    step: int


def _image_crops(images: dict[str, Path], boxes: dict[str, list[PersonBox]], quarantine: Quarantine):
    for name, path in images.items():
        try:
            with Image.open(path) as image:
                image.load()
                rgb = image.convert("RGB")
        except OSError as error:
            quarantine.add(path, name, f"unreadable image: {error}")
            continue
        for person, box in enumerate(boxes.get(name, [])):
            pixels = crop_image(rgb, box.center, box.side)
            yield Crop(f"{Path(name).stem}_{person}", "images", pixels, box.center, box.side)


def predict_images(
    predictor: Predictor,
    image_dir: str | Path,
    boxes_path: str | Path,
    out_path: str | Path,
    overlay_dir: str | Path | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> ImagePrediction:
    """Every person of boxes.json in the images of `image_dir` → a Parquet table (the training predictions'
    columns plus image, person, center, box_side) and, with `overlay_dir`, one overlay PNG per image.

    An image that cannot be read, or a box entry naming no image in the folder, is quarantined with its
    reason (the report next to the table) and the others go on.
    """
    image_dir, quarantine = Path(image_dir), Quarantine()
    boxes = read_boxes(boxes_path)
    images = {name: image_dir / name for name in sorted(boxes)}
    for name in [n for n, path in images.items() if not path.is_file()]:
        quarantine.add(boxes_path, name, f"no image {name} in {image_dir}")
        del images[name]
    crops: dict[str, Crop] = {}

    def remembered(stream):
        for crop in stream:
            crops[crop.sample_id] = crop
            yield crop

    rows = list(predictor.run_all(remembered(_image_crops(images, boxes, quarantine)), on_batch))
    for row in rows:
        crop = crops[row["sample_id"]]
        image, _, person = row["sample_id"].rpartition("_")
        row.update(image=image, person=int(person), center=crop.center.tolist(), box_side=crop.side)
    out = write_table(predictions_table(rows), out_path)
    overlays = []
    if overlay_dir is not None:
        by_image: dict[str, list[dict]] = {}
        for row in rows:
            by_image.setdefault(row["image"], []).append(row)
        for name, path in images.items():
            people = by_image.get(Path(name).stem)
            if people:
                overlays.append(str(write_overlay(predictor, path, people, Path(overlay_dir))))
    if len(quarantine):
        quarantine.write_report(out.with_name(out.stem + "_quarantine.json"))
    return ImagePrediction(str(out), overlays, len(rows), len(quarantine), predictor.step)


SKIN_COLOUR = (120, 170, 230)
OVERLAY_OPACITY = 0.7


@torch.no_grad()
def write_overlay(predictor: Predictor, image_path: Path, people: list[dict], out_dir: Path) -> Path:
    """The image with each person's predicted SKEL skin (translucent) and skeleton drawn over it.

    A person's crop is a pinhole camera of focal 5000 px per 256 px centred on its box, so in the
    image the same camera has focal 5000 · side / 256 and its principal point at the box centre.
    """
    with Image.open(image_path) as image:
        base = np.asarray(image.convert("RGB"))
    height, width = base.shape[:2]
    q = torch.tensor([p["q"] for p in people], dtype=torch.float32, device=predictor.device)
    betas = torch.tensor([p["betas"] for p in people], dtype=torch.float32, device=predictor.device)
    trans = torch.tensor([p["cam_t"] for p in people], dtype=torch.float32, device=predictor.device)
    bodies = predictor.skel(q, betas, trans)
    skins, joints = bodies.skin_verts.double().cpu().numpy(), bodies.joints.double().cpu().numpy()
    faces = predictor.skel.faces.cpu().numpy()
    depth, out = np.full((height, width), np.inf), base.copy()
    cameras = []
    for person, skin in zip(people, skins, strict=True):
        focal, principal = focal_in_image(person["box_side"]), tuple(person["center"])
        cameras.append((focal, principal))
        raster = rasterize(skin, faces, focal, principal, (height, width))
        nearer = raster.mask & (raster.depth < depth)
        shaded = shade(raster, skin, faces, np.broadcast_to(np.asarray(SKIN_COLOUR, np.float64), skin.shape), base)
        blended = OVERLAY_OPACITY * shaded[nearer] + (1 - OVERLAY_OPACITY) * base[nearer]
        out[nearer] = blended.astype(np.uint8)
        depth[nearer] = raster.depth[nearer]
    canvas = Image.fromarray(out)
    draw = ImageDraw.Draw(canvas)
    line = max(2, round(min(height, width) / 200))
    for bones, (focal, principal) in zip(joints, cameras, strict=True):
        uv = project(bones, focal, principal)
        for child, parent in enumerate(C.BONE_PARENTS):
            if parent >= 0:
                draw.line([tuple(uv[parent]), tuple(uv[child])], fill=(250, 220, 40), width=line)
        for x, y in uv:
            draw.ellipse([x - line, y - line, x + line, y + line], fill=(230, 40, 40))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{image_path.stem}_overlay.png"
    canvas.save(path)
    return path


def check_inputs(config: PredictConfig) -> None:
    """Datasets, or images with their boxes: a ValueError that says so otherwise."""
    if bool(config.images) == bool(config.datasets) or (config.images and not config.boxes):
        raise ValueError("give either datasets (--dataset NAME=SPEC) or images (--images DIR) with --boxes boxes.json")


def run(config: PredictConfig) -> DatasetPrediction | ImagePrediction:
    """Predict what `config` names, people on a progress bar: the front door of `hsmr predict` and the flow."""
    check_inputs(config)
    predictor = Predictor(config)
    with Progress(f"predict on {predictor.device}", unit="person") as progress:
        if config.images:
            return predict_images(predictor, config.images, config.boxes, config.out, config.overlays, progress.update)
        return predict_dataset(predictor, list(config.datasets), config.out, progress.update)
