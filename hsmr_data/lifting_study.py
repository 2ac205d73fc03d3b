"""What limits a trained network: where it finds the body parts, or how it lifts them to a pose.

On held-out people (un-augmented crops):
- the keypoints the network reads from its token grid against the dataset's detected ones: the mean and
  median distance in the 256-px crop, per keypoint, and per keypoint the *spread ratio*, the share of the
  detections' spread across people that the network reproduces (the least-squares slope of its
  positions on the detections, both centred on their means: 1 follows every person, 0 always answers
  the same place);
- an image-free lifter: an MLP from the 2D keypoints to the SKEL pose and β, trained on the export's
  labelled people (and their mirrored copies) with Gaussian noise of a random size per sample on its
  inputs; then scored with `hsmr_data.evaluate` (PA-MPJPE against the truth) when it is fed the
  detections, the detections plus isotropic Gaussian noise as large on average as the network's error,
  and the network's own grid keypoints; next to the network and the constant mean pose.

If the lifter is good on the detections and on noisy ones but not on the network's keypoints, the
network's errors are not noise: they carry less of the pose than random errors of the same size do.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hsmr_data.evaluate import EvalConfig, evaluate
from hsmr_data.geometry import crop_side, normalised_keypoints
from hsmr_data.hmr2_format import read_shards
from hsmr_data.predict import PredictConfig, Predictor, predictions_table, sample_crop, write_table
from hsmr_data.quarantine import Quarantine
from hsmr_data.table5_study import split_scores
from hsmr_data.train_data import DecodedSample, ShardDataset
from hsmr_model import skel_constants as C
from hsmr_model.camera import CROP_SIZE
from hsmr_model.losses import betas_loss, rotation_losses
from hsmr_model.network import decode_pose, mean_pose
from hsmr_model.pose_repr import TARGET_SIZE, bone_rotations

INPUTS = ("detected", "detected_plus_noise", "network_grid")


@dataclass(frozen=True)
class LiftingStudyConfig:
    checkpoint: str  # a training run folder or its checkpoint.pt (a network that reads grid keypoints)
    train_index: str  # the export's index.json the network was trained on
    heldout_dir: str  # HMR2.0-style tars of held-out people (shards/*.tar) and their truth/
    models_root: str
    dataset: str = "synth"
    steps: int = 4000  # lifter training steps
    batch_size: int = 64
    lr: float = 1e-3
    hidden: int = 512
    dropout: float = 0.1  # after each hidden layer: ~500 labelled people overfit a lifter without it
    max_noise: float = 0.08  # the noise σ on the lifter's inputs is drawn per sample in [0, max_noise) crop widths
    seed: int = 0
    device: str = "auto"  # where the network runs (the lifter is small and trains on the CPU)


@dataclass
class LiftingStudyResult:
    config: dict[str, Any]
    heldout_people: int
    lifter_seconds: float
    grid_keypoints: dict[str, Any]  # the network's grid keypoints vs the detections (held-out, training_people)
    quarantine: dict[str, Any]  # held-out samples left out, each with its reason (`Quarantine.report`)
    scores: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # source → split → metrics

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------- pure functions
def lifter_features(keypoints: torch.Tensor) -> torch.Tensor:
    """2D keypoints in normalised crop units with confidences (B, K, 3) → lifter input (B, 3K); the
    position of an unseen keypoint (confidence 0) is zeroed, so that only the confidence tells it."""
    seen = (keypoints[..., 2:] > 0).to(keypoints.dtype)
    return torch.cat([keypoints[..., :2] * seen, keypoints[..., 2:]], dim=-1).flatten(1)


def with_noise(keypoints: torch.Tensor, sigma: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Isotropic Gaussian noise of σ (B,) crop units on the positions of (B, K, 3) keypoints."""
    noise = torch.randn(keypoints[..., :2].shape, generator=generator, dtype=keypoints.dtype)
    return torch.cat([keypoints[..., :2] + sigma[:, None, None] * noise, keypoints[..., 2:]], dim=-1)


def spread_ratio(predicted: np.ndarray, detected: np.ndarray) -> float:
    """Least-squares slope of predicted on detected positions of one keypoint, both centred on their
    means over people: (N, 2), (N, 2) → how much of the detections' spread the prediction follows."""
    p, d = predicted - predicted.mean(0), detected - detected.mean(0)
    return float((p * d).sum() / max((d * d).sum(), 1e-12))


