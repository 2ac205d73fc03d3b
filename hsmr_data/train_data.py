"""The training loader: random access into exported shards, datasets mixed by weight, augmentation.

Which samples make batch `step` is a pure function of (seed, step): a run resumed from a checkpoint
at step k draws exactly the batches an uninterrupted run draws from k on, with no loader state to
save. Samples are read by offset from the tars (each shard is scanned once for its members'
offsets), so the loader needs no copy of the data and no cache keyed by URL; a dataset small enough
may keep its decoded samples in memory (`cache_size`), which changes no batch.

Augmentation follows HSMR's configuration (each part switchable): horizontal flip with the mirrored
labels the export wrote, scale, in-plane rotation (which turns the global orientation and the 3D
keypoints about the camera axis too), a small translation, and colour gains. Each sample draws its
own; the images of a batch are then warped together in one bilinear resampling.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from hsmr_data.npz_codec import npz_arrays
from hsmr_model.camera import CROP_SIZE
from hsmr_model.flip import flip_q
from hsmr_model.pose_repr import bone_rotations, q_to_target88, rotation_to_bone_dofs


@dataclass(frozen=True)
class AugmentConfig:
    """HSMR's training augmentation; probabilities and ranges as its configuration."""

    flip_p: float = 0.5
    scale: float = 0.3  # zoom factor uniform in 1 ± scale
    rotation_p: float = 0.6
    rotation_deg: float = 30.0  # σ of a normal, clipped at 2σ
    translation: float = 0.02  # of the crop side
    colour: float = 0.2  # per-channel gain uniform in 1 ± colour

    @classmethod
    def off(cls) -> AugmentConfig:
        return cls(flip_p=0.0, scale=0.0, rotation_p=0.0, translation=0.0, colour=0.0)


@dataclass
class ShardMember:
    shard: Path
    entries: dict[str, tuple[int, int]]  # extension → (offset, size) in the tar


def scan_shard(path: Path) -> list[ShardMember]:
    """Offsets of every sample's entries in a tar, in file order."""
    samples: dict[str, ShardMember] = {}
    with tarfile.open(path) as tar:
        for info in tar:
            if not info.isfile():
                continue
            key, _, extension = info.name.partition(".")
            samples.setdefault(key, ShardMember(path, {})).entries[extension] = (info.offset_data, info.size)
    return list(samples.values())


@dataclass
class DecodedSample:
    sample_id: str
    dataset: str
    arrays: dict[str, np.ndarray]  # the npz labels
    image: torch.Tensor  # (3, CROP_SIZE, CROP_SIZE) uint8


@dataclass
class ShardDataset:
    """One exported dataset: its samples in index order, readable by position.

    `cache_size`: how many decoded samples to keep in memory (per process; the first ones read), so a
    dataset that fits is decoded once instead of at every epoch. 0 keeps none.
    """

    name: str
    members: list[ShardMember]
    cache_size: int = 0
    _decoded: dict[int, DecodedSample] = field(default_factory=dict, repr=False)

    @classmethod
    def from_index(cls, index_path: str | Path, name: str | None = None, cache_size: int = 0) -> ShardDataset:
        """Read a wids-style index (`shardlist` of `url`, `nsamples`); urls relative to the index."""
        index_path = Path(index_path)
        index = json.loads(index_path.read_text())
        members = []
        for shard in index["shardlist"]:
            found = scan_shard(index_path.parent / shard["url"])
            if len(found) != shard["nsamples"]:
                raise ValueError(f"{shard['url']}: index says {shard['nsamples']} samples, the tar holds {len(found)}")
            members.extend(found)
        if not members:
            raise ValueError(f"{index_path}: the index lists no samples")
        return cls(name or index_path.parent.name, members, cache_size)

    def __len__(self) -> int:
        return len(self.members)

    def read(self, position: int) -> dict[str, bytes]:
        member = self.members[position]
        out = {}
        with open(member.shard, "rb") as handle:
            for extension, (offset, size) in member.entries.items():
                handle.seek(offset)
                out[extension] = handle.read(size)
        return out

    def decoded(self, position: int) -> DecodedSample:
        """The sample at `position`, its JSON and npz parsed and its crop decoded (resized if not CROP_SIZE)."""
        if position in self._decoded:
            return self._decoded[position]
        entries = self.read(position)
        info = json.loads(entries["json"])
        image = Image.open(io.BytesIO(entries["jpg"])).convert("RGB")
        if image.size != (CROP_SIZE, CROP_SIZE):
            image = image.resize((CROP_SIZE, CROP_SIZE), Image.BILINEAR)
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()
        sample = DecodedSample(info["sample_id"], info["dataset"], npz_arrays(entries["npz"]), pixels)
        if len(self._decoded) < self.cache_size:
            self._decoded[position] = sample
        return sample


