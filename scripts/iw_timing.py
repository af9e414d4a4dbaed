"""The benchmark's IW-NLL timing (scripts/benchmark.py): the roofline's
peak, measured on the output projection's shape with oneDNN's product and
with the native scoring kernel (nn/native_kernels.py), and the IW-NLL's
seconds with each set of kernels, in alternating rounds."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from textvae.evaluation.likelihood import importance_weighted_log_likelihood
from textvae.model import TextVAE
from textvae.nn import native_kernels
from textvae.nn.fused_scoring import fused_scoring
from textvae.nn.lstm import CELL
from textvae.nn.native_kernels import NativeKernels
from textvae.nn.output import CHUNK_LOGITS


def projection_peak(output: nn.Module, autocast, seconds: float = 1.0) -> float:
    """FLOP/s of the output projection alone on one chunk of the evaluation's
    shape (CHUNK_LOGITS logits: rows x hidden -> rows x vocabulary) under
    ``autocast``: the best of repeated timings."""
    vocab, hidden = output.weight.shape
    rows = max(16, CHUNK_LOGITS // vocab)
    x = torch.randn(rows, hidden)
    best, spent = float("inf"), 0.0
    with torch.no_grad(), autocast():
        output(x)
        while spent < seconds:
            start = time.perf_counter()
            output(x)
            took = time.perf_counter() - start
            best, spent = min(best, took), spent + took
    return 2 * rows * hidden * vocab / best


@contextmanager
def iw_mode(kernels: bool, cell_off: bool, native: bool) -> Iterator[None]:
    """The compiled kernels on or off (fused_scoring), the LSTM's compiled
    cell off inside, the native scoring kernel on or off."""
    before = CELL.broken, NativeKernels.enabled
    CELL.broken, NativeKernels.enabled = CELL.broken or cell_off, native
    try:
        with fused_scoring(kernels):
            yield
    finally:
        CELL.broken, NativeKernels.enabled = before


# (kernels on, cell off, native on): "native" is what `textvae eval` runs
# where the native kernel applies (bf16, AVX-512 BF16 without AMX), else "compiled".
IW_MODES = {"native": (True, False, True), "compiled": (True, False, False), "scoring_only": (True, True, False),
            "eager": (False, False, False)}


def time_iw(model: TextVAE, batches: list, ctx, samples: int, modes: list[str], rounds: int = 2) -> dict[str, float]:
    """Seconds of IW-NLL over ``batches`` in each of ``modes`` (IW_MODES):
    `textvae eval`'s kernels (nn/native_kernels.py, nn/fused_scoring.py,
    nn/lstm.py), the compiled ones without the native kernel, the scoring
    kernel alone, and the same code eager. A first pass of each (the
    compiles, once a process and shape, and a warm-up) is timed apart
    ("first_pass": the first mode's); then the modes alternate for
    ``rounds`` rounds, the best of each kept, so that all see the same machine."""
    seconds: dict[str, float] = {}
    for r in range(rounds + 1):
        for mode in modes:
            with torch.no_grad(), ctx(), iw_mode(*IW_MODES[mode]):
                start = time.perf_counter()
                if r == 0:
                    importance_weighted_log_likelihood(model, batches[0], 50, 50)  # compiles, warms up
                    seconds.setdefault("first_pass", time.perf_counter() - start)
                    continue
                for batch in batches:
                    importance_weighted_log_likelihood(model, batch, samples, 50)
                seconds[mode] = min(seconds.get(mode, float("inf")), time.perf_counter() - start)
    return seconds


def native_peak(output: nn.Module, seconds: float = 1.0) -> float:
    """FLOP/s of the output projection in the native scoring kernel
    (nn/native_kernels.py), log-sum-exp included, on 8,192 rows: the best of
    repeated timings; 0 where the kernel does not run here."""
    vocab, hidden = output.weight.shape
    rows = 8192
    states, gold = torch.randn(1, rows, hidden).bfloat16(), torch.randint(0, vocab, (1, rows))
    mask = torch.ones(1, rows, dtype=torch.bool)
    best, spent = float("inf"), 0.0
    with torch.no_grad(), fused_scoring(True), torch.autocast("cpu", dtype=torch.bfloat16):
        if native_kernels.score_tokens(states, output, gold, mask) is None:
            return 0.0
        while spent < seconds:
            start = time.perf_counter()
            native_kernels.score_tokens(states, output, gold, mask)
            took = time.perf_counter() - start
            best, spent = min(best, took), spent + took
    return 2 * rows * hidden * vocab / best
