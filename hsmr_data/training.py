"""Training the HSMR network on exported shards, with checkpoints a killed run resumes from.

A checkpoint holds the model, the optimiser, the gradient scaler, the step and torch's RNG state;
the data position is the step itself (the loader draws batch k from (seed, k) alone), so a run
killed after a checkpoint and started again continues exactly where the checkpoint left it: on the
CPU it ends with the parameters an uninterrupted run ends with.

Losses (means over the steps since the previous record), the gradient norm, the learning rate and
throughput go to `metrics.jsonl` (one JSON object per logged step); the latest
prediction for each sample (brought back to the unaugmented crop) goes to `predictions.parquet`
at every checkpoint, for SKELify refinement.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from hsmr_data import distributed, layout
from hsmr_data.train_data import AugmentConfig, MixedSampler, ShardDataset, TrainingBatches, unaugment_q
from hsmr_model.body_models import SKEL_SEX, BodyModels
from hsmr_model.devices import resolve_device
from hsmr_model.losses import GridKeypoints, LossTargets, LossWeights, hsmr_loss, predicted_keypoints
from hsmr_model.model_files import BodyModelPaths
from hsmr_model.network import HSMRNetwork, load_vitpose_backbone, network_config

CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs. Paper defaults where they fit a CPU; `size` picks the network."""

    indexes: tuple[str, ...]  # wids-style index.json of each exported dataset
    out_dir: str
    weights: tuple[float, ...] | None = None  # mixing weight per dataset (default: equal)
    models_root: str = layout.DEFAULT.models
    skel_sex: str = SKEL_SEX
    size: str = "tiny"  # "tiny" (CPU), "B", "H" (the paper's)
    pose_target: str = "88d"  # or "euler": the paper's ablation
    vitpose_checkpoint: str | None = None
    steps: int = 300
    batch_size: int = 16
    lr: float = 1e-4  # the paper's 1e-5 is for ViT-H from ViTPose; a tiny net from scratch needs more
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    warmup_steps: int = 0  # linear warm-up of the learning rate from 0
    lr_schedule: str = "constant"  # or "cosine": from lr after the warm-up down to 0 at `steps`
    checkpoint_every: int = 100
    log_every: int = 10
    seed: int = 0
    loader_workers: int = 0
    # Decoded samples each loader process keeps in memory per dataset (about 0.2 MB each): a dataset
    # that fits is decoded once, not every epoch. 0: decode every time (datasets larger than memory).
    decoded_cache: int = 0
    # Torch threads on the CPU (None: torch's default, one per core). On a small shared machine one
    # thread did the same step with 5-8× less CPU time than two (idle threads spin while they wait).
    cpu_threads: int | None = None
    device: str = "auto"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss_weights: LossWeights = field(default_factory=LossWeights)

    def __post_init__(self):
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")


RECIPES: dict[str, dict] = {
    # HSMR's public configuration: ViT-B/H from ViTPose on a GPU (AdamW 1e-5, its loss weights and
    # augmentation, no schedule).
    "paper": {"lr": 1e-5},
    # From scratch on a CPU in minutes (the diagnosis is in the README, "Training recipes"): a ViT with
    # a convolutional stem at half resolution; a learning rate a network from scratch needs, warmed up
    # and annealed; the parameter losses weighted so the pose and shape are learned directly instead
    # of only through the keypoint L1 (which, alone, shrinks β to hide an uninformed pose); the 2D
    # keypoints the network reads from its token grid (and lifts into its query) supervised densely, by a
    # heatmap over the cells as well as by their L1, since finding the body parts is what a backbone
    # from scratch learns slowest; milder rotations and zoom.
    "cpu": {
        "size": "small",
        "batch_size": 32,
        "cpu_threads": 1,
        "loader_workers": 1,  # the other core decodes and augments the next batch
        "decoded_cache": 5000,
        "lr": 2e-3,
        "warmup_steps": 100,
        "lr_schedule": "cosine",
        "loss_weights": LossWeights(
            kp3d=0.005, kp2d=0.001, orientation=0.5, body_pose=0.5, betas=0.05, grid_kp2d=0.3, grid_heatmap=0.01
        ),
        "augment": AugmentConfig(scale=0.15, rotation_p=0.3, rotation_deg=15.0),
    },
}


