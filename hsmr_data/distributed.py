"""Data-parallel training under torchrun: the process group, rank-aware helpers and the launcher.

The engine is torch's own: `torchrun` (torch.distributed.run) starts one process per device and sets
RANK, WORLD_SIZE and LOCAL_RANK; gradients are averaged by DistributedDataParallel. Nothing here
schedules work. On the CPU the backend is gloo (how the tests run two processes on one machine), on
CUDA it is NCCL, one GPU per process (LOCAL_RANK picks it).

    hsmr train --nproc 8 ...                        # launches torchrun itself
    torchrun --nproc-per-node 8 -m hsmr_data.cli train ...   # the same, by hand or from a SLURM script
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ProcessGroup:
    """Where this process stands among the training processes; world_size 1 is the plain one-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """The process that writes checkpoints, metrics, predictions and label commits."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def device(self, device: torch.device) -> torch.device:
        """`device` narrowed to this process's GPU: cuda → cuda:LOCAL_RANK; other devices unchanged."""
        if device.type == "cuda" and device.index is None and self.distributed:
            return torch.device("cuda", self.local_rank)
        return device

    def slice(self, count: int) -> slice:
        """This rank's contiguous share of `count` items (a global batch), which must split evenly."""
        if count % self.world_size:
            raise ValueError(f"a batch of {count} does not split evenly over {self.world_size} processes")
        share = count // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value` (any picklable object), in rank order, on every rank."""
        if not self.distributed:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """The mean over ranks of each value (e.g. loss terms of the local batches), on every rank."""
        if not self.distributed:
            return values
        names = sorted(values)
        stacked = torch.tensor([values[name] for name in names], dtype=torch.float64)
        dist.all_reduce(stacked)
        return {name: float(total) / self.world_size for name, total in zip(names, stacked, strict=True)}

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def join(device: torch.device) -> ProcessGroup:
    """Join the process group torchrun describes in the environment (a no-op without one)."""
    group = ProcessGroup(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )
    if group.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(group.local_rank)
        dist.init_process_group(backend, rank=group.rank, world_size=group.world_size)
    return group


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def torchrun_command(nproc: int, module: str, arguments: Sequence[str]) -> list[str]:
    """The command that runs `python -m module arguments...` in `nproc` processes on this node."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
        "-m", module, *arguments,
    ]  # fmt: skip


def launch(nproc: int, module: str, arguments: Sequence[str], **popen: Any) -> subprocess.Popen:
    """Start `nproc` training processes through torchrun; the caller waits on (or watches) the process."""
    return subprocess.Popen(torchrun_command(nproc, module, arguments), **popen)
