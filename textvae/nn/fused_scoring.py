"""The evaluation's compiled kernels: per-token log-likelihoods in one
kernel per chunk, and the LSTM decoder's cell update (nn/lstm.py).

Importance-weighted NLL scores every token under hundreds of latent samples:
the output projection is its one unavoidable matrix product, and in eager
PyTorch the log-softmax after it costs about 0.6 of the product again (a cast
to fp32, three passes over the logits, a full-size output that is read once
for the gold token). ``torch.compile`` fuses the cast, the log-sum-exp and
the gather into one pass after the product, so only the (rows,) result
leaves the cache (figures in the README's Speed section). In bf16 the fused
logits skip the rounding to bf16 that eager autocast applies, so the values
agree with eager bf16 within bf16 rounding, not bit for bit.

The same holds for the recurrence that ``LSTMDecoder.states_under_samples``
runs under every sample: its gate sums and nonlinearities, a dozen eager
passes over (rows, 4H) tensors a step, become one compiled kernel after the
recurrent product (``CompiledKernel``, shared by both).

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


class CompiledKernel:
    """``function`` compiled by ``torch.compile`` on first use, for use inside
    ``fused_scoring()``. ``dynamic=False`` compiles one kernel per input
    shape (for callers that pad to one shape); ``dynamic=None`` lets torch
    mark the sizes that change between calls as symbolic, so a second shape
    costs one more compile and later ones none. Calling it gives the
    function's result, or None once compiling has failed, logged once; the
    caller then computes in eager mode, from then on."""

    def __init__(self, function: Callable, what: str, dynamic: Optional[bool] = False) -> None:
        self.function, self.what, self.dynamic = function, what, dynamic
        self.compiled: Optional[Callable] = None
        self.broken = False
        KERNELS.append(self)

    def __call__(self, *args):
        if self.broken:
            return None
        try:
            if self.compiled is None:
                self.compiled = torch.compile(self.function, dynamic=self.dynamic,
                                              options={"cpp.dynamic_threads": True})
            with torch.autocast("cpu", enabled=False):  # the inputs carry the precision already
                return self.compiled(*args)
        except Exception as error:  # noqa: BLE001 (torch.compile's failures have no common type)
            self.broken = True
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            log.info(f"the compiled {self.what} is unavailable ({first[:200]}); computing in eager mode")
            log.debug(f"the compiled {self.what}'s failure", exc_info=True)
            return None


KERNELS: list[CompiledKernel] = []  # every compiled kernel of the process, for ``unavailable``


def chunk_log_likelihood(states: Tensor, weight: Tensor, bias: Optional[Tensor], gold: Tensor) -> Tensor:
    """log p(gold_r | state_r) for each row: states (n, H), weight (V, H),
    bias (V,), gold (n,) -> (n,) fp32. The logits are fp32 whatever the
    inputs' precision (a bf16 product accumulates in fp32)."""
    logits = F.linear(states, weight, bias).float()  # (n, V)
    return logits.gather(1, gold.unsqueeze(1)).squeeze(1) - torch.logsumexp(logits, dim=-1)


SCORING = CompiledKernel(chunk_log_likelihood, "scoring kernel")


@contextlib.contextmanager
def fused_scoring(enabled: bool = True) -> Iterator[None]:
    """Within it (in this thread or task), ``token_log_likelihood`` without
    autograd uses the compiled kernel, and the LSTM decoder's scoring
    recurrence its compiled cell; ``enabled=False`` turns them off inside."""
    token = _active.set(enabled)
    try:
        yield
    finally:
        _active.reset(token)


def active() -> bool:
    """True inside ``fused_scoring()`` without autograd: where a compiled
    kernel may serve (each caller checks that its tensors are on the CPU)."""
    return _active.get() and not torch.is_grad_enabled()


def kernel_for(output: nn.Module, states: Tensor) -> Optional[Callable]:
    """The compiled ``chunk_log_likelihood`` where it applies here, else None."""
    if not active() or SCORING.broken or states.device.type != "cpu" or type(output) is not nn.Linear:
        return None
    return SCORING


def run(kernel: Callable, states: Tensor, weight: Tensor, bias: Optional[Tensor], gold: Tensor,
        rows: int) -> Optional[Tensor]:
    """``kernel`` on a chunk padded to ``rows`` (one compiled shape for every
    chunk); None if compiling failed, which turns the kernel off for good."""
    n = states.shape[0]
    if n < rows:  # the last chunk: zero rows score token 0 and are dropped
        states = torch.cat([states, states.new_zeros(rows - n, states.shape[1])])
        gold = torch.cat([gold, gold.new_zeros(rows - n)])
    out = kernel(states, weight, bias, gold)
    return None if out is None else out[:n]


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
    """True once compiling one of the kernels has failed in this process (the eager path serves it)."""
    return any(kernel.broken for kernel in KERNELS)