@dataclass
class MixedSampler:
    """Batch `step` → (dataset, position) pairs, datasets drawn by weight, positions uniformly."""

    sizes: list[int]
    weights: list[float]
    batch_size: int
    seed: int = 0
    _probabilities: np.ndarray = field(init=False)

    def __post_init__(self):
        weights = np.asarray(self.weights, dtype=np.float64)
        if len(weights) != len(self.sizes) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"need one non-negative weight per dataset with a positive sum, got {self.weights}")
        self._probabilities = weights / weights.sum()

    def batch(self, step: int) -> list[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, step])
        datasets = rng.choice(len(self.sizes), size=self.batch_size, p=self._probabilities)
        return [(int(d), int(rng.integers(self.sizes[d]))) for d in datasets]


def _rotation_z(degrees: float) -> np.ndarray:
    """Rotation about the camera axis; with y down, positive turns the image content clockwise on screen."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class SampleAugmentation:
    """What one sample's augmentation draws. In normalised crop coordinates (the crop spans [−0.5, 0.5]),
    the flipped image's point x moves to zoom·R(rotation_deg)·x + shift; `gains` scale the RGB channels."""

    flipped: bool
    zoom: float
    rotation_deg: float
    shift: np.ndarray  # (2,)
    gains: np.ndarray  # (3,)

    @classmethod
    def draw(cls, rng: np.random.Generator, config: AugmentConfig) -> SampleAugmentation:
        flipped = bool(rng.random() < config.flip_p)
        zoom = 1.0 + rng.uniform(-config.scale, config.scale)
        degrees = float(np.clip(rng.normal(0, config.rotation_deg), -2 * config.rotation_deg, 2 * config.rotation_deg))
        degrees = degrees if rng.random() < config.rotation_p else 0.0
        shift = rng.uniform(-config.translation, config.translation, 2)
        gains = rng.uniform(1 - config.colour, 1 + config.colour, 3)
        return cls(flipped, zoom, degrees, shift, gains)

    def linear(self) -> np.ndarray:
        """zoom·R, the 2×2 part of the map (flip aside)."""
        return self.zoom * _rotation_z(self.rotation_deg)[:2, :2]


def augment_labels(arrays: dict[str, np.ndarray], augmentations: list[SampleAugmentation]) -> dict[str, np.ndarray]:
    """The labels of B samples under their augmentations (the mirrored labels where flipped).

    Args:
        arrays: per sample, its npz arrays (q, q_flip, keypoints_2d(_flip) (44, 3), keypoints_3d(_flip) (44, 4),
            betas, has_pose, has_betas).
    Returns:
        q (B, 46), betas (B, 10), target88 (B, 88), keypoints_2d (B, 44, 3), keypoints_3d (B, 44, 4),
        has_pose (B,), has_betas (B,); float64.
    """

    def stacked(name: str) -> np.ndarray:
        pairs = zip(arrays, augmentations, strict=True)
        return np.stack([np.asarray(a[name + ("_flip" if aug.flipped else "")], np.float64) for a, aug in pairs])

    q, keypoints_2d, keypoints_3d = stacked("q"), stacked("keypoints_2d").copy(), stacked("keypoints_3d").copy()
    linear = np.stack([aug.linear() for aug in augmentations])  # (B, 2, 2)
    rotation = np.stack([_rotation_z(aug.rotation_deg) for aug in augmentations])  # (B, 3, 3)
    shift = np.stack([aug.shift for aug in augmentations])
    keypoints_2d[..., :2] = np.einsum("bij,bkj->bki", linear, keypoints_2d[..., :2]) + shift[:, None]
    keypoints_3d[..., :3] = np.einsum("bij,bkj->bki", rotation, keypoints_3d[..., :3])
    # The image turned about the camera axis, so the body's global rotation turns with it.
    turned = np.array([aug.rotation_deg != 0.0 for aug in augmentations])
    if turned.any():
        q_turned = torch.as_tensor(q[turned])
        global_rotation = torch.as_tensor(rotation[turned]) @ bone_rotations(q_turned)[:, 0]
        q[turned, 0:3] = rotation_to_bone_dofs(global_rotation, bone=0).numpy()
    return {
        "q": q,
        "betas": np.stack([np.asarray(a["betas"], np.float64) for a in arrays]),
        "target88": q_to_target88(torch.as_tensor(q)).numpy(),
        "keypoints_2d": keypoints_2d,
        "keypoints_3d": keypoints_3d,
        "has_pose": np.array([float(a["has_pose"]) for a in arrays]),
        "has_betas": np.array([float(a["has_betas"]) for a in arrays]),
    }


