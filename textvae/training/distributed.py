"""Data-parallel training with PyTorch's own engine (torchrun + DDP).

``torchrun --nproc_per_node N -m textvae train ...`` sets the environment
that ``init_from_env`` reads; gloo is used on CPU and NCCL on CUDA. Each rank
trains on every N-th batch (data.BucketBatchSampler), gradients are averaged
by DistributedDataParallel, rank 0 alone writes files, and every rank runs
the same validation on the whole validation split (buffers such as BN-VAE's
running statistics, which each rank updates from its own batches, are first
copied from rank 0) and then takes rank 0's figures, so that decisions made
on them (learning-rate decay, early stopping) agree even where kernels differ.

Several nodes need the run folder on a filesystem that every node sees: the
other ranks read the tokenizer that rank 0 writes, and all ranks read the
checkpoint on ``--resume``.
"""

from __future__ import annotations

import logging
import os
from typing import Iterable

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
    CUDA device when there is one (None on CPU or outside torchrun). Ranks
    other than 0 log only warnings and errors."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return None
    device = None
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    if rank() != 0:
        logging.getLogger("textvae").setLevel(logging.WARNING)
    return device


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _device() -> torch.device:
    """Where collective tensors live: NCCL reduces CUDA tensors only."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Average scalar training figures over the ranks (for logging)."""
    if not is_distributed():
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=_device())
    dist.all_reduce(tensor)
    return {k: float(v) / world_size() for k, v in zip(keys, tensor.tolist())}


def max_over_ranks(value: int) -> int:
    """The largest of the ranks' integers, on every rank (e.g. whether any
    rank has received a stop signal, so that all ranks stop at the same step)."""
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def from_main(value):
    """Rank 0's copy of a picklable value, on every rank."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def seed_step(seed: int, step: int) -> None:
    """Seed this rank's random stream for one training step from (seed, step,
    rank), under DDP only: the ranks draw different noise (dropout, word
    dropout, the latent samples), and a resumed run draws what an
    uninterrupted one would although the checkpoint holds rank 0's random
    state alone."""
    if is_distributed():
        value = ((seed * 1_000_003 + step) * 4099 + rank()) % 2**63
        torch.default_generator.manual_seed(value)  # torch.manual_seed reseeds every device too: far slower per step
        if dist.get_backend() == "nccl":
            torch.cuda.manual_seed(value)  # this rank's device


def broadcast_from_main(tensors: Iterable[torch.Tensor]) -> None:
    """Overwrite the tensors (a model's parameters or buffers) with rank 0's,
    in place. Every rank must pass the same tensors in the same order."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in tensors:
            dist.broadcast(tensor.detach(), src=0)  # detach shares the version counter (caches see the write)


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()

