"""Several processes or machines: where this process stands in a ``torchrun`` job."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Dist", "barrier", "init_distributed"]


@dataclass(frozen=True)
class Dist:
    """Where this process stands in a ``torch.distributed`` job (1 process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the only process that writes logs, checkpoints, the model and plots."""
        return self.rank == 0


def init_distributed(device: str = "auto") -> Dist:
    """Join the process group that ``torchrun`` describes in the environment.

    ``WORLD_SIZE > 1`` (set by ``torchrun``) starts ``torch.distributed`` with NCCL when CUDA
    is used and gloo on the CPU (rendezvous from ``MASTER_ADDR`` / ``MASTER_PORT``, which
    ``torchrun`` sets, also across machines). Without it, or with a group already started
    by the caller, nothing is started.
    """
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    cuda = device != "cpu" and torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def barrier(d: Dist) -> None:
    """Wait for every process (nothing with one)."""
    if d.world > 1:
        dist.barrier()
