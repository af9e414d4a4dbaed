"""The user's cache folder, shared by what textvae keeps between commands
(word_cache.py's word tries, nn/native_scoring.py's compiled kernel).

It is ``TEXTVAE_CACHE_DIR``, else ``$XDG_CACHE_HOME/textvae`` or
``~/.cache/textvae``; ``TEXTVAE_CACHE_DIR=off`` turns caching off. A file
there is used only if this user owns it and no one else may write it, and
each is written whole (a private temporary file, then a rename).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Optional


def cache_folder() -> Optional[Path]:
    """Where built things are kept (module docstring); None: off."""
    chosen = os.environ.get("TEXTVAE_CACHE_DIR")
    if chosen:
        return None if chosen.lower() == "off" else Path(chosen)
    try:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    except RuntimeError:  # no home folder
        return None
    return Path(base) / "textvae"


def trusted(path: Path) -> bool:
    """This user's regular file, which no one else may write (a shared folder's files are not loaded)."""
    info = path.stat()
    owner = not hasattr(os, "getuid") or info.st_uid == os.getuid()
    return stat.S_ISREG(info.st_mode) and owner and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
