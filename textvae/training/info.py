"""What a run folder says about its training, for ``textvae info`` and for
scripts, which ask this instead of reading checkpoint files."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..errors import TextVAEError
from ..run_folder import CONFIG_FILE, METRICS_FILE, WEIGHTS_FILE, find_checkpoint, read_kind, read_metrics
from .checkpoint import read_state
from .state import TrainState


@dataclass
class RunInfo:
    """Where a run stands (``textvae info RUN --json`` prints ``to_dict()``)."""

    run: str
    kind: str  # "text" or "image"
    weights: bool  # model.safetensors exists
    # "finished": a limit ended the run (--resume with higher limits continues it);
    # "resumable": it stopped before its limits (e.g. on a signal);
    # "no checkpoint": nothing to resume (e.g. a folder written by save_pretrained).
    status: str = "no checkpoint"
    step: Optional[int] = None
    epoch: Optional[int] = None  # epochs completed
    batch: Optional[int] = None  # batches of the current epoch done
    finished: bool = False
    stop_reason: Optional[str] = None  # max_steps, epochs, time_budget, early_stop or lr_decays
    seconds: Optional[float] = None  # training time over all sessions
    # The validation record of the weights in model.safetensors: step, elbo, rec,
    # kl and, with a latent, mi, au and latent_dim (nats per example).
    best_valid: Optional[dict[str, Any]] = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_info(run_dir: Path) -> RunInfo:
    if not (run_dir / CONFIG_FILE).is_file():
        raise TextVAEError(f"{run_dir} is not a textvae run directory (no {CONFIG_FILE})")
    info = RunInfo(str(run_dir), read_kind(run_dir), (run_dir / WEIGHTS_FILE).exists())
    try:
        find_checkpoint(run_dir)
    except TextVAEError:
        return info
    state = read_state(run_dir)
    return dataclasses.replace(
        info, status="finished" if state.finished and info.weights else "resumable", step=state.step,
        epoch=state.epoch, batch=state.batch, finished=state.finished, stop_reason=state.stop_reason,
        seconds=round(state.seconds, 1), best_valid=best_validation(run_dir, state))


def best_validation(run_dir: Path, state: TrainState) -> Optional[dict[str, Any]]:
    """The logged validation whose objective (``objectives.selection_loss``; the
    -ELBO in runs logged before it was recorded) is that of the saved weights."""
    if state.saved_best == float("inf") or not (run_dir / METRICS_FILE).exists():
        return None
    matches = [r for r in read_metrics(run_dir) if r.get("split") == "valid" and r.get("step", 0) <= state.step
               and r.get("objective", -r.get("elbo", float("nan"))) == state.saved_best]
    if not matches:
        return {"objective": state.saved_best}
    record = matches[-1]
    best = {key: record[key] for key in ("step", "elbo", "objective", "rec", "kl", "mi", "au") if key in record}
    if "au_variances" in record:
        best["latent_dim"] = len(record["au_variances"])
    return best
