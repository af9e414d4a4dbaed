"""Built-in models: pretrained sentence VAEs shipped inside the package.

Each lives in ``textvae/pretrained/NAME/`` as an ordinary run folder
(``config.json``, ``tokenizer/``, ``model.safetensors``) plus ``card.json``
(what it is, how it was trained, its measured figures). Wherever a RUN is
accepted, a built-in name works too; an existing path always wins.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import TextVAEError

PRETRAINED_DIR = Path(__file__).parent / "pretrained"
CARD_FILE = "card.json"


def builtin_names() -> list[str]:
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if (p / "config.json").exists())


def resolve_run(run: str | Path) -> Path:
    """A run folder for ``run``: the path itself if it exists, else the
    built-in model of that name; anything else is one clear error."""
    path = Path(run)
    if path.exists():
        return path
    name = str(run)
    if name in builtin_names():
        return PRETRAINED_DIR / name
    names = ", ".join(builtin_names()) or "none installed"
    if len(path.parts) > 1 or name.startswith((".", "~")):  # written as a path: it is a missing folder
        raise TextVAEError(f"{path} is not a run directory (no such folder)")
    raise TextVAEError(f"{name} is neither a run folder nor a built-in model (built-in models: {names})")


def builtin_or_path(run: str | Path) -> Path:
    """``run`` as a path, or the built-in model of that name where no such
    path exists (no error either way: for commands that report on a folder
    that may not exist yet, such as ``info``)."""
    path = Path(run)
    return PRETRAINED_DIR / str(run) if not path.exists() and str(run) in builtin_names() else path


def is_builtin(run_dir: Path) -> bool:
    """Whether ``run_dir`` lies inside the installed package's built-in models (read-only)."""
    return run_dir.resolve().is_relative_to(PRETRAINED_DIR.resolve())


def model_card(name: str) -> dict[str, Any]:
    """The card of built-in model ``name`` (empty where it has none)."""
    path = resolve_run(name) / CARD_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise TextVAEError(f"cannot read {path}: {error}") from None
