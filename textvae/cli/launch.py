"""The train/resume flow that ``textvae train`` and ``textvae mnist train`` share.

Both hold the run folder's lock (``run_lock.py``) from before they write in
it until they exit, so a second process that would train the same folder
gets one error line and touches nothing.

A new run refuses an existing ``--out`` (``--overwrite`` replaces a run
folder), has the command build its config, data, model, run folder and
trainer, and removes a folder whose run never started. ``--resume RUN``
checks the folder, rebuilds the model from the run's config (the checkpoint
supplies every weight) and goes on from the checkpoint; a run stopped before
its first checkpoint starts again from step 0 with its saved config. Only
``train.*`` overrides are accepted on resume, and of those only the ones the
run can honour (``resume_overrides``); the ones that change something are
said on stderr and recorded in ``config.json``. Both then train and report
alike. What differs between text and images is a ``RunKind``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..base import BaseVAE
from ..config_tree import apply_overrides
from ..errors import TextVAEError
from ..run_folder import (CHECKPOINT_DIR, CONFIG_FILE, METRICS_FILE, WEIGHTS_FILE, check_run_dir, find_checkpoint,
                          read_json, truncate_metrics)
from ..run_lock import LOCK_FILE, RunLock, refuse_if_held
from ..training import distributed
from ..training.trainer import Trainer

log = logging.getLogger("textvae")
FLAGS = {"data": "--data PATH", "out": "--out RUN"}
# train.* fields a resumed run cannot take up: why, for the error line.
FIXED_ON_RESUME = {
    "optimizer": "the checkpoint holds the other optimiser's state",
    "batch_size": "the checkpoint's data position counts batches of the old size",
    "seed": "the data order and random streams of the run follow it",
    "aggressive": "the aggressive phase's state is the checkpoint's",
    "ae_pretrain_epochs": "the phases of the run follow it",
    "ae_pretrain_fraction": "the phases of the run follow it",
}


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
    # The model a new run starts with, from a run folder's files (default: model_class.from_folder).
    initial_model: Optional[Callable[[Path, Any], BaseVAE]] = None


def train(args: argparse.Namespace, kind: RunKind) -> int:
    """Run ``textvae [mnist] train``: exit status 0, or 130 when a signal stopped it (with a checkpoint)."""
    cuda_device = distributed.init_from_env() if kind.distributed else None
    with contextlib.ExitStack() as held:  # the run folder's lock, released on any exit
        try:
            trainer = resume_run(args, kind, cuda_device, held) if args.resume \
                else new_run(args, kind, cuda_device, held)
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


def lock(run_dir: Path, held: contextlib.ExitStack) -> None:
    """Hold ``run_dir``'s lock until ``held`` closes (rank 0 writes the folder; it alone locks)."""
    if distributed.rank() == 0:
        held.enter_context(RunLock(run_dir))


# ------------------------------------------------------------------ new
def new_run(args: argparse.Namespace, kind: RunKind, cuda_device: Optional[torch.device],
            held: contextlib.ExitStack) -> Trainer:
    if any(not getattr(args, name) for name in kind.required):
        needs = " and ".join(FLAGS[name] for name in kind.required)
        raise TextVAEError(f"{kind.command.removeprefix('textvae ')} needs {needs} (or --resume RUN)")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise TextVAEError(f"{out} exists and is not a folder; choose another --out")
    existed = out.exists()
    if existed and any(p.name != LOCK_FILE for p in out.iterdir()):
        check_replaceable(out, getattr(args, "overwrite", False))
    distributed.barrier()  # every rank has looked at --out before rank 0 creates it
    if distributed.rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        lock(out, held)  # before anything in the folder changes
        if existed and getattr(args, "overwrite", False):
            clear(out)
            log.info(f"--overwrite: the previous contents of {out} removed")
    try:
        return kind.start(args, out, cuda_device)
    except BaseException:
        # A run that never started leaves nothing behind (a folder that was there stays, emptied).
        if distributed.rank() == 0 and out.exists() and not (out / CHECKPOINT_DIR).exists():
            held.close()
            if existed:
                clear(out)
            else:
                shutil.rmtree(out, ignore_errors=True)
        raise


def check_replaceable(out: Path, overwrite: bool) -> None:
    """Refuse an existing, non-empty ``--out`` unless ``--overwrite`` may replace it (a run folder no one trains)."""
    refuse_if_held(out)
    names = {p.name for p in out.iterdir()}
    if not names & {CONFIG_FILE, CHECKPOINT_DIR, METRICS_FILE, WEIGHTS_FILE, LOCK_FILE}:
        raise TextVAEError(f"{out} already exists and is not a run folder; choose another --out")
    if overwrite:
        return
    if CHECKPOINT_DIR in names or CHECKPOINT_DIR + ".old" in names:
        raise TextVAEError(f"{out} already exists; continue it with --resume {out}, replace it with --overwrite, "
                           "or choose another --out")
    again = f"start it again from step 0 with --resume {out} or " if CONFIG_FILE in names else ""
    raise TextVAEError(f"{out} holds a run stopped before its first checkpoint; {again}replace it with --overwrite")


