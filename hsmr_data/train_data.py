"""The training loader: random access into exported shards, datasets mixed by weight, augmentation.

Which samples make batch `step` is a pure function of (seed, step): a run resumed from a checkpoint
at step k draws exactly the batches an uninterrupted run draws from k on, with no loader state to
save. Samples are read by offset from the tars (each shard is scanned once for its members'
offsets), so the loader needs no copy of the data and no cache keyed by URL.

Augmentation follows HSMR's configuration (each part switchable): horizontal flip with the mirrored
labels the export wrote, scale, in-plane rotation (which turns the global orientation and the 3D
keypoints about the camera axis too), a small translation, and colour gains.
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
class ShardDataset:
    """One exported dataset: its samples in index order, readable by position."""

    name: str
    members: list[ShardMember]

    @classmethod
    def from_index(cls, index_path: str | Path, name: str | None = None) -> ShardDataset:
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
        return cls(name or index_path.parent.name, members)

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


def augment_sample(arrays: dict[str, np.ndarray], image: Image.Image, rng: np.random.Generator, config: AugmentConfig):
    """One training sample, augmented: image (3, 256, 256) float in [0, 1], and its labels.

    Returns:
        (image, labels, applied) where labels hold q, betas, target88, keypoints_2d (44, 3),
        keypoints_3d (44, 4), has_pose, has_betas; `applied` records flip and rotation so that
        predictions can be brought back to the unaugmented sample.
    """
    flipped = rng.random() < config.flip_p
    suffix = "_flip" if flipped else ""
    q = arrays["q" + suffix].astype(np.float64)
    keypoints_2d = arrays["keypoints_2d" + suffix].astype(np.float64).copy()
    keypoints_3d = arrays["keypoints_3d" + suffix].astype(np.float64).copy()
    if flipped:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)

    zoom = 1.0 + rng.uniform(-config.scale, config.scale)
    degrees = float(np.clip(rng.normal(0, config.rotation_deg), -2 * config.rotation_deg, 2 * config.rotation_deg))
    degrees = degrees if rng.random() < config.rotation_p else 0.0
    shift = rng.uniform(-config.translation, config.translation, 2)
    rotation = _rotation_z(degrees)
    # Normalised crop coordinates: x' = zoom·R·x + shift. PIL wants the inverse map, in pixels.
    forward = np.eye(3)
    forward[:2, :2] = zoom * rotation[:2, :2]
    forward[:2, 2] = shift
    to_norm = np.array([[1 / CROP_SIZE, 0, -0.5], [0, 1 / CROP_SIZE, -0.5], [0, 0, 1]])
    inverse = np.linalg.inv(np.linalg.inv(to_norm) @ forward @ to_norm)
    image = image.transform((CROP_SIZE, CROP_SIZE), Image.Transform.AFFINE, tuple(inverse[:2].ravel()), Image.BILINEAR)
    keypoints_2d[:, :2] = keypoints_2d[:, :2] @ (zoom * rotation[:2, :2]).T + shift
    keypoints_3d[:, :3] = keypoints_3d[:, :3] @ rotation.T
    if degrees:
        global_rotation = rotation @ bone_rotations(torch.as_tensor(q[None]))[0, 0].numpy()
        q[0:3] = rotation_to_bone_dofs(torch.as_tensor(global_rotation[None]), bone=0)[0].numpy()

    pixels = np.asarray(image, dtype=np.float32) / 255.0
    pixels = pixels * rng.uniform(1 - config.colour, 1 + config.colour, 3).astype(np.float32)
    labels = {
        "q": q,
        "betas": arrays["betas"].astype(np.float64),
        "target88": q_to_target88(torch.as_tensor(q[None]))[0].numpy(),
        "keypoints_2d": keypoints_2d,
        "keypoints_3d": keypoints_3d,
        "has_pose": np.float64(arrays["has_pose"]),
        "has_betas": np.float64(arrays["has_betas"]),
    }
    return np.clip(pixels, 0, 1).transpose(2, 0, 1), labels, {"flipped": flipped, "rotation_deg": degrees}


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
        images, labels, meta = [], [], []
        version, replaced = self.overrides.current() if self.overrides is not None else (None, {})
        drawn = list(enumerate(self.sampler.batch(step)))
        for slot, (dataset, position) in drawn[self.slots]:
            entries = self.datasets[dataset].read(position)
            info = json.loads(entries["json"])
            arrays = {**npz_arrays(entries["npz"]), **replaced.get(info["sample_id"], {})}
            rng = np.random.default_rng([self.sampler.seed, step, slot, 1])
            image = Image.open(io.BytesIO(entries["jpg"])).convert("RGB")
            pixels, sample_labels, applied = augment_sample(arrays, image, rng, self.augment)
            images.append(pixels)
            labels.append(sample_labels)
            meta.append({"sample_id": info["sample_id"], "dataset": info["dataset"], **applied})
        batch = {
            name: torch.as_tensor(np.stack([lab[name] for lab in labels]), dtype=torch.float32) for name in labels[0]
        }
        batch["images"] = torch.as_tensor(np.stack(images))
        batch["meta"] = meta
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
