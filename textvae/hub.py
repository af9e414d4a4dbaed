"""Is the Hugging Face hub reachable? Asked once, answered within seconds.

A name that is not a local path (a tokenizer or backbone on the hub) would
otherwise make the hub client retry for most of a minute when the machine is
offline, printing each retry. When the hub cannot be reached we load with
``local_files_only=True`` instead: a model already in the local cache still
loads, anything else fails at once with our one error line.
"""

from __future__ import annotations

import os
import socket
import threading
from functools import lru_cache
from urllib.parse import urlparse

PROBE_SECONDS = 2.0
OFFLINE_VALUES = {"1", "on", "yes", "true"}


def offline_forced() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in OFFLINE_VALUES


@lru_cache(maxsize=None)
def hub_reachable(endpoint: str | None = None, timeout: float = PROBE_SECONDS) -> bool:
    """True when a TCP connection to the hub's endpoint opens within ``timeout``
    seconds (name resolution included, which ``socket`` cannot bound itself)."""
    if offline_forced():
        return False
    url = urlparse(endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "", url.port or (443 if url.scheme != "http" else 80)
    answer: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                answer.append(True)
        except OSError:
            answer.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answer and answer[0])


def local_only(name: str) -> bool:
    """Load ``name`` from local files only: it is not a path and the hub is out of reach."""
    from pathlib import Path

    return not Path(name).exists() and not hub_reachable()