def clear(folder: Path) -> None:
    """Remove what ``folder`` holds, except the lock file."""
    for path in folder.iterdir():
        if path.name == LOCK_FILE:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


# --------------------------------------------------------------- resume
def resume_run(args: argparse.Namespace, kind: RunKind, cuda_device: Optional[torch.device],
               held: contextlib.ExitStack) -> Trainer:
    run_dir = Path(args.resume)
    if args.out or args.config or getattr(args, "tokenizer", None) or getattr(args, "overwrite", False):
        raise TextVAEError("--resume continues a run as configured; only --data and --set train.* may be given")
    if (run_dir / LOCK_FILE).exists() and not (run_dir / CONFIG_FILE).exists():
        refuse_if_held(run_dir)
        raise TextVAEError(f"{run_dir} was stopped while it was being set up (it has no {CONFIG_FILE}); start it "
                           f"again with `{kind.command} --out {run_dir} --overwrite ...`")
    check_run_dir(run_dir, kind.name, weights=False)
    lock(run_dir, held)
    saved, config = resume_config(read_json(run_dir / CONFIG_FILE), args, kind)
    try:
        find_checkpoint(run_dir)
        fresh = False
    except TextVAEError:
        fresh = True
        log.info(f"{run_dir} stopped before its first checkpoint: training it again from step 0 with its saved "
                 "config")
    if fresh:
        torch.manual_seed(config.train.seed)  # the initial weights of an uninterrupted run
        model = (kind.initial_model or kind.model_class.from_folder)(run_dir, config)
    else:
        model = kind.model_class.from_folder(run_dir, config)  # the checkpoint supplies every weight
    trainer = kind.trainer(model, config, run_dir, args.data, cuda_device)
    if fresh:
        if distributed.rank() == 0 and (run_dir / METRICS_FILE).exists():
            truncate_metrics(run_dir, -1)  # the records of the session that died
    else:
        trainer.resume()
    honour_changes(trainer, saved, config.train)
    distributed.barrier()  # every rank has read config.json before rank 0 rewrites it
    if distributed.rank() == 0:
        config.save(run_dir / CONFIG_FILE)  # the new settings are part of the run's record
    return trainer


def resume_config(raw: Any, args: argparse.Namespace, kind: RunKind) -> tuple[Any, Any]:
    """The run's saved train settings, and its config with the ``--set`` overrides a resumed run can
    honour; one error line for any other (a field outside ``train.*``, or one of FIXED_ON_RESUME set
    to a new value)."""
    overrides = list(args.overrides) + kind.overrides(args)
    for text in overrides:
        key = text.split("=", 1)[0].strip()
        if not key.startswith("train."):
            raise TextVAEError(f"with --resume, {key} cannot change: the checkpoint's weights and data position "
                               "follow the run's model, tokenizer and data (only train.* fields may be overridden, "
                               "e.g. train.max_steps, train.lr)")
    config_class = kind.model_class.CONFIG_CLASS
    before = config_class.from_dict(raw).train
    config = config_class.from_dict(apply_overrides(raw, overrides, config_class))
    for name, why in FIXED_ON_RESUME.items():
        if getattr(before, name) != getattr(config.train, name):
            raise TextVAEError(f"with --resume, train.{name} cannot change ({getattr(before, name)!r} -> "
                               f"{getattr(config.train, name)!r}): {why}; start a new run for that")
    return before, config


def honour_changes(trainer: Trainer, before: Any, after: Any) -> None:
    """Put the changed train.* settings into effect from the resumed step, and say which changed.
    Most are read from the config as the run goes; the learning rate and the optimiser's own
    settings live in the trainer state and the optimiser, restored from the checkpoint."""
    changed = {name: (old, getattr(after, name)) for name, old in vars(before).items() if old != getattr(after, name)}
    if "lr" in changed:
        trainer.set_lr(after.lr)  # the new base rate; plateau decays go on from it
    for group in trainer.optimizer.param_groups:
        group["weight_decay"] = after.weight_decay
        if "momentum" in group:
            group["momentum"] = after.momentum
    if changed and trainer.is_main:
        said = ", ".join(f"train.{name} {old!r} -> {new!r}" for name, (old, new) in changed.items())
        log.info(f"settings changed from step {trainer.state.step} on: {said}")