def recipe(name: str, **fields) -> TrainConfig:
    """A TrainConfig from a named recipe (RECIPES); `fields` set the run's own (indexes, out_dir, ...) and win."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {sorted(RECIPES)}")
    return TrainConfig(**{**RECIPES[name], **fields})


def make_config(recipe_name: str | None = None, **fields) -> TrainConfig:
    """A TrainConfig from a recipe (None: TrainConfig's defaults) and the fields given; a None field takes
    the recipe's value (what a command line or a flow parameter left unset)."""
    given = {name: value for name, value in fields.items() if value is not None}
    return recipe(recipe_name, **given) if recipe_name else TrainConfig(**given)


def learning_rate(config: TrainConfig, step: int) -> float:
    """The learning rate of step `step` (0-based): a pure function of the step, so resuming needs no state."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "cosine":
        progress = (step - config.warmup_steps) / max(config.steps - config.warmup_steps, 1)
        return config.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return config.lr


@dataclass
class TrainResult:
    step: int
    resumed_from: int
    checkpoint: str
    predictions: str
    metrics: str
    last_losses: dict[str, float]
    images_per_second: float


def _amp(device: torch.device) -> tuple[torch.dtype | None, bool]:
    """Mixed precision where the device has it: bf16 (no scaler) or fp16 (with a scaler) on CUDA; none on the CPU."""
    if device.type != "cuda":
        return None, False
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, False
    return torch.float16, True


class Trainer:
    """One training run: model, optimiser, data and the bodies the losses need."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.out_dir = Path(config.out_dir)
        device = resolve_device(config.device)
        # Under torchrun this process is one rank of a DDP run (see hsmr_data.distributed), else the only one.
        self.group = distributed.join(device)
        self.device = self.group.device(device)
        if self.device.type == "cpu" and config.cpu_threads:
            torch.set_num_threads(config.cpu_threads)  # process-wide: a training run owns its process
        torch.manual_seed(config.seed)
        self.model = HSMRNetwork(network_config(config.size, config.pose_target)).to(self.device)
        if config.vitpose_checkpoint:
            load_vitpose_backbone(self.model.backbone, config.vitpose_checkpoint)
        self.forward = self.model
        if self.group.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.amp_dtype, use_scaler = _amp(self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        models = BodyModels.load(BodyModelPaths.from_root(config.models_root), config.skel_sex, self.device)
        self.skel, self.regressor = models.skel, models.keypoints
        datasets = [ShardDataset.from_index(path, cache_size=config.decoded_cache) for path in config.indexes]
        weights = config.weights or (1.0,) * len(datasets)
        sampler = MixedSampler([len(d) for d in datasets], list(weights), config.batch_size, config.seed)
        self.batches = TrainingBatches(datasets, sampler, config.augment, slots=self.group.slice(config.batch_size))
        self.step = 0
        self.predictions: dict[str, dict] = {}

    # -------------------------------------------------------------------------------- checkpoints
    def save(self) -> Path:
        """Write the checkpoint atomically (a crash mid-write leaves the previous one) and the predictions.

        Every rank calls it; the main process writes, the others wait until it has.
        """
        path = self.out_dir / CHECKPOINT
        self.collect_predictions()
        if not self.group.is_main:
            self.group.barrier()
            return path
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "torch_rng": torch.get_rng_state(),
            "config": json.loads(json.dumps(asdict(self.config), default=str)),
            "network": self.model.config.to_dict(),
        }
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
        self._write_predictions()
        self.group.barrier()
        return path

    def collect_predictions(self) -> None:
        """Bring every rank's new predictions to the main process (the others hand theirs over and forget
        them); a sample predicted on two ranks keeps its later prediction."""
        if not self.group.distributed:
            return
        shares = self.group.gather({} if self.group.is_main else self.predictions)
        if not self.group.is_main:
            self.predictions = {}
            return
        for share in shares[1:]:
            for sample_id, row in share.items():
                if sample_id not in self.predictions or row["step"] >= self.predictions[sample_id]["step"]:
                    self.predictions[sample_id] = row

    def resume(self) -> int:
        """Continue from the checkpoint in out_dir if there is one; returns the step resumed from (0 if none)."""
        path = self.out_dir / CHECKPOINT
        if not path.exists():
            return 0
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        predictions = self.out_dir / "predictions.parquet"
        if predictions.exists() and self.group.is_main:
            self.predictions = {row["sample_id"]: row for row in pq.read_table(predictions).to_pylist()}
        return self.step

    def _write_predictions(self) -> None:
        if not self.predictions:
            return
        rows = [self.predictions[key] for key in sorted(self.predictions)]
        table = pa.table({name: [row[name] for row in rows] for name in rows[0]})
        tmp = self.out_dir / "predictions.parquet.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, self.out_dir / "predictions.parquet")

    # ----------------------------------------------------------------------------------- training
    def train_step(self, batch: dict) -> dict[str, float]:
        self.model.train()
        images = batch["images"].to(self.device)
        targets = LossTargets(
            q=batch["q"].to(self.device),
            betas=batch["betas"].to(self.device),
            has_pose=batch["has_pose"].to(self.device),
            has_betas=batch["has_betas"].to(self.device),
            keypoints_3d=batch["keypoints_3d"].to(self.device),
            keypoints_2d=batch["keypoints_2d"].to(self.device),
        )
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            output = self.forward(images)
        # The body model and losses stay in float32: rotations and small keypoint offsets need it.
        output_q, output_betas = output.q.float(), output.betas.float()
        keypoints_3d, keypoints_2d = predicted_keypoints(
            self.skel, self.regressor, output_q, output_betas, output.cam_t.float()
        )
        grid = output.grid_keypoints
        if grid is not None:
            grid = GridKeypoints(grid.positions.float(), grid.log_probabilities.float(), grid.cell_centres.float())
        total, parts = hsmr_loss(
            output.bone_rotations.float(),
            output_betas,
            keypoints_3d,
            keypoints_2d,
            targets,
            self.config.loss_weights,
            grid,
        )
        lr = learning_rate(self.config, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        # The loss sums over samples, DDP averages gradients over ranks: scaling by the world size makes
        # the gradient that of the loss over the whole (global) batch, as in a one-process run.
        self.scaler.scale(total * self.group.world_size).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self._remember(batch["meta"], output_q, output_betas, output.cam_t.float(), keypoints_2d)
        losses = {k: float(v.detach()) for k, v in parts.items()}
        return {"loss": float(total.detach()), **losses, "grad_norm": float(grad_norm), "lr": lr}

    def _remember(self, meta, q, betas, cam_t, keypoints_2d) -> None:
        q, betas = q.detach().cpu().numpy(), betas.detach().cpu().numpy()
        cam_t, keypoints_2d = cam_t.detach().cpu().numpy(), keypoints_2d.detach().cpu().numpy()
        for i, info in enumerate(meta):
            self.predictions[info["sample_id"]] = {
                "sample_id": info["sample_id"],
                "dataset": info["dataset"],
                "step": self.step,
                "q": unaugment_q(q[i], info).tolist(),
                "betas": betas[i].astype(np.float64).tolist(),
                # The camera and 2D keypoints are those of the augmented crop; refinement re-fits the camera.
                "cam_t": cam_t[i].astype(np.float64).tolist(),
                "keypoints_2d": keypoints_2d[i].astype(np.float64).ravel().tolist(),
            }

    def run(
        self,
        on_log: Callable[[dict], None] | None = None,
        stop_after: int | None = None,
        on_step: Callable[[Trainer, int], None] | None = None,
    ) -> TrainResult:
        """Train until config.steps (or `stop_after` more steps), checkpointing every checkpoint_every.

        `on_step(trainer, step)` runs after each step and its checkpoint (e.g. `refine_training.RefineCallback`).
        Under DDP every rank runs this loop; the logged losses are those of the global batch and
        `on_log` is called in the main process only.
        """
        resumed_from = self.resume()
        end = self.config.steps if stop_after is None else min(self.config.steps, self.step + stop_after)
        loader = torch.utils.data.DataLoader(
            self.batches,
            batch_size=None,
            sampler=range(self.step, end),
            num_workers=self.config.loader_workers,
            multiprocessing_context="spawn" if self.config.loader_workers else None,
        )
        metrics_path = self.out_dir / "metrics.jsonl"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        losses, started, images, interval = {}, time.perf_counter(), 0, []
        for batch in loader:
            if batch["labels_version"] != self.batches.labels_version():
                batch = self.batches[batch["step"]]  # built by a worker before new labels were announced
            losses = self.train_step(batch)
            interval.append(losses)
            self.step += 1
            images += len(batch["meta"]) * self.group.world_size
            if self.step % self.config.log_every == 0 or self.step == end:
                # The mean over the steps since the last record: one batch alone is too noisy a curve.
                means = {name: float(np.mean([step[name] for step in interval])) for name in losses}
                interval = []
                # Loss terms sum over samples, so the global batch's are the sum over ranks; the gradient
                # norm and the learning rate are those of the (all-reduced) update, the same on every rank.
                terms = {name: value for name, value in means.items() if name not in ("grad_norm", "lr")}
                means |= {name: value * self.group.world_size for name, value in self.group.mean(terms).items()}
                record = {"step": self.step, **means, "images_per_s": images / (time.perf_counter() - started)}
                if self.group.is_main:
                    with metrics_path.open("a") as handle:
                        handle.write(json.dumps(record) + "\n")
                    if on_log is not None:
                        on_log(record)
            if self.step % self.config.checkpoint_every == 0 or self.step == end:
                self.save()
            if on_step is not None:
                on_step(self, self.step)
        elapsed = time.perf_counter() - started
        return TrainResult(
            step=self.step,
            resumed_from=resumed_from,
            checkpoint=str(self.out_dir / CHECKPOINT),
            predictions=str(self.out_dir / "predictions.parquet"),
            metrics=str(metrics_path),
            last_losses=losses,
            images_per_second=images / elapsed if elapsed > 0 else 0.0,
        )