def keypoint_errors(predicted: np.ndarray, detected: np.ndarray) -> dict[str, Any]:
    """Predicted (N, K, 2) vs detected (N, K, 3) keypoints in normalised crop units → pixel errors in the
    crop (mean, median, per keypoint) and per-keypoint spread ratios, over the detected (confidence > 0)."""
    seen = detected[..., 2] > 0
    pixels = np.linalg.norm(predicted - detected[..., :2], axis=-1) * CROP_SIZE
    per_keypoint = [
        {
            "keypoint": k,
            "name": C.KEYPOINT_NAMES[k],
            "people": int(seen[:, k].sum()),
            "mean_px": float(pixels[seen[:, k], k].mean()),
            "spread_ratio": spread_ratio(predicted[seen[:, k], k], detected[seen[:, k], k, :2]),
        }
        for k in range(detected.shape[1])
        if seen[:, k].sum() >= 2
    ]
    return {
        "mean_px": float(pixels[seen].mean()),
        "median_px": float(np.median(pixels[seen])),
        "per_keypoint": per_keypoint,
    }


# ---------------------------------------------------------------------------------------- lifter
class KeypointLifter(nn.Module):
    """2D keypoints (B, K, 3) → the 88-D pose target (B, 88) and β (B, 10), as offsets from the network's
    means (the last layer starts at zero, so the first answer is the mean pose)."""

    def __init__(self, keypoints: int = C.NUM_KEYPOINTS, hidden: int = 512, dropout: float = 0.1):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(3 * keypoints, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, TARGET_SIZE + C.NUM_BETAS),
        )  # fmt: skip
        nn.init.zeros_(self.layers[-1].weight)
        nn.init.zeros_(self.layers[-1].bias)
        self.register_buffer("mean_pose", mean_pose("88d"))

    def forward(self, keypoints: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.layers(lifter_features(keypoints))
        return self.mean_pose + out[:, :TARGET_SIZE], out[:, TARGET_SIZE:]


def labelled_training_set(samples: list[DecodedSample]) -> dict[str, torch.Tensor]:
    """The exported people with a pose label, each also mirrored: keypoints_2d (N, K, 3), q (N, 46), betas (N, 10)."""
    rows = [s.arrays for s in samples if float(s.arrays["has_pose"]) > 0]
    if not rows:
        raise ValueError("no exported sample has a pose label to train a lifter on")

    def stacked(name: str) -> torch.Tensor:
        return torch.as_tensor(np.stack([a[name] for a in rows]), dtype=torch.float32)

    return {
        "keypoints_2d": torch.cat([stacked("keypoints_2d"), stacked("keypoints_2d_flip")]),
        "q": torch.cat([stacked("q"), stacked("q_flip")]),
        "betas": torch.cat([stacked("betas"), stacked("betas")]),
    }


def train_lifter(data: dict[str, torch.Tensor], config: LiftingStudyConfig) -> KeypointLifter:
    """The lifter fitted to the bone rotations and β of the labels (AdamW, cosine-annealed)."""
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    lifter = KeypointLifter(data["keypoints_2d"].shape[1], config.hidden, config.dropout)
    optimizer = torch.optim.AdamW(lifter.parameters(), config.lr, weight_decay=1e-4)
    rotations = bone_rotations(data["q"].double()).float()
    everyone = torch.ones(config.batch_size)
    for step in range(config.steps):
        picked = torch.randint(len(rotations), (config.batch_size,), generator=generator)
        sigma = config.max_noise * torch.rand(config.batch_size, generator=generator)
        target88, betas = lifter(with_noise(data["keypoints_2d"][picked], sigma, generator))
        _, _, predicted = decode_pose(target88, "88d")
        orientation, body = rotation_losses(predicted, rotations[picked], everyone)
        loss = (orientation + body + 0.1 * betas_loss(betas, data["betas"][picked], everyone)).mean()
        for group in optimizer.param_groups:
            group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * step / config.steps))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return lifter.eval()


@torch.no_grad()
def lifted_rows(lifter: KeypointLifter, sample_ids: list[str], dataset: str, keypoints: torch.Tensor) -> list[dict]:
    """Prediction rows (the columns of `hsmr predict`) of the lifter on (N, K, 3) keypoints. The lifter
    predicts no camera: cam_t is a placeholder and only the root-aligned metrics mean anything."""
    target88, betas = lifter(keypoints)
    _, q, _ = decode_pose(target88, "88d")
    return [
        {
            "sample_id": sample_id,
            "dataset": dataset,
            "step": 0,
            "q": q[i].double().tolist(),
            "betas": betas[i].double().tolist(),
            "cam_t": [0.0, 0.0, 20.0],
            "keypoints_2d": keypoints[i, :, :2].double().flatten().tolist(),
        }
        for i, sample_id in enumerate(sample_ids)
    ]


# ----------------------------------------------------------------------------------------- study
@torch.no_grad()
def grid_positions(predictor: Predictor, crops: torch.Tensor) -> np.ndarray:
    """256² crops (N, 3, H, W) uint8 → the keypoints the network reads from its token grid (N, K, 2)."""
    positions = []
    for start in range(0, len(crops), predictor.config.batch_size):
        images = crops[start : start + predictor.config.batch_size].float() / 255.0
        grid = predictor.model(images.to(predictor.device)).grid_keypoints
        if grid is None:
            raise ValueError(f"{predictor.config.checkpoint}: this network reads no keypoints from its token grid")
        positions.append(grid.positions.float().cpu().numpy())
    return np.concatenate(positions)


