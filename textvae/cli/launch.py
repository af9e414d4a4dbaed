"""The train/resume flow that ``textvae train`` and ``textvae mnist train`` share.

A new run refuses an existing ``--out``, has the command build its config,
data, model, run folder and trainer, and removes a folder whose run never
started. ``--resume RUN`` checks the folder, accepts only ``train.*``
overrides, rebuilds the model from the run's config (the checkpoint supplies
every weight), goes on from the checkpoint and records the new limits in
``config.json``. Both then train and report alike. What differs between text
and images is a ``RunKind``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..config_tree import apply_overrides
from ..errors import TextVAEError
from ..base import BaseVAE
from ..run_folder import CHECKPOINT_DIR, CONFIG_FILE, check_run_dir, find_checkpoint, read_json
from ..training import distributed
from ..training.trainer import Trainer

log = logging.getLogger("textvae")
FLAGS = {"data": "--data PATH", "out": "--out RUN"}


@dataclass
class RunKind:
    name: str  # config.json's kind: "text" or "image"
    command: str  # what trains it ("textvae train"), for messages
    unit: str  # one example: "sentence" or "image"
    model_class: type[BaseVAE]  # TextVAE or ConvVAE; its CONFIG_CLASS is the config tree
    # A new run: (args, out folder, CUDA device under torchrun) -> a trainer, the folder created.
    start: Callable[[argparse.Namespace, Path, Optional[torch.device]], Trainer]
    # A trainer for (model, config, run folder, --data or None, CUDA device), as resuming needs.
    trainer: Callable[[BaseVAE, Any, Path, Optional[str], Optional[torch.device]], Trainer]
    required: tuple[str, ...] = ("out",)  # flags a new run needs
    overrides: Callable[[argparse.Namespace], list[str]] = field(default=lambda args: [])  # from other flags
    distributed: bool = False  # joins torchrun's process group (the text data shard by rank)


def train(args: argparse.Namespace, kind: RunKind) -> int:
    """Run ``textvae [mnist] train``: exit status 0, or 130 when a signal stopped it (with a checkpoint)."""
    cuda_device = distributed.init_from_env() if kind.distributed else None
    try:
        trainer = resume_run(args, kind, cuda_device) if args.resume else new_run(args, kind, cuda_device)
        state = trainer.fit()
    finally:
        distributed.shutdown()
    if trainer.interrupted:
        return 130
    if distributed.rank() == 0:
        beta = trainer.objective.kl_weight
        measure = "-ELBO" if beta == 1 else f"rec + {beta:g} KL"
        log.info(f"done at step {state.step}; best validation {measure} {state.saved_best:.3f} nats per {kind.unit}; "
                 f"model in {trainer.run_dir}")
    return 0


def new_run(args: argparse.Namespace, kind: RunKind, cuda_device: Optional[torch.device]) -> Trainer:
    if any(not getattr(args, name) for name in kind.required):
        needs = " and ".join(FLAGS[name] for name in kind.required)
        raise TextVAEError(f"{kind.command.removeprefix('textvae ')} needs {needs} (or --resume RUN)")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TextVAEError(f"{out} already exists; continue it with --resume {out} or choose another --out")
    existed = out.exists()
    distributed.barrier()  # every rank has looked at --out before rank 0 creates it
    try:
        return kind.start(args, out, cuda_device)
    except BaseException:
        # A run that never started leaves nothing behind (an empty folder of the user's stays).
        if distributed.rank() == 0 and out.exists() and not (out / CHECKPOINT_DIR).exists() \
                and not (existed and not any(out.iterdir())):
            shutil.rmtree(out, ignore_errors=True)
        raise


def resume_run(args: argparse.Namespace, kind: RunKind, cuda_device: Optional[torch.device]) -> Trainer:
    run_dir = Path(args.resume)
    check_run_dir(run_dir, kind.name, weights=False)
    find_checkpoint(run_dir)
    if args.out or args.config or getattr(args, "tokenizer", None):
        raise TextVAEError("--resume continues a run as configured; only --data and --set train.* may be given")
    if any(not o.startswith("train.") for o in args.overrides):
        raise TextVAEError("with --resume only train.* fields may be overridden (e.g. train.max_steps, train.epochs)")
    config_class = kind.model_class.CONFIG_CLASS
    raw = apply_overrides(read_json(run_dir / CONFIG_FILE), list(args.overrides) + kind.overrides(args), config_class)
    config = config_class.from_dict(raw)
    model = kind.model_class.from_folder(run_dir, config)  # the checkpoint supplies every weight
    trainer = kind.trainer(model, config, run_dir, args.data, cuda_device)
    trainer.resume()
    distributed.barrier()  # every rank has read config.json before rank 0 rewrites it
    if distributed.rank() == 0:
        config.save(run_dir / CONFIG_FILE)  # the new limits are part of the run's record
    return trainer
