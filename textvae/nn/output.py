"""Output projection + cross-entropy on the real tokens only."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import fused_scoring, native_kernels
from .prepared import prepared

# Logits per chunk: 2M fp32 values (8 MB) stay in the CPU's caches through the
# projection, the fp32 cast and the log-softmax, where larger chunks spill out
# of them (the gain is measured in the README's Evaluation section).
CHUNK_LOGITS = 1 << 21


def token_log_likelihood(hidden: Tensor, output: nn.Module, targets: Tensor, mask: Tensor,
                         chunk_tokens: int = 0) -> Tensor:
    """Sum of log p(target_t | ...) over the positions where ``mask`` is True.

    hidden (B, T, H), targets (B, T), mask (B, T) -> (B,) nats per sequence.
    Padding is removed before the projection, so the (tokens x vocabulary)
    logits exist only for real tokens, and only ``chunk_tokens`` rows at a time
    in the forward pass (default: CHUNK_LOGITS values); log-softmax runs in
    fp32 even under bf16 autocast. Inside ``fused_scoring()`` and without
    autograd, each chunk is one compiled kernel (fused_scoring.py), or under
    bf16 on a CPU with AVX-512 BF16 and no AMX, the whole is one native
    kernel with no logits in memory (native_kernels.py).
    """
    batch = hidden.shape[0]
    rows = torch.arange(batch, device=hidden.device).unsqueeze(1).expand_as(mask)[mask]  # (N,)
    log_probs = native_kernels.score_tokens(hidden, output, targets, mask)  # (N,); None: it does not apply here
    if log_probs is None:
        states, gold = hidden[mask], targets[mask]  # (N, H), (N,)
        chunk_tokens = chunk_tokens or max(16, CHUNK_LOGITS // output.weight.shape[0])
        pieces = fused_scoring.score(output, states, gold, chunk_tokens)  # None: not inside fused_scoring()
        if pieces is None:
            pieces = []
            for start in range(0, states.shape[0], chunk_tokens):
                logits = output(states[start: start + chunk_tokens]).float()  # (n, V)
                pieces.append(-F.cross_entropy(logits, gold[start: start + chunk_tokens], reduction="none"))
        log_probs = torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)
    return torch.zeros(batch, device=hidden.device, dtype=torch.float32).index_add(0, rows, log_probs)


# Greedy decoding's argmax from a bf16 projection, made exact (below).
SCREEN_MIN_VOCAB = 1024  # smaller vocabularies: the fp32 product is cheap, screening does not pay
SCREEN_BLOCK = 128  # logits per block of the first search
SCREEN_DENSE_BLOCKS = 8  # a row with more blocks within reach takes the fp32 product
BF16_UNIT = 2.0 ** -8  # unit roundoff of bf16 (8 significant bits, round to nearest)
FP32_UNIT = 2.0 ** -24


class ScreenedArgmax:
    """The argmax of an fp32 output projection, found from a bf16 one.

    Where bf16 products run natively (AVX-512 BF16, AMX) they are several
    times as fast as fp32 ones, and greedy decoding needs only the best token.
    The bf16 logits are off from the fp32 ones by a bounded amount (standard
    floating-point error analysis, Higham 2002, ch. 3; u = 2^-8 is bf16's unit
    roundoff, g = K 2^-24 covers fp32 sums of K terms, the product's and the
    fp32 reference's own): for logit j of row r, with h the hidden state, w_j
    and b_j the weights and bias, p the bf16 logit and a = |h|.|w_j| <= ||h|| ||w_j||,

        |p - fp32 logit| <= (2u + u^2 + 2g) a + (u + 2g) |b_j| + u/(1-u) |p|,

    and |p| <= ||h|| max_j ||w_j|| + max_j |b_j| (times 1 + O(u)). So every
    token whose fp32 logit could be a row's largest has a bf16 logit within
    twice that bound (taken over the row) of the row's best; those few are
    recomputed in fp32 and the largest wins, the first of equals as
    torch.argmax does. The tokens are those of the fp32 logits except at
    near-ties within fp32's own rounding (about 2g (a + |b|), a few 1e-6 of a
    logit: the full product and a recomputed dot product sum in different
    orders, as the fp32 product itself does for different batch sizes). Rows
    the bound cannot serve (a non-finite hidden state or logit, or a flat row
    with hundreds of candidates) take the fp32 product.
    """

    enabled = True  # False: greedy decoding takes the plain fp32 argmax (to time against it)

    def __init__(self, output: nn.Linear) -> None:
        self.output = output
        # The bf16 copy costs about 2 ms at PTB size, a tenth of a one-sentence reconstruction: made once.
        kept = prepared(output, "screen", (output.weight, output.bias), lambda: self._prepare(output))
        self.weight, self.bias, self.width, self.weight_bf16, self.slope, self.offset = kept
        self.hidden: Optional[Tensor] = None
        self.bound: Optional[Tensor] = None

    @staticmethod
    def _prepare(output: nn.Linear) -> tuple:
        """What depends on the weights alone (kept between calls): the bf16
        weights with the bias as a column, and the bound's two coefficients."""
        weight = output.weight.detach()  # (V, H)
        vocab, hidden = weight.shape
        bias = output.bias.detach() if output.bias is not None else weight.new_zeros(vocab)
        # The bias rides in the product as one more input column (the hidden
        # state gets a 1 there), padded to a multiple of 8: a product with a
        # bias argument costs half as much again on the CPU.
        width = (hidden + 1 + 7) // 8 * 8
        weight_bf16 = torch.cat([weight, bias.unsqueeze(1), weight.new_zeros(vocab, width - hidden - 1)],
                                1).bfloat16()  # (V, width)
        bias_max, norm_max = float(bias.abs().max()), float(weight.double().norm(dim=1).max())
        u, sums = BF16_UNIT, 2 * width * FP32_UNIT
        slack = 1 + 2 ** -5  # covers the O(u^2) terms
        slope = (2 * u + u * u + sums + u / (1 - u)) * norm_max * slack  # bound = slope ||h|| + offset
        # bf16 flushes subnormal products to zero: up to width of them, each below 2^-126 |w|.
        offset = ((u + u / (1 - u) + sums) * bias_max + width * 2.0 ** -126 * max(1.0, norm_max)) * slack
        return weight, bias.float(), width, weight_bf16, slope, offset

    @staticmethod
    def for_decoder(decoder: nn.Module, force: bool = False) -> Optional["ScreenedArgmax"]:
        """One for ``decoder``'s output layer where it pays (a CPU with native
        bf16, a vocabulary of SCREEN_MIN_VOCAB or more), else None."""
        from .. import runtime  # noqa: PLC0415 (runtime sits above nn)

        output = getattr(decoder, "output", None)
        if not isinstance(output, nn.Linear) or output.weight.dtype != torch.float32:
            return None
        device = output.weight.device
        if torch.is_autocast_enabled(device.type):  # bf16 logits were asked for: nothing to make exact
            return None
        if force or (ScreenedArgmax.enabled and device.type == "cpu" and output.out_features >= SCREEN_MIN_VOCAB
                     and runtime.native_bf16(device)):
            return ScreenedArgmax(output)
        return None

    def logits(self, hidden: Tensor) -> Tensor:
        """Logits (R, V) of hidden (R, H) from the bf16 product, in fp32 (exact
        copies of the bf16 values), for ``argmax`` and for masking to -inf before it."""
        self.hidden = hidden
        norm = torch.linalg.vector_norm(hidden, dim=-1, dtype=torch.float64)  # no underflow of tiny states
        self.bound = (self.slope * norm + self.offset).float()  # (R,)
        extra = hidden.new_zeros(len(hidden), self.width - hidden.shape[1])
        extra[:, 0] = 1.0  # times the bias column
        return F.linear(torch.cat([hidden, extra], 1).bfloat16(), self.weight_bf16).float()

    def argmax(self, logits: Tensor) -> Tensor:
        """The fp32 argmax of each row of ``logits`` (those of the latest
        ``logits()``, with some set to -inf since), (R, V) -> (R,). A row that
        is all -inf gets token 0, as torch.argmax gives it.

        Only maxima over blocks of SCREEN_BLOCK logits pass over the whole
        (R, V) (comparisons and their indices cost several times as much
        there); the blocks that reach a row's floor are searched after."""
        rows, vocab = logits.shape
        if self.hidden is None or len(self.hidden) != rows:
            raise ValueError("ScreenedArgmax.argmax needs the logits of its latest logits() call")
        whole = vocab // SCREEN_BLOCK * SCREEN_BLOCK
        blocks = logits[:, :whole].unflatten(1, (-1, SCREEN_BLOCK)).amax(-1)  # (R, V // SCREEN_BLOCK)
        if whole < vocab:
            blocks = torch.cat([blocks, logits[:, whole:].amax(-1, keepdim=True)], 1)
        best = blocks.amax(-1)  # (R,)
        floor = best - 2 * self.bound
        hot = blocks >= floor.unsqueeze(1)  # (R, blocks) blocks within reach
        # The bound cannot serve a row with a non-finite floor (a NaN or +inf
        # anywhere; all masked) or a flat one (many blocks within reach): the
        # fp32 product there, with the row's masks.
        dense = ~torch.isfinite(floor) | (hot.sum(-1) > SCREEN_DENSE_BLOCKS)
        token = torch.zeros(rows, dtype=torch.long, device=logits.device)
        hot &= ~dense.unsqueeze(1)
        if bool(dense.any()):
            index = dense.nonzero().squeeze(1)
            exact = self.output(self.hidden[index].to(self.weight.dtype)).float()
            token[index] = exact.masked_fill(logits[index] == float("-inf"), float("-inf")).argmax(-1)
        hot_row, hot_block = hot.nonzero().unbind(1)  # (m,)
        columns = hot_block.unsqueeze(1) * SCREEN_BLOCK + torch.arange(SCREEN_BLOCK, device=logits.device)
        inside = columns < vocab
        columns = columns.clamp(max=vocab - 1)  # (m, SCREEN_BLOCK)
        values = logits[hot_row.unsqueeze(1), columns]
        reach = (values >= floor[hot_row].unsqueeze(1)) & (values > float("-inf")) & inside
        slot, offset = reach.nonzero().unbind(1)
        row, column = hot_row[slot], columns[slot, offset]  # (n,) the candidates
        if len(row) == 0:
            return token
        exact = (self.hidden[row].float() * self.weight[column]).sum(-1) + self.bias[column]  # (n,) fp32 logits
        top = torch.full_like(best, float("-inf")).scatter_reduce(0, row, exact, "amax")
        first = torch.where(exact == top[row], column, vocab)  # the first of equal maxima
        chosen = torch.full_like(token, vocab).scatter_reduce(0, row, first, "amin")
        return torch.where(chosen < vocab, chosen, token)
