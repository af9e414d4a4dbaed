"""The decisions a run takes besides the gradient step, each a small object
the trainer calls at a fixed point of the loop:

- after each validation: learning-rate decay on a plateau, early stopping,
  the posterior-collapse monitor (and the aggressive phase, ``aggressive.py``);
- before each epoch or step: the end of autoencoder pretraining (Li et al. 2019).

Each keeps its counters in its section of the trainer's typed state
(``state.py``), so a resumed run decides exactly as an uninterrupted one.
A policy acts through the trainer: ``stop(reason)``, ``set_lr(lr)``,
``log_info(message)``. Whether a validation improved is the trainer's
bookkeeping (``state.since_best == 0`` right after an improvement).
"""

from __future__ import annotations

import logging
import math
import sys
from typing import Any

from . import distributed
from .optim import build_optimizer

log = logging.getLogger("textvae")

COLLAPSE_KL = 0.1  # nats per example
COLLAPSE_PATIENCE = 2  # evaluations in a row
REMEDIES = [  # (setting, is it already on?) for the collapse warning
    ("objective.kl_schedule=linear or cyclical", lambda t, o, m: o.kl_schedule != "constant"),
    ("model.word_dropout=0.3", lambda t, o, m: getattr(m, "word_dropout", 0) > 0),
    ("objective.free_bits=0.5", lambda t, o, m: o.free_bits > 0),
    ("model.bn_vae_gamma=0.6", lambda t, o, m: getattr(m, "bn_vae_gamma", 0) > 0),
    ("train.aggressive=true", lambda t, o, m: t.aggressive),
    ("train.ae_pretrain_fraction=0.25", lambda t, o, m: t.ae_pretrain_epochs > 0 or t.ae_pretrain_fraction > 0),
]


class Policy:
    """The hooks the trainer calls; a policy overrides those it needs."""

    def __init__(self, trainer) -> None:
        self.trainer = trainer

    def before_epoch(self) -> None:
        """At the start of each epoch (of a resumed one too)."""

    def before_step(self) -> None:
        """Before each training step."""

    def after_validation(self, result: dict[str, Any]) -> None:
        """After each validation, with its figures (``evaluation.elbo.evaluate_elbo``)."""

    def limit_reached(self) -> bool:
        """Whether this policy has ended the run (asked on resume, when the limits may have changed)."""
        return False


class PlateauDecay(Policy):
    """``train.lr_schedule=plateau``: multiply the learning rate by ``lr_decay``
    after ``lr_patience`` validations without improvement; stop the run when
    one more than ``max_lr_decays`` would be needed."""

    def limit_reached(self) -> bool:
        config = self.trainer.config
        return bool(config.max_lr_decays and self.trainer.state.plateau.decays > config.max_lr_decays)

    def after_validation(self, result: dict[str, Any]) -> None:
        trainer, config = self.trainer, self.trainer.config
        state = trainer.state.plateau
        if trainer.ae_phase.active():  # the autoencoder's KL is unweighted: its validations judge nothing
            return
        if trainer.state.since_best == 0:
            state.bad_evals = 0
            return
        state.bad_evals += 1
        if config.lr_schedule == "plateau" and config.max_lr_decays and state.bad_evals >= config.lr_patience > 0:
            state.bad_evals = 0
            state.decays += 1
            if state.decays > config.max_lr_decays:
                log.info(f"stopping: validation did not improve after {config.max_lr_decays} learning-rate decays")
                trainer.stop("lr_decays")
            else:
                trainer.set_lr(trainer.state.lr * config.lr_decay)
                log.info(f"learning rate decayed to {trainer.state.lr:.3g}")


class EarlyStop(Policy):
    """``train.early_stop_patience``: stop after that many validations without improvement."""

    def limit_reached(self) -> bool:
        patience = self.trainer.config.early_stop_patience
        return bool(patience and self.trainer.state.since_best >= patience and not self.trainer.ae_phase.active())

    def after_validation(self, result: dict[str, Any]) -> None:
        if self.limit_reached():
            since_best = self.trainer.state.since_best
            log.info(f"early stopping: no improvement in {since_best} evaluations")
            self.trainer.stop("early_stop")


class CollapseMonitor(Policy):
    """Posterior collapse: KL per example under COLLAPSE_KL nats, or no active
    unit, for COLLAPSE_PATIENCE validations in a row -> one warning line that
    names the remedies the run does not use yet. Silent while the KL weight
    is 0 (AE pretraining), where collapse is expected."""

    def after_validation(self, result: dict[str, Any]) -> None:
        trainer = self.trainer
        state = trainer.state.collapse
        if "au" not in result or trainer.current_kl_weight() == 0:
            return
        collapsed = result["kl"] < COLLAPSE_KL or result["au"] == 0
        state.streak = state.streak + 1 if collapsed else 0
        if state.streak >= COLLAPSE_PATIENCE and not state.warned:
            state.warned = True
            if trainer.is_main:
                model_config = getattr(getattr(trainer.model, "config", None), "model", None)
                untried = [name for name, active in REMEDIES
                           if not active(trainer.config, trainer.objective, model_config)]
                print(f"textvae: warning: posterior collapse at step {trainer.state.step}: KL {result['kl']:.3f} "
                      f"nats per example, {result['au']} active units; try {', '.join(untried) or 'a stronger remedy'}",
                      file=sys.stderr)


class AEPretraining(Policy):
    """Li et al. 2019: autoencoder training first (KL weight 0,
    ``trainer.current_kl_weight``), for ``train.ae_pretrain_epochs`` epochs or,
    where that is 0, the first ``train.ae_pretrain_fraction`` of the run (by
    steps or by the time budget, ``trainer.progress``); then a re-initialised
    decoder and a VAE phase that starts afresh: schedules, Adam state,
    learning rate and the best validation loss."""

    def active(self) -> bool:
        """Whether the run is in its autoencoder phase now. The fraction (the
        text models' default) applies only where a fresh decoder helps: not to
        a language model, nor to a pretrained ``hf:`` decoder."""
        config, state = self.trainer.config, self.trainer.state
        if config.ae_pretrain_epochs:
            return state.epoch < config.ae_pretrain_epochs
        return config.ae_pretrain_fraction > 0 and state.phase_start == 0 and self.trainer.model.fresh_decoder_helps

    def before_epoch(self) -> None:
        epochs, state = self.trainer.config.ae_pretrain_epochs, self.trainer.state
        if epochs and state.epoch == epochs and state.batch == 0 and state.phase_start == 0:
            self._end_phase()

    def before_step(self) -> None:
        trainer = self.trainer
        if trainer.config.ae_pretrain_epochs or not self.active() or trainer.state.step == 0:
            return
        due = trainer.progress() >= trainer.config.ae_pretrain_fraction
        if trainer.config.time_budget:
            due = distributed.from_main(due)  # rank 0's clock decides for every rank
        if due:
            self._end_phase()

    def _end_phase(self) -> None:
        trainer, state = self.trainer, self.trainer.state
        trainer.model.reset_decoder()
        distributed.broadcast_from_main(trainer.model.parameters())  # the ranks' random streams differ
        trainer.optimizer = build_optimizer(trainer.model, trainer.config)
        state.phase_start, state.lr = state.step, trainer.config.lr
        state.phase_start_seconds = distributed.from_main(trainer.elapsed())
        state.best_loss, state.saved_best = math.inf, math.inf
        # The autoencoder's validations (KL unweighted) count neither towards a decay nor an early stop.
        state.plateau = type(state.plateau)()
        state.since_best = 0
        log.info(f"autoencoder pretraining done at step {state.step}: decoder re-initialised")
