"""The evaluation's per-token log-likelihoods in one compiled kernel per chunk.

Importance-weighted NLL scores every token under hundreds of latent samples:
the output projection is its one unavoidable matrix product, and in eager
PyTorch the log-softmax after it costs about 0.6 of the product again (a cast
to fp32, three passes over the logits, a full-size output that is read once
for the gold token). ``torch.compile`` fuses the cast, the log-sum-exp and
the gather into one pass after the product, so only the (rows,) result
leaves the cache (figures in the README's Speed section). In bf16 the fused
logits skip the rounding to bf16 that eager autocast applies, so the values
agree with eager bf16 within bf16 rounding, not bit for bit.

Used only where it pays: inside ``fused_scoring()`` (the IW driver enters it
for large estimates), without autograd, on the CPU, for a plain ``nn.Linear``
output. Compiling takes seconds once per process and chunk shape (Inductor
writes a C++ kernel, so a C++ compiler is needed, and caches it under the
system's temporary folder); the kernel takes its thread count from torch at
each call, so it follows textvae.threads. Where compiling fails (no
compiler, an unsupported platform) the failure is logged once and the eager
path serves from then on; an error of the computation itself comes back
from the eager path.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger("textvae")

_active: contextvars.ContextVar[bool] = contextvars.ContextVar("fused_scoring", default=False)
_kernel: Optional[Callable] = None
_broken = False  # compiling failed once: eager from then on


def chunk_log_likelihood(states: Tensor, weight: Tensor, bias: Optional[Tensor], gold: Tensor) -> Tensor:
    """log p(gold_r | state_r) for each row: states (n, H), weight (V, H),
    bias (V,), gold (n,) -> (n,) fp32. The logits are fp32 whatever the
    inputs' precision (a bf16 product accumulates in fp32)."""
    logits = F.linear(states, weight, bias).float()  # (n, V)
    return logits.gather(1, gold.unsqueeze(1)).squeeze(1) - torch.logsumexp(logits, dim=-1)


@contextlib.contextmanager
def fused_scoring(enabled: bool = True) -> Iterator[None]:
    """Within it (in this thread or task), ``token_log_likelihood`` without
    autograd uses the compiled kernel; ``enabled=False`` turns it off inside."""
    token = _active.set(enabled)
    try:
        yield
    finally:
        _active.reset(token)


def kernel_for(output: nn.Module, states: Tensor) -> Optional[Callable]:
    """The compiled ``chunk_log_likelihood`` where it applies here, else None."""
    global _kernel
    if (not _active.get() or _broken or torch.is_grad_enabled() or states.device.type != "cpu"
            or type(output) is not nn.Linear):
        return None
    if _kernel is None:
        _kernel = torch.compile(chunk_log_likelihood, dynamic=False, options={"cpp.dynamic_threads": True})
    return _kernel


def run(kernel: Callable, states: Tensor, weight: Tensor, bias: Optional[Tensor], gold: Tensor,
        rows: int) -> Optional[Tensor]:
    """``kernel`` on a chunk padded to ``rows`` (one compiled shape for every
    chunk); None if compiling failed, which turns the kernel off for good."""
    global _broken
    n = states.shape[0]
    if n < rows:  # the last chunk: zero rows score token 0 and are dropped
        states = torch.cat([states, states.new_zeros(rows - n, states.shape[1])])
        gold = torch.cat([gold, gold.new_zeros(rows - n)])
    try:
        with torch.autocast("cpu", enabled=False):  # the inputs carry the precision already
            return kernel(states, weight, bias, gold)[:n]
    except Exception as error:  # noqa: BLE001 (torch.compile's failures have no common type)
        _broken = True
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        log.info(f"the compiled scoring kernel is unavailable ({first[:200]}); scoring in eager mode")
        log.debug("the compiled scoring kernel's failure", exc_info=True)
        return None


def score(output: nn.Module, states: Tensor, gold: Tensor, rows: int) -> Optional[list[Tensor]]:
    """log p(gold | states) for states (N, H), gold (N,), ``rows`` at a time,
    each chunk one compiled kernel: a list of (n,) pieces; None where the
    kernel does not apply here or could not compile (the caller scores in
    eager mode, where cross_entropy's fused log-softmax is faster than
    chunk_log_likelihood's uncompiled code, with the same values)."""
    kernel = kernel_for(output, states)
    if kernel is None:
        return None
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else output.weight.dtype
    weight = output.weight.to(dtype)
    bias = output.bias.to(dtype) if output.bias is not None else None
    pieces = []
    for start in range(0, states.shape[0], rows):
        piece = run(kernel, states[start: start + rows].to(dtype), weight, bias, gold[start: start + rows], rows)
        if piece is None:
            return None
        pieces.append(piece)
    return pieces


def unavailable() -> bool:
    """True once compiling has failed in this process (the eager path serves)."""
    return _broken
