"""Aggressive inference-network training (He et al. 2019, "Lagging Inference
Networks and Posterior Collapse in Variational Autoencoders", Algorithm 1).

While the aggressive phase lasts, every training step first updates the
encoder alone on fresh batches until its objective stops improving (checked
every ``CHECK_EVERY`` inner steps, at most ``train.aggressive_max_inner``),
then updates the decoder alone on the step's own batch. The phase ends at the
first validation whose mutual information I(x; z) is lower than the previous
one (or after ``train.aggressive_max_steps``, where set); training then goes
on as usual. The phase keeps its own state (``state.AggressiveState``: whether
it lasts, its best MI, the position of the encoder's batch stream), so a
resumed run draws the same inner batches.
"""

from __future__ import annotations

import math

from ..errors import TextVAEError
from . import distributed
from .policies import Policy
from .state import AggressiveState

CHECK_EVERY = 15  # inner steps between two looks at the encoder's loss, as in the paper's code
STREAM_EPOCH = 1_000_000  # inner batches come from a second, independent shuffle of the data


class AggressivePhase(Policy):
    """The trainer's step while the phase lasts (``step``), and the policy that
    ends it after a validation (``after_validation``)."""

    def __init__(self, trainer) -> None:
        if distributed.is_distributed():
            raise TextVAEError("train.aggressive does not run with several processes")
        super().__init__(trainer)
        model = trainer.model
        self.encoder_params = [p for name, p in model.named_parameters() if not name.startswith("decoder.")]
        self.decoder_params = [p for name, p in model.named_parameters() if name.startswith("decoder.")]
        self._stream = None

    @property
    def state(self) -> AggressiveState:
        return self.trainer.state.aggressive  # read each time: resuming replaces the trainer's state

    def step(self, batch, beta: float) -> dict[str, float]:
        trainer, state = self.trainer, self.state
        cap = trainer.config.aggressive_max_steps
        if state.active and cap and trainer.state.step >= cap:
            self._end(f"reached train.aggressive_max_steps={cap}")
        if not state.active:
            return trainer.train_step(batch, beta)
        inner = self.update_encoder(beta)
        state.inner_steps += inner
        logs = trainer.train_step(batch, beta, frozen=self.encoder_params)
        logs["inner_steps"] = inner
        return logs

    def update_encoder(self, beta: float) -> int:
        """Encoder-only steps until the loss stops falling; returns their number."""
        previous, running, count, steps = math.inf, 0.0, 0, 0
        while steps < self.trainer.config.aggressive_max_inner:
            logs = self.trainer.train_step(self._next_batch(), beta, frozen=self.decoder_params)
            steps += 1
            running += logs["loss"]
            count += 1
            if steps % CHECK_EVERY == 0:
                current = running / count
                if current >= previous:
                    break
                previous, running, count = current, 0.0, 0
        return steps

    def _next_batch(self):
        """The next batch of the inner stream; its position is in the trainer
        state, so a resumed run draws the same batches."""
        state, data = self.state, self.trainer.train_data
        if self._stream is None:
            self._stream = data.iterate(STREAM_EPOCH + state.inner_epoch, state.inner_batch)
        for batch in self._stream:
            state.inner_batch += 1
            return batch.to(self.trainer.device)
        state.inner_epoch += 1
        state.inner_batch = 0
        self._stream = None
        return self._next_batch()

    def after_validation(self, result: dict) -> None:
        """End the aggressive phase when MI stops rising."""
        state = self.state
        if not state.active or "mi" not in result:
            return
        if result["mi"] < state.best_mi:
            self._end(f"MI fell to {result['mi']:.3f}")
        state.best_mi = max(state.best_mi, result["mi"])

    def _end(self, why: str) -> None:
        self.state.active = False
        self.trainer.log_info(f"aggressive phase over at step {self.trainer.state.step} ({why}; "
                              f"{self.state.inner_steps} encoder-only steps in all)")
