"""OpenMP settings that keep torch fast on a shared machine.

torch's CPU kernels run on GNU OpenMP threads, which by default spin for a
while at the end of each parallel region, waiting for the others. When
another busy process holds one of the cores, the thread that is descheduled
makes the spinning ones burn their time slices on nothing, and every small
kernel of an LSTM step waits for it: PTB training beside one busy process
kept only 0.27 of its idle throughput. Waiting threads that sleep instead of
spinning (``OMP_WAIT_POLICY=PASSIVE``) hand their core back, so a busy
neighbour costs roughly its share of the cores. ``scripts/benchmark.py
--cases contention`` measures both policies idle and beside a busy process;
the README's Speed section has the figures.

libgomp reads these variables once, when torch loads it, so they are set on
``import textvae`` (and by the ``textvae`` command) only if torch is not
imported yet: import textvae first, or export the variables yourself. A
value already in the environment is kept, ``TEXTVAE_OPENMP_DEFAULTS=0``
leaves the environment alone, and ``train.num_threads`` still sets the
number of threads.
"""

from __future__ import annotations

import os
import sys

DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


def apply_defaults() -> bool:
    """Set ``DEFAULTS`` where the environment has no value; False when it is
    too late (torch already imported) or switched off."""
    if os.environ.get("TEXTVAE_OPENMP_DEFAULTS", "1") == "0" or "torch" in sys.modules:
        return False
    for name, value in DEFAULTS.items():
        os.environ.setdefault(name, value)
    return True
