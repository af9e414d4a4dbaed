"""Intra-op threads that follow the machine's load.

torch's OpenMP workers spin while they wait for one another. Beside another
busy process, one of them is descheduled and the others spin for it: on the
2-core machine of the README's Speed section, training with both threads
beside one busy single-threaded process kept about a third of its idle
throughput, where losing a core explains a half. Sleeping at once instead of
spinning (``OMP_WAIT_POLICY=PASSIVE``) halves that loss but costs the idle
machine 13%. Running one thread per core that the others leave free costs
neither: the governor here measures, every few seconds, how many cores the
other processes kept busy (``/proc/stat`` minus this process's own CPU time)
and sets ``torch.set_num_threads`` to the rest, never above the count torch
had when it started (``OMP_NUM_THREADS``, an earlier ``torch.set_num_threads``).

It is what ``train.num_threads=0`` (the default) means; a positive
``train.num_threads`` fixes the count instead. The commands that compute
(``train``, ``eval``, ``sample``, ``reconstruct``...) install one for the
process (``govern``) and their loops call ``tick``; a Python user gets the
same with ``textvae.threads.govern()`` before a long job. It acts only where
it can measure (Linux) and on the CPU; torch's own count stands elsewhere.
Nothing is set at import: ``torch.set_num_threads`` works at any time, from
the thread that runs the computation (the loops call ``tick``).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable, Optional

import torch

log = logging.getLogger("textvae")

STAT = "/proc/stat"
FIRST_LOOK = 1.0  # seconds of measurement before the first decision
INTERVAL = 5.0  # seconds between later decisions


def busy_seconds(stat_path: str = STAT, cpus: Optional[set[int]] = None) -> Optional[float]:
    """CPU seconds spent busy (user, nice, system, irq, softirq) since boot on
    ``cpus`` (default: those this process may run on), by every process; None
    where ``/proc/stat`` cannot be read."""
    cpus = _affinity() if cpus is None else cpus
    try:
        with open(stat_path) as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    ticks, seen = 0, False
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[:7])
        ticks += user + nice + system + irq + softirq
        seen = True
    return ticks / os.sysconf("SC_CLK_TCK") if seen else None


def _affinity() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return set(range(os.cpu_count() or 1))


def threads_for(others: float, cores: int, ceiling: int) -> int:
    """Threads for this process when other processes keep ``others`` cores busy:
    one per core they leave free (to the nearest core), from 1 to ``ceiling``."""
    return max(1, min(ceiling, int(cores - others + 0.5)))


class ThreadGovernor:
    """Sets torch's intra-op threads from the other processes' load; ``tick``
    after each step (it measures only every ``interval`` seconds)."""

    def __init__(self, ceiling: Optional[int] = None, interval: float = INTERVAL, first_look: Optional[float] = None,
                 busy: Optional[Callable[[], Optional[float]]] = None, own: Callable[[], float] = time.process_time,
                 clock: Callable[[], float] = time.monotonic, cores: Optional[int] = None,
                 set_threads: Callable[[int], None] = torch.set_num_threads) -> None:
        self.ceiling = ceiling or torch.get_num_threads()
        self.cores = cores or len(_affinity())
        self._busy = busy or busy_seconds
        self.interval, self._own, self._clock, self._set = interval, own, clock, set_threads
        self.threads = self.ceiling
        self.used = {self.ceiling}  # every count it has run with
        self.others: Optional[float] = None  # cores the others kept busy over the last window
        self._last = self._read()
        self._wait = FIRST_LOOK if first_look is None else first_look
        self.active = self.ceiling > 1 and self._last is not None

    def _read(self) -> Optional[tuple[float, float, float]]:
        busy = self._busy()
        return None if busy is None else (self._clock(), busy, self._own())

    def tick(self) -> int:
        """Threads in use after this call (re-chosen once per interval)."""
        if not self.active:
            return self.threads
        now = self._clock()
        if now - self._last[0] < self._wait:
            return self.threads
        reading = self._read()
        if reading is None:
            self.active = False
            return self.threads
        (t0, busy0, own0), (t1, busy1, own1) = self._last, reading
        self._last, self._wait = reading, self.interval
        self.others = max(0.0, ((busy1 - busy0) - (own1 - own0)) / (t1 - t0))
        threads = threads_for(self.others, self.cores, self.ceiling)
        if threads != self.threads:
            log.debug(f"other processes keep {self.others:.2f} cores busy: {threads} thread(s)")
            self._set(threads)
            self.threads = threads
            self.used.add(threads)
        return self.threads


_process: Optional[ThreadGovernor] = None  # the governor ``tick`` drives, installed by ``govern``


def govern(num_threads: int = 0, device: torch.device = torch.device("cpu")) -> Optional[ThreadGovernor]:
    """Install this process's thread choice: ``num_threads`` fixed, or (0, on
    the CPU) a governor that ``tick`` drives from the loops; returns it (None
    where the count is fixed). A governor that follows another keeps its
    ceiling: torch's count may be the lowered one by then."""
    global _process
    previous, _process = _process, None
    if num_threads:
        torch.set_num_threads(num_threads)
    elif device.type == "cpu":
        if previous:  # the new job starts where the governor believes it is: at the ceiling
            torch.set_num_threads(previous.ceiling)
        governor = ThreadGovernor(ceiling=previous.ceiling if previous else None)
        _process = governor if governor.active else None
    return _process


def tick() -> None:
    """Let the process's governor (if any) re-choose the thread count; cheap."""
    if _process is not None:
        _process.tick()


def describe_threads() -> str:
    """"2 threads", or "1-2 threads (load-governed)" where the governor changed the count."""
    count = torch.get_num_threads()
    used = _process.used if _process is not None else {count}
    low, high = min(used), max(used)
    plural = "s" if high != 1 else ""
    return f"{high} thread{plural}" if low == high else f"{low}-{high} threads (load-governed)"