def run_lifting_study(config: LiftingStudyConfig, log=print) -> LiftingStudyResult:
    heldout = Path(config.heldout_dir)
    quarantine = Quarantine()
    samples = list(read_shards(sorted((heldout / "shards").glob("*.tar")), config.dataset, quarantine))
    if len(quarantine):
        log(f"{len(quarantine)} held-out samples quarantined: {[e.reason for e in quarantine.entries]}")
    if not samples:
        raise ValueError(f"{heldout / 'shards'}: no readable held-out sample of dataset {config.dataset!r}")
    ids = [s.sample_id for s in samples]
    detected = np.stack([normalised_keypoints(s.keypoints_2d, s.center, crop_side(s.scale)) for s in samples])
    predictor = Predictor(PredictConfig(config.checkpoint, config.models_root, device=config.device))
    crops = [sample_crop(s) for s in samples]
    network_rows = list(predictor.run_all(crops))
    grid = grid_positions(predictor, torch.as_tensor(np.stack([c.pixels for c in crops])).permute(0, 3, 1, 2))
    errors = keypoint_errors(grid, detected)
    log(f"grid keypoints vs detected: {errors['mean_px']:.1f} px mean, {errors['median_px']:.1f} px median")
    # The same on the training people (the export's un-augmented crops): a network that misses by as much
    # there underfits; one that misses far less there overfits.
    exported = ShardDataset.from_index(config.train_index)
    training = [exported.decoded(i) for i in range(len(exported))]
    training_grid = grid_positions(predictor, torch.stack([s.image for s in training]))
    training_errors = keypoint_errors(training_grid, np.stack([s.arrays["keypoints_2d"] for s in training]))
    errors["training_people"] = {k: training_errors[k] for k in ("mean_px", "median_px")}

    started = time.perf_counter()
    lifter = train_lifter(labelled_training_set(training), config)
    lifter_seconds = time.perf_counter() - started
    detected_t = torch.as_tensor(detected, dtype=torch.float32)
    # The mean length of 2D isotropic Gaussian noise is σ·√(π/2): σ matched to the network's mean error.
    sigma = errors["mean_px"] / CROP_SIZE / math.sqrt(math.pi / 2)
    noisy = with_noise(detected_t, torch.full((len(ids),), sigma), torch.Generator().manual_seed(config.seed))
    on_grid = torch.cat([torch.as_tensor(grid, dtype=torch.float32), detected_t[..., 2:]], dim=-1)
    inputs = {"detected": detected_t, "detected_plus_noise": noisy, "network_grid": on_grid}

    result = LiftingStudyResult(asdict(config), len(ids), lifter_seconds, errors, quarantine.report())
    with tempfile.TemporaryDirectory() as scratch:
        tables = {"network": write_table(predictions_table(network_rows), Path(scratch) / "network.parquet")}
        for name, keypoints in inputs.items():
            rows = lifted_rows(lifter, ids, config.dataset, keypoints)
            tables[f"lifter_on_{name}"] = write_table(predictions_table(rows), Path(scratch) / f"{name}.parquet")
        for source, table in tables.items():
            eval_config = EvalConfig(str(heldout), None, config.models_root, str(table), dataset=config.dataset,
                                     out_dir=str(Path(scratch) / "eval"))  # fmt: skip
            report = evaluate(eval_config)
            if "constant" not in result.scores:
                result.scores["constant"] = split_scores(report["sources"]["constant"]["splits"])
            result.scores[source] = split_scores(report["sources"]["network"]["splits"])
            log(f"{source:30s} PA-MPJPE {result.scores[source]['all']['pa_mpjpe_mm']:.1f} mm")
    return result


def to_markdown(result: LiftingStudyResult) -> str:
    errors = result.grid_keypoints
    lines = [
        f"{result.heldout_people} held-out people. The network's grid keypoints are "
        f"{errors['mean_px']:.1f} px (median {errors['median_px']:.1f}) from the detections in the 256-px crop; "
        f"on the training people {errors['training_people']['mean_px']:.1f} px "
        f"(median {errors['training_people']['median_px']:.1f}). Held-out samples quarantined: "
        f"{result.quarantine['quarantined']}.",
        "",
        "| source | PA-MPJPE all | normal | hard |",
        "|---|---|---|---|",
    ]
    for source, scores in result.scores.items():
        per_split = " | ".join(f"{scores[s]['pa_mpjpe_mm']:.1f}" if s in scores else "–" for s in ("normal", "hard"))
        lines.append(f"| {source} | {scores['all']['pa_mpjpe_mm']:.1f} | {per_split} |")
    lines += ["", "| keypoint | mean px | spread ratio |", "|---|---|---|"]
    lines += [f"| {k['name']} | {k['mean_px']:.1f} | {k['spread_ratio']:.2f} |" for k in errors["per_keypoint"]]
    return "\n".join(lines) + "\n"
