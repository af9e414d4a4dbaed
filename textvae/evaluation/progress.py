"""Progress of a long evaluation pass, shared by the text and image models.

On a terminal, a tqdm bar; elsewhere (a log file, a pipe), one log line at
every tenth of the way with the time spent and an estimate of the time left,
so that an hour-long importance-weighted NLL is not silent. Progress is
counted in units of work (tokens for text, whose batches come sorted by
length, so that sentences would make the estimate too hopeful; images for
MNIST).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable

log = logging.getLogger("textvae")


class LogProgress:
    """``update(n)`` adds n units of work done; a line is logged when a new tenth of ``total`` is reached."""

    def __init__(self, total: int, desc: str, unit: str, clock: Callable[[], float] = time.perf_counter) -> None:
        self.total, self.desc, self.unit, self.clock = total, desc, unit, clock
        self.done, self.start, self.next_tenth = 0, clock(), 1

    def update(self, n: int) -> None:
        self.done += n
        tenth = self.done * 10 // max(1, self.total)
        if tenth < self.next_tenth:
            return
        self.next_tenth = tenth + 1
        spent = self.clock() - self.start
        left = spent * max(0, self.total - self.done) / self.done
        log.info("%s: %s/%s %s (%d%%), %.1f min, about %.1f min left", self.desc, f"{self.done:,}",
                 f"{self.total:,}", self.unit, 100 * self.done // max(1, self.total), spent / 60, left / 60)

    def close(self) -> None:
        pass


def progress(total: int, desc: str, unit: str):
    """A bar on a terminal, ``LogProgress`` otherwise; both take ``update(n)`` and ``close()``."""
    if not sys.stderr.isatty():
        return LogProgress(total, desc, unit)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, unit=unit, leave=False)
