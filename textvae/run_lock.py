"""An exclusive lock on a run folder while a process trains it.

``textvae train`` (and ``--resume``, and the MNIST command) hold
``RUN/train.lock`` from before they write anything in RUN until they exit:
a second process that would train the same folder gets one error line
naming the first and touches nothing. The lock is an ``fcntl.flock`` on that
file, so the kernel releases it however the process ends (an error, a
signal, ``kill -9``); the file, which says who holds it (process id and
host), is removed on a normal release. A file left by a process that died is
stale: the next process takes the lock over and says so.

At the bottom of the package (it imports only ``errors``).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Optional

from .errors import TextVAEError

log = logging.getLogger("textvae")

LOCK_FILE = "train.lock"


def describe(holder: dict) -> str:
    """"process 1234" or "process 1234 on host gpu7" (another machine)."""
    pid, host = holder.get("pid", "?"), holder.get("host")
    return f"process {pid}" + (f" on host {host}" if host and host != socket.gethostname() else "")


def busy(run_dir: Path, owner: dict) -> TextVAEError:
    """The one error line for a folder that another process trains."""
    return TextVAEError(f"{run_dir} is being trained by {describe(owner)}; wait for it to finish (or stop it) "
                        "before training this folder")


def refuse_if_held(run_dir: Path) -> None:
    """One error line if another process holds ``run_dir``'s lock now."""
    owner = holder(run_dir)
    if owner:
        raise busy(run_dir, owner)


def _read(fd: int) -> dict:
    try:
        raw = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
    except (ValueError, OSError):
        return {}
    return raw if isinstance(raw, dict) else {}


def holder(run_dir: Path) -> Optional[dict]:
    """Who holds the lock on ``run_dir`` now ({"pid", "host"}), or None if no one does."""
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _owner(fd)
    finally:
        os.close(fd)  # also drops the shared lock, if taken
    return None


def _owner(fd: int) -> dict:
    """The holder's record; the holder writes it just after locking, so wait a moment for it."""
    for _ in range(20):
        found = _read(fd)
        if found:
            return found
        time.sleep(0.05)
    return {"pid": "?"}


class RunLock:
    """``with RunLock(run_dir):`` trains ``run_dir`` alone (the folder must exist)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.path = Path(run_dir), Path(run_dir) / LOCK_FILE
        self.fd: Optional[int] = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        while self.fd is None:
            try:
                # Read-only: flock needs no more, and nothing stays open for writing (a
                # folder can then be remounted read-only under a run).
                fd = os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o644)
            except OSError as error:
                raise TextVAEError(f"cannot lock {self.run_dir} for training: {error.strerror or error}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _owner(fd)
                os.close(fd)
                raise busy(self.run_dir, owner) from None
            if not self._still_there(fd):  # the holder released (and removed) the file meanwhile: again
                os.close(fd)
                continue
            previous = _read(fd)
            if previous.get("pid") not in (None, os.getpid()):
                log.info(f"{self.run_dir}: taking over the lock left by {describe(previous)}, which no longer runs")
            record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": round(time.time())})
            try:
                self.path.write_text(record + "\n")  # the same file (inode), so the lock stands
            except OSError as error:
                os.close(fd)
                raise TextVAEError(f"cannot lock {self.run_dir} for training: {error.strerror or error}") from None
            self.fd = fd

    def _still_there(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def release(self) -> None:
        """Remove the lock file, then unlock (in that order: a process that
        opened the old file in between sees it gone and tries again)."""
        if self.fd is None:
            return
        try:
            if self._still_there(self.fd):
                self.path.unlink()
        except OSError:
            pass  # a read-only folder: the kernel's lock goes with the descriptor all the same
        os.close(self.fd)
        self.fd = None
