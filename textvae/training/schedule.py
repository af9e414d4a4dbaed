"""Learning-rate schedules and the run's progress.

A run ends at whichever limit comes first: ``train.max_steps``,
``train.epochs`` or ``train.time_budget`` (minutes). ``progress`` is the
fraction of the run done by the nearest of these, so a schedule tied to the
budget ("train for an hour") spends its last, low-learning-rate stretch at the
end of the hour, and the same schedule on a step budget at the end of the
steps. With a time budget the learning rate follows the clock, so a resumed
run is no longer bitwise equal to an uninterrupted one (step budgets stay
exact).
"""

from __future__ import annotations

import math

from ..config import TrainConfig
from .state import TrainState


def progress(step: int, total_steps: int, seconds: float, budget_seconds: float) -> float:
    """Fraction in [0, 1] of the run (or phase) done: steps and time, the further along."""
    done = step / total_steps if total_steps > 0 else 0.0
    if budget_seconds > 0:
        done = max(done, seconds / budget_seconds)
    return min(1.0, max(0.0, done))


def lr_factor(config: TrainConfig, step: int, fraction: float) -> float:
    """Multiplier on the (plateau-decayed) base learning rate.

    - warm-up: linear from 1/warmup to 1 over ``lr_warmup_steps`` (``step``
      counts from the phase start);
    - cosine: 0.5 (1 + cos(pi * fraction)), from 1 to 0 over the run
      (SGDR, Loshchilov & Hutter 2017, one cycle without restarts);
    - plateau with ``lr_final_fraction`` f: 1 until 1 - f, then linearly to 0,
      so the run ends annealed whatever the plateau decays did.
    """
    factor = min(1.0, (step + 1) / config.lr_warmup_steps) if config.lr_warmup_steps else 1.0
    if config.lr_schedule == "cosine":
        return factor * 0.5 * (1.0 + math.cos(math.pi * fraction))
    if config.lr_final_fraction > 0 and fraction > 1.0 - config.lr_final_fraction:
        return factor * max(0.0, (1.0 - fraction) / config.lr_final_fraction)
    return factor


def phase_progress(config: TrainConfig, state: TrainState, total_steps: int) -> float:
    """Fraction of the current phase (the run, or the VAE phase after AE
    pretraining) done, by steps or by the time budget."""
    budget = config.time_budget * 60 - state.phase_start_seconds if config.time_budget else 0.0
    return progress(state.step - state.phase_start, total_steps - state.phase_start,
                    state.seconds - state.phase_start_seconds, budget)


def learning_rate(config: TrainConfig, state: TrainState, total_steps: int) -> float:
    """The optimiser's rate now: the plateau-decayed base times the schedule's factor."""
    return state.lr * lr_factor(config, state.step - state.phase_start, phase_progress(config, state, total_steps))
