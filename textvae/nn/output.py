"""Output projection + cross-entropy on the real tokens only."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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
    fp32 even under bf16 autocast.
    """
    batch = hidden.shape[0]
    rows = torch.arange(batch, device=hidden.device).unsqueeze(1).expand_as(mask)[mask]  # (N,)
    states, gold = hidden[mask], targets[mask]  # (N, H), (N,)
    chunk_tokens = chunk_tokens or max(16, CHUNK_LOGITS // output.weight.shape[0])
    pieces = []
    for start in range(0, states.shape[0], chunk_tokens):
        logits = output(states[start: start + chunk_tokens]).float()  # (n, V)
        pieces.append(-F.cross_entropy(logits, gold[start: start + chunk_tokens], reduction="none"))
    log_probs = torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)
    return torch.zeros(batch, device=hidden.device, dtype=torch.float32).index_add(0, rows, log_probs)
