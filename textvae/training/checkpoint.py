"""Resumable training checkpoints, written atomically.

``RUN/checkpoint/`` holds the weights (safetensors), the optimiser and
random-number states (plain tensors and numbers saved with ``torch.save`` and
read back with ``weights_only=True``: nothing pickled is ever loaded) and the
trainer's typed state (``state.json``, ``state.py``).

A checkpoint is a folder written next to its final place and renamed into it,
so a process killed at any moment leaves either the old checkpoint or the new
one, never half of one (``run_folder.find_checkpoint`` finds whichever is
complete). A write that fails (disk full, a read-only folder, non-finite
weights) leaves the previous checkpoint as it was and no temporary folder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..errors import TextVAEError
from ..run_folder import (CHECKPOINT_DIR, OPTIMIZER_FILE, STATE_FILE, WEIGHTS_FILE, check_finite, find_checkpoint,
                          load_weights, read_json, write_error, write_safetensors)
from .state import TrainState


def rng_state() -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
    """Write ``RUN/checkpoint/`` (weights, optimiser, RNG, trainer state)."""
    check_finite(model, f"refusing to write a checkpoint in {run_dir} (the last one is kept)")
    final = run_dir / CHECKPOINT_DIR
    tmp = run_dir / (CHECKPOINT_DIR + ".tmp")
    old = run_dir / (CHECKPOINT_DIR + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        write_safetensors(model, tmp / WEIGHTS_FILE)
        torch.save({"optimizer": optimizer.state_dict(), "rng": rng_state()}, tmp / OPTIMIZER_FILE)
        (tmp / STATE_FILE).write_text(json.dumps(state.to_dict(), indent=2))
        _fsync_dir(tmp)
    except BaseException as error:  # disk full, a read-only folder, Ctrl-C twice: no half checkpoint stays
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, OSError):
            raise write_error(f"a checkpoint in {run_dir}", error) from None
        raise
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    initial: Optional[TrainState] = None) -> TrainState:
    """Restore weights, optimiser and RNG from the checkpoint folder ``path``;
    return the trainer state (``initial`` fills what an older file lacks)."""
    load_weights(model, path / WEIGHTS_FILE)
    try:
        saved = torch.load(path / OPTIMIZER_FILE, weights_only=True)
        # The kernel choice is this process's, not the checkpoint's: a run saved
        # before the fused kernels (or on a device without them) resumes with
        # what build_optimizer chose here.
        for group in saved["optimizer"]["param_groups"]:
            group["fused"] = optimizer.defaults.get("fused")
        optimizer.load_state_dict(saved["optimizer"])
        set_rng_state(saved["rng"])
    except Exception as error:  # torch.load and load_state_dict raise many types
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TextVAEError(f"{path / OPTIMIZER_FILE} does not hold this run's optimiser state: {first[:200]}") \
            from None
    return TrainState.from_dict(read_json(path / STATE_FILE), initial)


def read_state(run_dir: Path) -> TrainState:
    """The trainer state of a run's newest checkpoint, without loading anything else."""
    return TrainState.from_dict(read_json(find_checkpoint(run_dir) / STATE_FILE))


def _fsync_dir(path: Path) -> None:
    for file in path.iterdir():
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
