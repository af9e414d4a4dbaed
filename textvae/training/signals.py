"""Stopping on a signal: Ctrl-C or SIGTERM ends training at the next step,
with a checkpoint; a second signal gives up at once.

Each process records what it received; the loop stops on the signal that
any rank received, agreed at each step (torchrun forwards a signal to every
worker, but not at the same step).
"""

from __future__ import annotations

import contextlib
import signal
from typing import Iterator, Optional

from . import distributed

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    def __init__(self) -> None:
        self.received: Optional[int] = None  # what this process received
        self.agreed: Optional[int] = None  # what some rank received, as of the last ``poll``

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """The handler for SIGINT and SIGTERM while the block runs, the previous ones after."""
        previous = {sig: signal.signal(sig, self.handle) for sig in SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle(self, signum: int, frame) -> None:
        if self.received is not None:  # second signal: give up at once
            raise KeyboardInterrupt
        self.received = signum

    def poll(self) -> Optional[int]:
        """The signal that stops the run at this step, the same on every rank (None: go on)."""
        self.agreed = distributed.max_over_ranks(self.received or 0) or None
        return self.agreed