def augment_images(images: torch.Tensor, augmentations: list[SampleAugmentation]) -> torch.Tensor:
    """Warp and recolour B crops as their augmentations say, in one bilinear resampling.

    Args:
        images: (B, 3, H, W) uint8.
    Returns:
        (B, 3, H, W) float32 in [0, 1]; outside the source crop is black.
    """
    # grid_sample's coordinates are 2× the normalised crop ones; it asks, for each output point y,
    # where to read: x = flip·(zoom·R)⁻¹·(y − 2·shift).
    theta = np.zeros((len(augmentations), 2, 3))
    for out, aug in zip(theta, augmentations, strict=True):
        inverse = np.linalg.inv(aug.linear())
        if aug.flipped:
            inverse[0] *= -1
        out[:, :2] = inverse
        out[:, 2] = -inverse @ (2 * aug.shift)
    theta = torch.as_tensor(theta, dtype=torch.float32)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    warped = F.grid_sample(images.float() / 255.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    gains = torch.as_tensor(np.stack([aug.gains for aug in augmentations]), dtype=torch.float32)
    return (warped * gains[:, :, None, None]).clamp_(0.0, 1.0)


class LabelOverrides(Protocol):
    """Labels that replace the exported ones (e.g. refined labels from the label table) while training runs."""

    def current(self) -> tuple[int | None, Mapping[str, Mapping[str, np.ndarray]]]:
        """(the label version in force, sample id → the npz arrays that replace the exported ones)."""
        ...


class TrainingBatches(torch.utils.data.Dataset):
    """Item `step` is the whole batch of that step, so a DataLoader's workers build batches in parallel.

    `slots`: the share of each global batch this process trains on (its rank's slice under DDP); a
    sample's augmentation is drawn from its slot in the global batch, so the shares of all ranks
    together are exactly the one-process batch. `overrides`: labels that replace the exported ones,
    read where the batch is built (in a loader worker too); the batch records their version.
    """

    def __init__(
        self,
        datasets: list[ShardDataset],
        sampler: MixedSampler,
        augment: AugmentConfig,
        slots: slice = slice(None),
        overrides: LabelOverrides | None = None,
    ):
        self.datasets, self.sampler, self.augment = datasets, sampler, augment
        self.slots, self.overrides = slots, overrides

    def __len__(self) -> int:
        return 2**62  # indexed by step; the training loop decides when to stop

    def labels_version(self) -> int | None:
        return self.overrides.current()[0] if self.overrides is not None else None

    def __getitem__(self, step: int) -> dict:
        version, replaced = self.overrides.current() if self.overrides is not None else (None, {})
        drawn = list(enumerate(self.sampler.batch(step)))[self.slots]
        samples = [self.datasets[dataset].decoded(position) for _, (dataset, position) in drawn]
        augmentations = [
            SampleAugmentation.draw(np.random.default_rng([self.sampler.seed, step, slot, 1]), self.augment)
            for slot, _ in drawn
        ]
        arrays = [{**sample.arrays, **replaced.get(sample.sample_id, {})} for sample in samples]
        batch = {
            name: torch.as_tensor(values, dtype=torch.float32)
            for name, values in augment_labels(arrays, augmentations).items()
        }
        batch["images"] = augment_images(torch.stack([sample.image for sample in samples]), augmentations)
        batch["meta"] = [
            {
                "sample_id": sample.sample_id,
                "dataset": sample.dataset,
                "flipped": aug.flipped,
                "rotation_deg": aug.rotation_deg,
            }
            for sample, aug in zip(samples, augmentations, strict=True)
        ]
        batch["step"] = step
        batch["labels_version"] = version
        return batch


def unaugment_q(q: np.ndarray, applied: dict) -> np.ndarray:
    """A prediction on an augmented crop (46,) → the q of the original, unflipped, unrotated sample."""
    q = q.astype(np.float64).copy()
    if applied["rotation_deg"]:
        back = _rotation_z(-applied["rotation_deg"]) @ bone_rotations(torch.as_tensor(q[None]))[0, 0].numpy()
        q[0:3] = rotation_to_bone_dofs(torch.as_tensor(back[None]), bone=0)[0].numpy()
    return flip_q(q[None])[0] if applied["flipped"] else q
