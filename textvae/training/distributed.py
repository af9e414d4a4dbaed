"""Data-parallel training with PyTorch's own engine (torchrun + DDP).

``torchrun --nproc_per_node N -m textvae train ...`` sets the environment
that ``init_from_env`` reads; gloo is used on CPU and NCCL on CUDA. Each rank
trains on every N-th batch (data.BucketBatchSampler), gradients are averaged
by DistributedDataParallel, rank 0 alone writes files, and every rank runs
the same validation on the whole validation split, so their figures agree
without a reduction.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def init_from_env() -> torch.device | None:
    """Join the process group that torchrun describes; returns this rank's
    CUDA device when there is one (None on CPU or outside torchrun)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return None
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        return torch.device("cuda", local)
    dist.init_process_group("gloo")
    return None


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Average scalar training figures over the ranks (for logging)."""
    if not is_distributed():
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(tensor)
    return {k: float(v) / world_size() for k, v in zip(keys, tensor)}


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()
