"""The finite-loss guard: a training step whose loss or gradient is NaN or
inf is skipped, and a run whose steps keep failing stops with one error line.

Skipping a step leaves weights and optimiser state as they were (the
optimiser never sees the bad gradient); the step still counts (the data, the
schedules and the step counter move on), so a resumed run skips the same
steps. ``train.max_nonfinite_steps`` skipped in a row mean the weights have
diverged: the run stops with a ``TextVAEError`` (exit status 2), keeping the
last checkpoint. The counters live in the trainer's typed state
(``state.GuardState``) and the training log records how many steps were
skipped. Validation figures that are not finite are logged but decide
nothing: no best weights, no plateau decay, early stop or collapse warning.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from ..errors import TextVAEError
from . import distributed

log = logging.getLogger("textvae")


class FiniteGuard:
    def __init__(self, trainer) -> None:
        self.trainer = trainer

    def step(self, loss: torch.Tensor) -> bool:
        """Clip the gradient (``train.grad_clip``) and take the optimiser step
        if the loss and the gradient are finite; otherwise skip it. Returns
        whether the step was taken."""
        trainer = self.trainer
        params = [p for p in trainer.model.parameters() if p.grad is not None]
        if trainer.config.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, trainer.config.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params]) if params else torch.zeros(())
        finite = bool(torch.isfinite(loss.detach()).all() and torch.isfinite(norm))
        finite = not distributed.max_over_ranks(int(not finite))  # the ranks skip alike
        state = trainer.state.guard
        if finite:
            trainer.optimizer.step()
            state.streak = 0
            return True
        state.streak += 1
        state.skipped += 1
        limit = trainer.config.max_nonfinite_steps
        if state.streak == 1:
            trainer.log_info(f"step {trainer.state.step + 1}: loss {float(loss.detach()):.4g}, gradient norm "
                             f"{float(norm):.4g}: not finite, optimiser step skipped")
        if state.streak >= limit:
            raise TextVAEError(f"training diverged: {limit} steps in a row had a non-finite loss or gradient "
                               f"(train.max_nonfinite_steps), the last at step {trainer.state.step + 1}; the last "
                               f"checkpoint is kept. Try a lower train.lr (now {trainer.state.lr:g}) or "
                               "train.grad_clip: resume with --set train.lr=... or start again with --overwrite")
        return False

    def log_fields(self) -> dict[str, Any]:
        """What the training log records of the guard: skipped steps so far, when there are any."""
        skipped = self.trainer.state.guard.skipped
        return {"skipped_steps": skipped} if skipped else {}

    def usable(self, result: dict[str, Any], loss: float) -> bool:
        """Whether a validation's figures may decide anything (they are finite)."""
        if math.isfinite(loss) and all(math.isfinite(result[key]) for key in ("rec", "kl") if key in result):
            return True
        self.trainer.log_info(f"valid step {self.trainer.state.step}: objective {loss:.4g} is not finite; "
                              "it keeps no weights and no policy acts on it")
        return False
