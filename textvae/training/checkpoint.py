"""Weights and resumable training state, written atomically.

Weights are safetensors; the optimiser and random-number states are plain
tensors and numbers saved with ``torch.save`` and read back with
``weights_only=True``: nothing pickled is ever loaded.

A checkpoint is a folder written next to its final place and renamed into it,
so a process killed at any moment leaves either the old checkpoint or the new
one, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from ..errors import TextVAEError

CHECKPOINT_DIR = "checkpoint"


def save_weights(model: nn.Module, path: Path) -> None:
    """Atomic safetensors write (tied weights are stored once)."""
    tmp = path.with_name(path.name + ".tmp")
    save_model(model, str(tmp))
    os.replace(tmp, path)


def load_weights(model: nn.Module, path: Path) -> None:
    if not path.exists():
        raise TextVAEError(f"no weights at {path}")
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except Exception as error:
        raise TextVAEError(f"cannot load weights from {path}: {str(error).splitlines()[0]}") from None
    # A mixture prior is fitted after training (prior.py): checkpoints taken
    # before the fit have none, and it stays unfitted until refitted.
    missing = [name for name in missing if not name.startswith("prior.")]
    if missing or unexpected:
        raise TextVAEError(f"weights in {path} do not fit the config: missing {sorted(missing)[:3]}, "
                           f"unexpected {sorted(unexpected)[:3]}")


def rng_state() -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Write ``RUN/checkpoint/`` (weights, optimiser, RNG, trainer state)."""
    final = run_dir / CHECKPOINT_DIR
    tmp = run_dir / (CHECKPOINT_DIR + ".tmp")
    old = run_dir / (CHECKPOINT_DIR + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "rng": rng_state()}, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(run_dir: Path) -> Path:
    """The newest complete checkpoint (``checkpoint/``, or ``checkpoint.old/``
    if a process died between the two renames)."""
    for name in (CHECKPOINT_DIR, CHECKPOINT_DIR + ".old"):
        path = run_dir / name
        if (path / "state.json").exists() and (path / "optimizer.pt").exists():
            return path
    raise TextVAEError(f"{run_dir} has no training checkpoint to resume from")


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore weights, optimiser and RNG; return the trainer state."""
    load_weights(model, path / "model.safetensors")
    saved = torch.load(path / "optimizer.pt", weights_only=True)
    # The kernel choice is this process's, not the checkpoint's: a run saved
    # before the fused kernels (or on a device without them) resumes with
    # what build_optimizer chose here.
    for group in saved["optimizer"]["param_groups"]:
        group["fused"] = optimizer.defaults.get("fused")
    optimizer.load_state_dict(saved["optimizer"])
    set_rng_state(saved["rng"])
    return json.loads((path / "state.json").read_text())


def _fsync_dir(path: Path) -> None:
    for file in path.iterdir():
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
