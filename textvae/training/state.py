"""The trainer's state: everything besides weights, optimiser and random
numbers that a run needs to go on exactly where it stopped.

``checkpoint.py`` saves it as ``checkpoint/state.json`` (``to_dict``) and
reads it back (``from_dict``). Each policy (``policies.py``,
``aggressive.py``) keeps its counters in a section of its own. Losses are
validation -ELBO in nats per example; times are wall-clock seconds.

Files written before the state was typed hold one flat dict (``plateau_best``,
``bad_evals``, ``collapse_streak``, ``aggressive: true``, ``inner_steps``,
...); ``from_dict`` maps those keys to their sections, fills missing ones
from the run's initial state and refuses keys it does not know, since a run
that cannot restore all of its state cannot resume exactly.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from ..errors import TextVAEError


@dataclass
class PlateauState:
    """Learning-rate decay on a plateau (``train.lr_patience``, ``lr_decay``, ``max_lr_decays``)."""

    bad_evals: int = 0  # validations without improvement since the last improvement or decay
    decays: int = 0  # decays so far; one more than train.max_lr_decays stops the run


@dataclass
class CollapseState:
    """The posterior-collapse monitor."""

    streak: int = 0  # collapsed validations in a row
    warned: bool = False  # the run's one warning has been printed


@dataclass
class AggressiveState:
    """Aggressive inference-network training (He et al. 2019)."""

    active: bool = False  # the phase lasts
    best_mi: float = -math.inf  # highest validation I(x; z) of the phase, nats
    inner_epoch: int = 0  # the encoder's own batch stream: its epoch ...
    inner_batch: int = 0  # ... and the next batch in it
    inner_steps: int = 0  # encoder-only steps in all


@dataclass
class GuardState:
    """The finite-loss guard (``guard.py``)."""

    streak: int = 0  # optimiser steps skipped in a row for a non-finite loss or gradient
    skipped: int = 0  # steps skipped over the whole run


@dataclass
class TrainState:
    step: int = 0  # optimiser steps done (outer steps while the aggressive phase lasts)
    epoch: int = 0  # epochs completed
    batch: int = 0  # batches of the current epoch done: where the data resume
    lr: float = 0.0  # base learning rate after plateau decays; the schedule's factor multiplies it
    phase_start: int = 0  # step at which the current phase began (after AE pretraining: its end)
    phase_start_seconds: float = 0.0  # training seconds at that step
    seconds: float = 0.0  # training seconds over all sessions of the run (train.time_budget), validation included
    last_eval_step: int = -1  # step of the latest validation
    best_loss: float = math.inf  # best validation loss of the phase, the reference for "improved"
    since_best: int = 0  # validations since best_loss last improved (early stopping)
    saved_best: float = math.inf  # loss of the weights in model.safetensors (inf: none saved in this phase)
    finished: bool = False  # a limit ended the run (resuming with higher limits continues it)
    stop_reason: Optional[str] = None  # max_steps, epochs, time_budget, early_stop or lr_decays
    # Training figures summed since the last log line (whose value is their mean),
    # kept so that a resumed run logs exactly what an uninterrupted one does.
    log_sums: dict[str, float] = field(default_factory=dict)
    log_steps: int = 0
    plateau: PlateauState = field(default_factory=PlateauState)
    collapse: CollapseState = field(default_factory=CollapseState)
    aggressive: AggressiveState = field(default_factory=AggressiveState)
    guard: GuardState = field(default_factory=GuardState)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], initial: Optional["TrainState"] = None) -> "TrainState":
        """The state a ``state.json`` holds, over ``initial`` (the run's
        starting state) for whatever the file does not say."""
        if not isinstance(raw, dict):
            raise TextVAEError("the training state must be a JSON object")
        merged = (initial or cls()).to_dict()
        for key, value in _sections(raw).items():
            if key in SECTIONS and isinstance(value, dict):
                merged[key].update(value)
            else:
                merged[key] = value
        return _build(cls, merged, "")


SECTIONS = ("plateau", "collapse", "aggressive", "guard")  # the policies' own states
# Flat keys of the untyped state, by the field they became.
OLD_KEYS = {
    "plateau_best": ("best_loss",),
    "bad_evals": ("plateau", "bad_evals"), "decays": ("plateau", "decays"),
    "collapse_streak": ("collapse", "streak"), "collapse_warned": ("collapse", "warned"),
    "aggressive_best_mi": ("aggressive", "best_mi"), "inner_epoch": ("aggressive", "inner_epoch"),
    "inner_batch": ("aggressive", "inner_batch"), "inner_steps": ("aggressive", "inner_steps"),
}


def _sections(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with the old flat keys moved to their fields."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "aggressive" and isinstance(value, bool):  # the old flag of the phase
            path = ("aggressive", "active")
        else:
            path = OLD_KEYS.get(key, (key,))
        if len(path) == 2:
            out.setdefault(path[0], {})[path[1]] = value
        else:
            out[path[0]] = value
    return out


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise TextVAEError(f"the training state has unknown fields {', '.join(prefix + k for k in unknown)} "
                           "(written by another version of textvae?)")
    kwargs = {}
    for name, value in raw.items():
        if dataclasses.is_dataclass(hints[name]):
            if not isinstance(value, dict):
                raise TextVAEError(f"the training state's {prefix}{name} must be an object")
            value = _build(hints[name], value, f"{prefix}{name}.")
        elif not _fits(value, hints[name]):
            raise TextVAEError(f"the training state's {prefix}{name} cannot be {str(value)[:40]!r} "
                               "(a damaged state.json?)")
        kwargs[name] = value
    return cls(**kwargs)


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value has a field's type (an int stands for a float)."""
    if typing.get_origin(hint) is typing.Union:
        return any(_fits(value, arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) is dict:
        return isinstance(value, dict) and all(isinstance(k, str) and _fits(v, typing.get_args(hint)[1])
                                               for k, v in value.items())
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:  # counters and positions; last_eval_step is -1 before the first validation
        return isinstance(value, int) and not isinstance(value, bool) and value >= -1
    return isinstance(value, hint if isinstance(hint, type) else object)
