"""The evaluation's per-token log-likelihoods in one compiled kernel per chunk.

Importance-weighted NLL scores every token under hundreds of latent samples:
the output projection is its one unavoidable matrix product, and in eager
PyTorch the log-softmax after it costs about 0.6 of the product again (a cast
to fp32, three passes over the logits, a full-size output that is read once
for the gold token). ``torch.compile`` fuses the cast, the log-sum-exp and
the gather into the product's epilogue, so only the (rows,) result leaves
the cache: about 0.1 of the product on a 2-core CPU (README, Speed).

Used only where it pays: inside ``fused_scoring()`` (the IW driver enters it
for large estimates), without autograd, on the CPU, for a plain ``nn.Linear``
output. Compiling takes seconds once per process and chunk shape; where it
cannot (no C++ compiler, an unsupported platform) the first failure is
logged once and the eager path serves from then on.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger("textvae")

_active = 0  # nesting depth of fused_scoring()
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
    """Within it, ``token_log_likelihood`` without autograd uses the compiled kernel."""
    global _active
    _active += enabled
    try:
        yield
    finally:
        _active -= enabled


def kernel_for(output: nn.Module, states: Tensor) -> Optional[Callable]:
    """The compiled ``chunk_log_likelihood`` where it applies here, else None."""
    global _kernel
    if (not _active or _broken or torch.is_grad_enabled() or states.device.type != "cpu"
            or type(output) is not nn.Linear):
        return None
    if _kernel is None:
        _kernel = torch.compile(chunk_log_likelihood, dynamic=False)
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
        return None
