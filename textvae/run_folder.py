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
name and renamed into place, so a killed process never leaves half a file; a
write that fails (disk full, a read-only folder) removes its temporary file,
keeps the file it would have replaced and is one error line. Weights are
checked to be finite before every write and after every read.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from .errors import TextVAEError

log = logging.getLogger("textvae")

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoint"  # also checkpoint.tmp/ while one is written, checkpoint.old/ between two renames
STATE_FILE = "state.json"  # in checkpoint/: the trainer's typed state (training/state.py)
OPTIMIZER_FILE = "optimizer.pt"  # in checkpoint/: optimiser and random-number states
KINDS = {"text": "a text VAE", "image": "an MNIST VAE"}  # config.json's "kind" -> what the messages call it


NORMAL_PRIOR = "_normal_prior"  # eval_file's suffix for `textvae eval --prior normal`


def eval_file(split: str, suffix: str = "") -> str:
    """``eval_test.json``, ``eval_test_normal_prior.json`` under N(0, I)
    (suffix NORMAL_PRIOR), or ``eval_test_limit500_seed0.json`` for a subset."""
    return f"eval_{split}{suffix}.json"


# ----------------------------------------------------------------- writes
@contextlib.contextmanager
def replacing(path: Path, what: str = "") -> Iterator[Path]:
    """A temporary name beside ``path`` (a file or a folder) to write to;
    renamed into place when the block ends. If the block fails, the temporary
    is removed and ``path`` is left as it was; an OSError (disk full, a
    read-only folder) becomes one error line."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as error:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if isinstance(error, OSError):
            raise write_error(what or str(path), error) from None
        raise


def write_error(what: str, error: OSError) -> TextVAEError:
    """One line for a failed write: what, why (``No space left on device``), and that nothing was replaced."""
    return TextVAEError(f"cannot write {what}: {error.strerror or error}; the previous version (if any) is kept")


def check_output_file(path: Path, flag: str = "--json") -> None:
    """Fail before any work when ``path`` cannot become a file: its folder is
    missing, or it is a folder itself."""
    if path.is_dir():
        raise TextVAEError(f"{flag} {path} is a folder; give a file name")
    if not path.parent.is_dir():
        raise TextVAEError(f"{flag} {path}: folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise TextVAEError(f"{flag} {path}: folder {path.parent} is not writable")


def write_text_atomic(path: Path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: Path, value: Any) -> None:
    """Indented JSON with a final newline, renamed into place."""
    write_text_atomic(path, json.dumps(value, indent=2) + "\n")


def save_weights(model: nn.Module, path: Path) -> None:
    """Atomic safetensors write (tied weights are stored once); non-finite weights are refused."""
    check_finite(model, f"refusing to write {path}")
    with replacing(path) as tmp:
        write_safetensors(model, tmp)


def write_safetensors(model: nn.Module, path: Path) -> None:
    """``safetensors.torch.save_model``, whose I/O failures (a SafetensorError
    that says "os error 28") become the OSError they are."""
    try:
        save_model(model, str(path))
    except OSError:
        raise
    except Exception as error:
        found = re.search(r"os error (\d+)", str(error))
        if not found:
            raise
        raise OSError(int(found.group(1)), os.strerror(int(found.group(1))), str(path)) from None


DIVERGED = "the training diverged (try a lower train.lr or train.grad_clip)"


def check_finite(model: nn.Module, doing: str, why: str = DIVERGED) -> None:
    """One error line when a floating-point weight or buffer of ``model`` holds NaN or inf."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise TextVAEError(f"{doing}: weight {name} is not finite (NaN or inf); {why}")


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
    check_finite(model, f"cannot use the weights in {path}", "the file is damaged or its training diverged")


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
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise TextVAEError(f"{path} is not valid JSON") from None
    except OSError as error:
        raise TextVAEError(f"cannot read {path}: {error.strerror or error}") from None


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
    return [record for _, record in _metric_lines(path)]


def _metric_lines(path: Path) -> list[tuple[str, dict]]:
    """(line, record) for each line of ``metrics.jsonl``. A torn last line (a
    process killed while appending it) is skipped with a note; any other line
    that is not a JSON record is an error."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as error:
        raise TextVAEError(f"cannot read {path}: {error.strerror or error}") from None
    out = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError("not a record")
        except (ValueError, RecursionError):
            if number == len(lines):
                log.warning(f"{path}: skipping its last line, cut short (by a process killed while writing it?)")
                break
            raise TextVAEError(f"{path} line {number} is not a JSON record") from None
        out.append((line, record))
    return out


# ---------------------------------------------------------- metrics.jsonl
def append_metrics(run_dir: Path, record: dict) -> None:
    try:
        with open(run_dir / METRICS_FILE, "a") as handle:
            handle.write(json.dumps(record) + "\n")
    except OSError as error:
        raise write_error(str(run_dir / METRICS_FILE), error) from None


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop the records written after ``step`` (by a session that went on past
    its last checkpoint) and a torn last line; rewritten atomically."""
    path = run_dir / METRICS_FILE
    if path.exists():
        kept = [line for line, record in _metric_lines(path) if record["step"] <= step]
        write_text_atomic(path, "".join(line + "\n" for line in kept))
