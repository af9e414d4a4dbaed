"""The training loop shared by the text and image models.

The trainer takes built objects (model, data, configs, run folder) and never
parses arguments. A model offers ``forward(batch) -> VAEOutput`` and, for the
remedies, ``posterior`` and ``reset_decoder`` (``base.BaseVAE``); the data
``num_batches(epoch)`` and ``iterate(epoch, start)``. What the loop decides
besides the gradient step are small policies called before each epoch or step
and after each validation (``policies.py``, ``aggressive.py``); its state is
typed (``state.py``) and checkpointed whole (``checkpoint.py``). A run folder
gets ``model.safetensors`` (the best weights by ``objectives.selection_loss``),
``checkpoint/`` (all that resuming exactly needs) and ``metrics.jsonl``.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..config import ObjectiveConfig, TrainConfig
from ..evaluation.elbo import evaluate_elbo
from ..objectives import elbo_loss, kl_weight, selection_loss
from ..run_folder import WEIGHTS_FILE, append_metrics, find_checkpoint, save_weights, truncate_metrics
from ..runtime import autocast_context, resolve_device
from .. import threads
from . import distributed
from .aggressive import AggressivePhase
from .checkpoint import load_checkpoint, save_checkpoint
from .guard import FiniteGuard
from .optim import build_optimizer
from .policies import AEPretraining, CollapseMonitor, EarlyStop, PlateauDecay
from .schedule import learning_rate, phase_progress
from .signals import StopSignals
from .state import AggressiveState, TrainState

log = logging.getLogger("textvae")
IMPROVEMENT = 1e-4  # nats per example: a smaller fall of the validation loss is no improvement


class Trainer:
    def __init__(self, model: nn.Module, train_config: TrainConfig, objective: ObjectiveConfig, train_data,
                 valid_data, run_dir: str | Path, command: str = "textvae train") -> None:
        self.config, self.objective = train_config, objective
        self.run_dir = Path(run_dir)
        self.command = command  # what continues the run, for the interrupt message
        self.device = resolve_device(train_config.device)
        self.threads = threads.govern(train_config.num_threads, self.device)  # fixed, or following the load
        self.model = model.to(self.device)
        self.network = distributed.wrap(self.model, self.device)  # DDP when launched with torchrun
        self.is_main = distributed.rank() == 0
        self.train_data, self.valid_data = train_data, valid_data
        self.optimizer = build_optimizer(self.model, train_config)
        self.autocast = autocast_context(self.device, train_config.precision)
        self.steps_per_epoch = train_data.num_batches(0)
        limits = (train_config.max_steps, train_config.epochs * self.steps_per_epoch)
        self.total_steps = min(filter(None, limits), default=0)  # the step limit that ends the run first
        self.state = TrainState(lr=train_config.lr, aggressive=AggressiveState(active=train_config.aggressive))
        self._clock: Optional[tuple[float, float]] = None  # (monotonic at fit start, state seconds then)
        self.signals = StopSignals()
        self.step_fn, self.aggressive = self.train_step, None
        if train_config.aggressive:
            self.aggressive = AggressivePhase(self)
            self.step_fn = self.aggressive.step
        self.collapse_monitor, self.guard = CollapseMonitor(self), FiniteGuard(self)
        self.ae_phase = AEPretraining(self)
        self.policies = [self.ae_phase, PlateauDecay(self), EarlyStop(self), self.collapse_monitor] + \
            ([self.aggressive] if self.aggressive else [])

    # ------------------------------------------------------------ resume
    def resume(self) -> None:
        initial = self.state
        self.state = load_checkpoint(find_checkpoint(self.run_dir), self.model, self.optimizer, initial)
        # The checkpoint written at a stop says "finished"; whether the run is
        # finished now depends on the limits it resumes with (a raised
        # train.max_steps continues it).
        self.state.finished = self._limits_reached()
        if not self.state.finished:
            self.state.stop_reason = None
        self.set_lr(self.state.lr)
        if self.is_main:
            truncate_metrics(self.run_dir, self.state.step)  # drop records written after the checkpoint
        log.info(f"resuming at step {self.state.step} (epoch {self.state.epoch + 1}, batch {self.state.batch})")

    def _limits_reached(self) -> bool:
        """Whether max_steps, the time budget or a policy (early stop, lr decays) ends the run."""
        config, state = self.config, self.state
        return bool(config.max_steps and state.step >= config.max_steps
                    or config.time_budget and state.seconds >= config.time_budget * 60
                    or any(policy.limit_reached() for policy in self.policies))

    # -------------------------------------------------------------- loop
    def fit(self) -> TrainState:
        config, state = self.config, self.state
        self._clock = (time.monotonic(), state.seconds)
        try:
            with self.signals.installed():
                while not state.finished and state.epoch < config.epochs:
                    self._run_epoch()
                if not state.finished:
                    self.stop("epochs")
                    self.checkpoint()
        except _Stop:
            pass
        if self.signals.agreed is None and self.signals.poll():  # one during the final validation or checkpoint
            self._report_stop()
        if not self.interrupted:
            self._finish()
        return state

    def _run_epoch(self) -> None:
        config, state = self.config, self.state
        epoch = state.epoch
        for policy in self.policies:
            policy.before_epoch()
        bar = self._progress_bar(epoch)
        for batch in self.train_data.iterate(epoch, state.batch):
            for policy in self.policies:
                policy.before_step()
            beta = self.current_kl_weight()
            self._apply_lr()
            distributed.seed_step(config.seed, state.step)
            logs = self.step_fn(batch.to(self.device), beta)
            state.step, state.batch = state.step + 1, state.batch + 1
            threads.tick()  # re-choose torch's threads from the machine's load (threads.py)
            for key, value in logs.items():
                state.log_sums[key] = state.log_sums.get(key, 0.0) + value
            state.log_steps += 1
            bar.update(1)
            bar.set_postfix(rec=f"{logs['rec']:.2f}", kl=f"{logs['kl']:.2f}", beta=f"{beta:.3f}", refresh=False)
            if state.step % config.log_every == 0:
                logs = distributed.mean_over_ranks({k: v / state.log_steps for k, v in state.log_sums.items()})
                state.log_sums, state.log_steps = {}, 0
                lr = self.optimizer.param_groups[0]["lr"]
                self._log({"split": "train", "kl_weight": beta, "lr": lr, **logs, **self.guard.log_fields()})
            every = config.aggressive_eval_every if state.aggressive.active and config.aggressive_eval_every \
                else config.eval_every
            if every and state.step % every == 0:
                self.validate()
            if config.max_steps and state.step >= config.max_steps:
                self.stop("max_steps")
            state.seconds = self.elapsed()
            if config.time_budget and not state.finished and self._budget_spent(state.seconds):
                self.log_info(f"time budget of {config.time_budget:g} minutes spent at step {state.step}")
                self.stop("time_budget")
                if state.last_eval_step != state.step:
                    self.validate()  # the annealed end of the run competes for model.safetensors
            stop_signal = self.signals.poll()
            if state.step % config.checkpoint_every == 0 or state.finished or stop_signal:
                self.checkpoint()
            if state.finished or stop_signal:
                bar.close()
                self._report_stop()
                raise _Stop
        bar.close()
        state.epoch += 1
        state.batch = 0
        if not config.eval_every:
            self.validate()
        self.checkpoint()

    def stop(self, reason: str) -> None:
        """End the run after this step (with a checkpoint); ``reason`` is recorded in the state."""
        self.state.finished, self.state.stop_reason = True, reason

    def current_kl_weight(self) -> float:
        if self.ae_phase.active():
            return 0.0  # Li et al. 2019: autoencoder pretraining ignores the KL term
        # Under a time budget the cyclical schedule's cycles divide the budget.
        fraction = self.progress() if self.config.time_budget else None
        return kl_weight(self.objective, self.state.step - self.state.phase_start, self.total_steps, fraction)

    # ------------------------------------------------- time and schedule
    def elapsed(self) -> float:
        """Seconds of fit() over the whole run, this session's included."""
        if self._clock is None:
            return self.state.seconds
        started, before = self._clock
        return before + time.monotonic() - started

    def _budget_spent(self, seconds: float) -> bool:
        spent = seconds >= self.config.time_budget * 60
        return bool(distributed.max_over_ranks(int(spent)))  # the ranks stop at the same step

    def progress(self) -> float:
        """Fraction of the current phase done (``schedule.phase_progress``)."""
        return phase_progress(self.config, self.state, self.total_steps)

    def _apply_lr(self) -> None:
        lr = learning_rate(self.config, self.state, self.total_steps)
        if self.config.time_budget and distributed.is_distributed():
            lr = distributed.from_main(lr)  # rank 0's clock sets every rank's rate
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def set_lr(self, lr: float) -> None:
        """A new base learning rate (plateau decay, resume)."""
        self.state.lr = lr
        self._apply_lr()

    def train_step(self, batch, beta: float, frozen: tuple = ()) -> dict[str, float]:
        """One optimiser step on ``objectives.elbo_loss``, skipped if the loss or gradient is not finite
        (``guard.py``); the ``frozen`` parameters get no gradient (aggressive training updates encoder
        and decoder apart)."""
        self.network.train()
        with self.autocast():
            out = self.network(batch)
            parts: dict[str, float] = {}
            loss = elbo_loss(out, beta, self.objective, parts)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for param in frozen:
            param.grad = None
        self.guard.step(loss)
        return {"loss": float(loss.detach()), "rec": float(out.rec.detach().mean()), "kl": float(out.kl.detach().mean()),
                **parts}

    # -------------------------------------------------------- validation
    def evaluate(self) -> dict[str, Any]:
        # Buffers (BN-VAE's running statistics) follow each rank's batches: all evaluate rank 0's (saved).
        distributed.broadcast_from_main(self.model.buffers())
        return evaluate_elbo(self.model, self.valid_data.iterate(0), self.device, self.autocast)

    def validate(self) -> dict[str, Any]:
        """Validation ELBO, MI and AU; keeps the best weights in ``model.safetensors``;
        then the policies decide (plateau decay, early stop, collapse monitor, aggressive phase)."""
        state = self.state
        result = distributed.from_main(self.evaluate())  # the ranks decide alike
        loss = selection_loss(result, self.objective)
        self._log({"split": "valid", **result, "objective": loss})
        state.last_eval_step = state.step
        if not self.guard.usable(result, loss):
            return result
        self._save_if_best(loss)
        if loss < state.best_loss - IMPROVEMENT:
            state.best_loss, state.since_best = loss, 0
        else:
            state.since_best += 1
        for policy in self.policies:
            policy.after_validation(result)
        summary = f"valid step {state.step}: -elbo {-result['elbo']:.3f} rec {result['rec']:.3f} kl {result['kl']:.3f}"
        if "mi" in result:
            summary += f" mi {result['mi']:.3f} au {result['au']}/{len(result['au_variances'])}"
        log.info(summary)
        return result

    def _save_if_best(self, loss: float) -> None:
        if loss < self.state.saved_best:
            self.state.saved_best = loss
            if self.is_main:
                save_weights(self.model, self.run_dir / WEIGHTS_FILE)

    # ---------------------------------------------------------- plumbing
    def checkpoint(self) -> None:
        distributed.broadcast_from_main(self.model.buffers())  # every rank goes on from the state saved
        if self.is_main:
            save_checkpoint(self.run_dir, self.model, self.optimizer, self.state)
        distributed.barrier()

    def _finish(self) -> None:
        """Make sure ``model.safetensors`` exists (a run stopped before its first validation keeps its last)."""
        if not (self.run_dir / WEIGHTS_FILE).exists() or self.state.saved_best == float("inf"):
            result = self.evaluate()
            self._log({"split": "valid", "final": True, **result})
            self._save_if_best(selection_loss(result, self.objective))

    @property
    def interrupted(self) -> bool:
        """True when a signal stopped the run before it was finished."""
        return self.signals.agreed is not None

    def log_info(self, message: str) -> None:
        if self.is_main:
            log.info(message)

    def _log(self, record: dict[str, Any]) -> None:
        if self.is_main:
            epoch = round(self.state.step / max(1, self.steps_per_epoch), 3)
            append_metrics(self.run_dir, {"step": self.state.step, "epoch": epoch, "time": round(time.time(), 3),
                                          **record})

    def _progress_bar(self, epoch: int):
        from tqdm import tqdm

        disable = not (self.is_main and sys.stderr.isatty())
        return tqdm(total=self.train_data.num_batches(epoch), initial=self.state.batch, file=sys.stderr,
                    desc=f"epoch {epoch + 1}/{self.config.epochs}", disable=disable, dynamic_ncols=True, leave=False)

    def _report_stop(self) -> None:
        if self.interrupted and self.is_main:
            print(f"textvae: interrupted at step {self.state.step}; checkpoint saved, continue with "
                  f"`{self.command} --resume {self.run_dir}`", file=sys.stderr)


class _Stop(Exception):
    """Ends the loop after a checkpoint (max_steps, early stop, a signal)."""
