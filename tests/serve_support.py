"""Helpers for the ``textvae serve`` tests: an explorer on the tiny trained
run, and a real server on 127.0.0.1 in a background thread."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Iterator


def make_explorer(run: Path, **map_settings):
    from textvae.model import TextVAE
    from textvae.serve import Explorer, Limits, MapSettings

    limits = Limits(max_n=8, max_steps=9, max_chars=100, max_sentences=6)
    return Explorer(TextVAE.from_pretrained(run), run, limits, MapSettings(**map_settings))


@contextlib.contextmanager
def running_server(app) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    import uvicorn

    from textvae.cli.serve import bind

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
