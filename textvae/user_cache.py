"""The user's cache folder, shared by what textvae keeps between commands
(word_cache.py's word tries, nn/native_kernels.py's compiled library).

It is ``TEXTVAE_CACHE_DIR``, else ``$XDG_CACHE_HOME/textvae`` or
``~/.cache/textvae``; ``TEXTVAE_CACHE_DIR=off`` turns caching off. A file
there is read only if this user owns it and its folder and no one else may
write either, and it is checked on the open file (``open_trusted``), so it
cannot be swapped between the check and the read; each is written whole (a
private temporary file, then a rename).
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Optional

log = logging.getLogger("textvae")


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


def _private(info: os.stat_result) -> bool:
    owner = not hasattr(os, "getuid") or info.st_uid == os.getuid()
    return owner and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def open_trusted(path: Path) -> Optional[BinaryIO]:
    """``path`` opened for reading if it is this user's regular file (not a
    link) that no one else may write, in a folder of this user's that no one
    else may write: a shared folder's files are not used. None where it is
    missing or not trusted; checked on the opened file itself."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        handle = os.open(path, flags)
    except OSError:
        return None
    try:
        info = os.fstat(handle)
        if stat.S_ISREG(info.st_mode) and _private(info) and _private(path.parent.stat()):
            return os.fdopen(handle, "rb")
    except OSError:
        pass
    os.close(handle)
    return None


def store(path: Path, write: Callable[[BinaryIO], None], what: str) -> None:
    """``write`` into a private temporary file beside ``path``, then rename it
    to ``path``; a failure (an unusable folder, a failing write) is logged as
    "``what`` could not be cached in ..." and passed over, with no partial file left."""
    partial = None
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=".tmp")
        with os.fdopen(handle, "wb") as out:
            write(out)
        os.replace(partial, path)
        partial = None
    except Exception as error:  # noqa: BLE001 (torch.save reports a failed write as RuntimeError)
        log.debug(f"{what} could not be cached in {path.parent} ({error})")
    finally:
        if partial is not None:
            Path(partial).unlink(missing_ok=True)
