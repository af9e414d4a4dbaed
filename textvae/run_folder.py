"""Run folders: their file names, weight files, the check that a folder is a
run of the right kind, and atomic writes.

A run folder (text or image) holds ``config.json`` (the whole configuration;
``"kind": "image"`` at the top for the MNIST model, no kind for text),
``model.safetensors`` (the best weights by validation ELBO), ``tokenizer/``
(text), ``checkpoint/`` (written by ``training/checkpoint.py`` for an exact
resume), ``metrics.jsonl`` (one JSON record per log line) and, after an
evaluation, ``eval_SPLIT.json``.

At the bottom of the package (it imports only ``errors``): the models, the
evaluation, the trainer and the commands all read and write run folders
through it. Every file another process may read is written to a temporary
name and renamed into place, so a killed process never leaves half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import load_model, save_model
from torch import nn

from .errors import TextVAEError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoint"  # also checkpoint.tmp/ while one is written, checkpoint.old/ between two renames
STATE_FILE = "state.json"  # in checkpoint/: the trainer's typed state (training/state.py)
OPTIMIZER_FILE = "optimizer.pt"  # in checkpoint/: optimiser and random-number states
KINDS = {"text": "a text VAE", "image": "an MNIST VAE"}  # config.json's "kind" -> what the messages call it


def eval_file(split: str, suffix: str = "") -> str:
    """``eval_test.json``, or ``eval_test_limit500_seed0.json`` for a subset."""
    return f"eval_{split}{suffix}.json"


# ----------------------------------------------------------------- writes
def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: Path, value: Any) -> None:
    """Indented JSON with a final newline, renamed into place."""
    write_text_atomic(path, json.dumps(value, indent=2) + "\n")


def save_weights(model: nn.Module, path: Path) -> None:
    """Atomic safetensors write (tied weights are stored once)."""
    tmp = path.with_name(path.name + ".tmp")
    save_model(model, str(tmp))
    os.replace(tmp, path)


def load_weights(model: nn.Module, path: Path) -> None:
    """Every weight of ``model`` from a safetensors file; a one-line error if any is missing or extra."""
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


def weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from a safetensors file's header alone (8 bytes of
    length, then that much JSON), without reading the weights."""
    try:
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if not 0 < size <= 100 * 2**20:
                raise ValueError(f"header of {size} bytes")
            header = json.loads(handle.read(size))
        return {name: tuple(entry["shape"]) for name, entry in header.items() if name != "__metadata__"}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise TextVAEError(f"{path} is not a safetensors file ({error})") from None


# ------------------------------------------------------------------ reads
def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        raise TextVAEError(f"{path} is not valid JSON") from None


def read_kind(directory: Path) -> str:
    """``text`` or ``image``: what the run folder's ``config.json`` says it holds."""
    raw = read_json(directory / CONFIG_FILE)
    if not isinstance(raw, dict):
        raise TextVAEError(f"{directory / CONFIG_FILE} is not valid JSON")
    return raw.get("kind", "text")


def check_run_dir(directory: Path, kind: str, weights: bool = True) -> None:
    """Raise a one-line TextVAEError unless ``directory`` is a run folder of
    ``kind`` (``text`` or ``image``) with its files (``weights=False``: a run
    that may not have validated yet, as ``--resume`` accepts)."""
    if not directory.is_dir():
        raise TextVAEError(f"{directory} is not a run directory (no such folder)")
    needed = (CONFIG_FILE,) + ((WEIGHTS_FILE,) if weights else ()) + ((TOKENIZER_DIR,) if kind == "text" else ())
    for name in needed:
        if not (directory / name).exists():
            raise TextVAEError(f"{directory} is not a textvae run directory (no {name})")
    found = read_kind(directory)
    if found != kind:
        raise TextVAEError(f"{directory} holds a {found} model, not {KINDS[kind]}")


def find_checkpoint(run_dir: Path) -> Path:
    """The newest complete checkpoint (``checkpoint/``, or ``checkpoint.old/``
    if a process died between the two renames)."""
    for name in (CHECKPOINT_DIR, CHECKPOINT_DIR + ".old"):
        path = run_dir / name
        if (path / STATE_FILE).exists() and (path / OPTIMIZER_FILE).exists():
            return path
    raise TextVAEError(f"{run_dir} has no training checkpoint to resume from")


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of ``metrics.jsonl``, in order."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        raise TextVAEError(f"{run_dir} has no {METRICS_FILE} (is it a run directory?)")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise TextVAEError(f"{path} line {number} is not JSON") from None
    return records


# ---------------------------------------------------------- metrics.jsonl
def append_metrics(run_dir: Path, record: dict) -> None:
    with open(run_dir / METRICS_FILE, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop the records written after ``step`` (by a session that went on past its last checkpoint)."""
    path = run_dir / METRICS_FILE
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))
