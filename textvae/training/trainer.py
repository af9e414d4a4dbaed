"""The training loop shared by the text and image models.

The trainer takes built objects (model, data, configs, run folder) and never
parses arguments. A model offers ``forward(batch) -> VAEOutput`` (objectives)
and, for the anti-collapse remedies, ``posterior``; the data offer
``num_batches(epoch)`` and ``iterate(epoch, start)``.

What a run folder gets: ``model.safetensors`` (the best weights by validation
ELBO), ``checkpoint/`` (everything needed to resume exactly), ``metrics.jsonl``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..config import ObjectiveConfig, TrainConfig
from ..evaluation.elbo import evaluate_elbo
from ..objectives import elbo_loss, kl_weight
from . import distributed
from .checkpoint import find_checkpoint, load_checkpoint, save_checkpoint, save_weights
from .schedule import lr_factor, progress

log = logging.getLogger("textvae")

COLLAPSE_KL = 0.1  # nats per example
COLLAPSE_PATIENCE = 2  # evaluations in a row
REMEDIES = [  # (setting, is it already on?) for the collapse warning
    ("objective.kl_schedule=linear or cyclical", lambda t, o, m: o.kl_schedule != "constant"),
    ("model.word_dropout=0.3", lambda t, o, m: getattr(m, "word_dropout", 0) > 0),
    ("objective.free_bits=0.5", lambda t, o, m: o.free_bits > 0),
    ("model.bn_vae_gamma=0.6", lambda t, o, m: getattr(m, "bn_vae_gamma", 0) > 0),
    ("train.aggressive=true", lambda t, o, m: t.aggressive),
    ("train.ae_pretrain_epochs=N", lambda t, o, m: t.ae_pretrain_epochs > 0),
]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        from ..errors import TextVAEError

        raise TextVAEError(f"train.device={name} but no CUDA device is available")
    return torch.device(name)


def describe_device(device: torch.device) -> str:
    """What ran a job, for result files: "cpu, 2 threads" or "cuda:0, NVIDIA H200"."""
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        return f"cuda:{index}, {torch.cuda.get_device_name(index)}"
    threads = torch.get_num_threads()
    return f"{device}, {threads} thread{'s' if threads != 1 else ''}"


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 runs natively here: CUDA, or a CPU with AVX-512 BF16 or
    AMX. Elsewhere (e.g. an AVX2-only EPYC) oneDNN has no bf16 LSTM and its
    bf16 matrix products emulate: 5x slower than fp32 (measured 8 vs 43
    GFLOP/s at one thread on a 256 x 10,003 projection)."""
    if device.type == "cuda":
        return True
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def effective_precision(device: torch.device, precision: str) -> str:
    """``precision`` as it runs on ``device``: bf16 falls back to fp32 where
    the hardware has no bf16 (said once in the log)."""
    if precision == "bf16" and not native_bf16(device):
        if not getattr(effective_precision, "_warned", False):
            effective_precision._warned = True
            log.info("bf16 asked for, but this CPU has no native bf16 (no AVX-512 BF16 or AMX): running fp32")
        return "fp32"
    return precision


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast on CUDA and CPUs with native bf16; fp32 otherwise."""
    if effective_precision(device, precision) == "bf16":
        return partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam or SGD with torch's fused kernels: one pass over each tensor per
    step instead of about ten elementwise ones. On the 8.8M-parameter PTB
    model an Adam step takes 6.6 ms instead of 53 at one CPU thread, a sixth
    of a whole training step saved (scripts/benchmark.py)."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in FUSED_DTYPES for p in params)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                               fused=fused)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused)


class Trainer:
    def __init__(self, model: nn.Module, train_config: TrainConfig, objective: ObjectiveConfig, train_data,
                 valid_data, run_dir: str | Path, command: str = "textvae train") -> None:
        self.config, self.objective = train_config, objective
        self.run_dir = Path(run_dir)
        self.command = command  # what continues the run, for the interrupt message
        self.device = resolve_device(train_config.device)
        if train_config.num_threads:
            torch.set_num_threads(train_config.num_threads)
        self.model = model.to(self.device)
        self.network = distributed.wrap(self.model, self.device)  # DDP when launched with torchrun
        self.is_main = distributed.rank() == 0
        self.train_data, self.valid_data = train_data, valid_data
        self.optimizer = build_optimizer(self.model, train_config)
        self.autocast = autocast_context(self.device, train_config.precision)
        self.steps_per_epoch = train_data.num_batches(0)
        self.total_steps = train_config.max_steps or train_config.epochs * self.steps_per_epoch
        self.state: dict[str, Any] = {
            "step": 0, "epoch": 0, "batch": 0, "lr": train_config.lr, "phase_start": 0,
            "plateau_best": math.inf, "bad_evals": 0, "since_best": 0, "decays": 0,
            "saved_best": math.inf, "collapse_streak": 0, "collapse_warned": False, "finished": False,
            "stop_reason": None, "aggressive": train_config.aggressive, "aggressive_best_mi": -math.inf,
            # Training figures summed since the last log line (its mean), kept
            # here so a resumed run logs exactly what an uninterrupted one does.
            "log_sums": {}, "log_steps": 0,
            # Wall-clock seconds spent in fit() over all sessions of the run
            # (train.time_budget), and where the current phase began.
            "seconds": 0.0, "phase_start_seconds": 0.0, "last_eval_step": -1,
        }
        self._clock: Optional[tuple[float, float]] = None  # (monotonic at fit start, state seconds then)
        # A signal handler records what this process received; the loop stops on
        # the signal that any rank received, agreed at each step (torchrun
        # forwards a signal to every worker, but not at the same step).
        self._signal_received: Optional[int] = None
        self._stop_signal: Optional[int] = None
        self.step_fn, self.aggressive = self.train_step, None
        if train_config.aggressive:
            from .aggressive import AggressiveSteps

            if distributed.is_distributed():
                from ..errors import TextVAEError

                raise TextVAEError("train.aggressive does not run with several processes")
            self.aggressive = AggressiveSteps(self)
            self.step_fn = self.aggressive.step

    # ------------------------------------------------------------ resume
    def resume(self) -> None:
        self.state.update(load_checkpoint(find_checkpoint(self.run_dir), self.model, self.optimizer))
        # The checkpoint written at a stop says "finished"; whether the run is
        # finished now depends on the limits it resumes with (a raised
        # train.max_steps continues it).
        self.state["finished"] = self._limits_reached()
        if not self.state["finished"]:
            self.state["stop_reason"] = None
        self._set_lr(self.state["lr"])
        metrics = self.run_dir / "metrics.jsonl"
        if metrics.exists() and self.is_main:  # drop records written after the checkpoint
            kept = [line for line in metrics.read_text().splitlines() if json.loads(line)["step"] <= self.state["step"]]
            metrics.write_text("".join(line + "\n" for line in kept))
        log.info(f"resuming at step {self.state['step']} (epoch {self.state['epoch'] + 1}, batch {self.state['batch']})")

    def _limits_reached(self) -> bool:
        """Whether max_steps, early stopping or the lr-decay budget ends the run."""
        config, state = self.config, self.state
        return bool(config.max_steps and state["step"] >= config.max_steps
                    or config.time_budget and state["seconds"] >= config.time_budget * 60
                    or config.early_stop_patience and state["since_best"] >= config.early_stop_patience
                    or config.max_lr_decays and state["decays"] > config.max_lr_decays)

    # -------------------------------------------------------------- loop
    def fit(self) -> dict[str, Any]:
        config, state = self.config, self.state
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        self._clock = (time.monotonic(), state["seconds"])
        try:
            while not state["finished"] and state["epoch"] < config.epochs:
                self._run_epoch()
            if not state["finished"]:
                self._stop("epochs")
                self.checkpoint()
        except _Stop:
            pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if not self.interrupted:
            self._finish()
        return state

    def _run_epoch(self) -> None:
        config, state = self.config, self.state
        epoch = state["epoch"]
        self._maybe_end_pretraining()
        progress = self._progress(epoch)
        for batch in self.train_data.iterate(epoch, state["batch"]):
            beta = self.current_kl_weight()
            self._apply_lr()
            distributed.seed_step(config.seed, state["step"])
            logs = self.step_fn(batch.to(self.device), beta)
            state["step"] += 1
            state["batch"] += 1
            window = state["log_sums"]
            for key, value in logs.items():
                window[key] = window.get(key, 0.0) + value
            state["log_steps"] += 1
            progress.update(1)
            progress.set_postfix(rec=f"{logs['rec']:.2f}", kl=f"{logs['kl']:.2f}", beta=f"{beta:.3f}", refresh=False)
            if state["step"] % config.log_every == 0:
                logs = distributed.mean_over_ranks({k: v / state["log_steps"] for k, v in window.items()})
                state["log_sums"], state["log_steps"] = {}, 0
                lr = self.optimizer.param_groups[0]["lr"]
                self._log({"split": "train", "kl_weight": beta, "lr": lr, **logs})
            every = config.aggressive_eval_every if state["aggressive"] and config.aggressive_eval_every \
                else config.eval_every
            if every and state["step"] % every == 0:
                self.validate()
            if config.max_steps and state["step"] >= config.max_steps:
                self._stop("max_steps")
            state["seconds"] = self.elapsed()
            if config.time_budget and not state["finished"] and self._budget_spent(state["seconds"]):
                self.log_info(f"time budget of {config.time_budget:g} minutes spent at step {state['step']}")
                self._stop("time_budget")
                if state["last_eval_step"] != state["step"]:
                    self.validate()  # the annealed end of the run competes for model.safetensors
            self._stop_signal = distributed.max_over_ranks(self._signal_received or 0) or None
            if state["step"] % config.checkpoint_every == 0 or state["finished"] or self._stop_signal:
                self.checkpoint()
            if state["finished"] or self._stop_signal:
                progress.close()
                self._report_stop()
                raise _Stop
        progress.close()
        state["epoch"] += 1
        state["batch"] = 0
        if not config.eval_every:
            self.validate()
        self.checkpoint()

    def _stop(self, reason: str) -> None:
        self.state["finished"], self.state["stop_reason"] = True, reason

    def current_kl_weight(self) -> float:
        if self.state["epoch"] < self.config.ae_pretrain_epochs:
            return 0.0  # Li et al. 2019: autoencoder pretraining ignores the KL term
        # Under a time budget the cyclical schedule's cycles divide the budget.
        fraction = self.progress() if self.config.time_budget else None
        return kl_weight(self.objective, self.state["step"] - self.state["phase_start"], self.total_steps, fraction)

    # ------------------------------------------------- time and schedule
    def elapsed(self) -> float:
        """Seconds of fit() over the whole run, this session's included."""
        if self._clock is None:
            return self.state["seconds"]
        started, before = self._clock
        return before + time.monotonic() - started

    def _budget_spent(self, seconds: float) -> bool:
        spent = seconds >= self.config.time_budget * 60
        return bool(distributed.max_over_ranks(int(spent)))  # the ranks stop at the same step

    def progress(self) -> float:
        """Fraction of the current phase (the run, or the VAE phase after AE
        pretraining) done, by steps or by the time budget."""
        state, config = self.state, self.config
        budget = config.time_budget * 60 - state["phase_start_seconds"] if config.time_budget else 0.0
        return progress(state["step"] - state["phase_start"], self.total_steps - state["phase_start"],
                        state["seconds"] - state["phase_start_seconds"], budget)

    def _apply_lr(self) -> None:
        """The optimiser's rate: the plateau-decayed base times the schedule's factor."""
        state = self.state
        lr = state["lr"] * lr_factor(self.config, state["step"] - state["phase_start"], self.progress())
        if self.config.time_budget and distributed.is_distributed():
            lr = distributed.from_main(lr)  # rank 0's clock sets every rank's rate
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def train_step(self, batch, beta: float, frozen: tuple = ()) -> dict[str, float]:
        """One optimiser step on the (floored, weighted) negative ELBO. The
        ``frozen`` parameters get no gradient, so the optimiser leaves them
        as they are (aggressive training updates encoder and decoder apart)."""
        self.network.train()
        with self.autocast():
            out = self.network(batch)
            loss = elbo_loss(out, beta, self.objective)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for param in frozen:
            param.grad = None
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.grad is not None],
                                           self.config.grad_clip)
        self.optimizer.step()
        return {"loss": float(loss.detach()), "rec": float(out.rec.detach().mean()), "kl": float(out.kl.detach().mean())}

    # -------------------------------------------------------- validation
    def evaluate(self) -> dict[str, Any]:
        # Buffers (BN-VAE's running statistics) follow each rank's own batches:
        # every rank evaluates rank 0's, the ones that are saved.
        distributed.broadcast_from_main(self.model.buffers())
        return evaluate_elbo(self.model, self.valid_data.iterate(0), self.device, self.autocast)

    def validate(self) -> dict[str, Any]:
        """Validation ELBO, MI and AU; plateau decay, early stopping, collapse
        monitor; keeps the best weights in ``model.safetensors``."""
        state, config = self.state, self.config
        result = distributed.from_main(self.evaluate())  # the ranks decide alike
        loss = -result["elbo"]
        self._log({"split": "valid", **result})
        state["last_eval_step"] = state["step"]
        self._save_if_best(loss)
        if loss < state["plateau_best"] - 1e-4:
            state["plateau_best"], state["bad_evals"], state["since_best"] = loss, 0, 0
        else:
            state["bad_evals"] += 1
            state["since_best"] += 1
            if config.lr_schedule == "plateau" and config.max_lr_decays and state["bad_evals"] >= config.lr_patience > 0:
                state["bad_evals"] = 0
                state["decays"] += 1
                if state["decays"] > config.max_lr_decays:
                    log.info(f"stopping: validation did not improve after {config.max_lr_decays} learning-rate decays")
                    self._stop("lr_decays")
                else:
                    self._set_lr(state["lr"] * config.lr_decay)
                    log.info(f"learning rate decayed to {state['lr']:.3g}")
            if config.early_stop_patience and state["since_best"] >= config.early_stop_patience:
                log.info(f"early stopping: no improvement in {state['since_best']} evaluations")
                self._stop("early_stop")
        self._monitor_collapse(result)
        if self.aggressive:
            self.aggressive.after_validation(result)
        summary = f"valid step {state['step']}: -elbo {loss:.3f} rec {result['rec']:.3f} kl {result['kl']:.3f}"
        if "mi" in result:
            summary += f" mi {result['mi']:.3f} au {result['au']}/{len(result['au_variances'])}"
        log.info(summary)
        return result

    def _monitor_collapse(self, result: dict[str, Any]) -> None:
        """Posterior collapse: KL per example under 0.1 nats, or no active unit,
        for COLLAPSE_PATIENCE evaluations in a row -> one warning line."""
        state = self.state
        if "au" not in result or self.current_kl_weight() == 0:
            return
        collapsed = result["kl"] < COLLAPSE_KL or result["au"] == 0
        state["collapse_streak"] = state["collapse_streak"] + 1 if collapsed else 0
        if state["collapse_streak"] >= COLLAPSE_PATIENCE and not state["collapse_warned"]:
            state["collapse_warned"] = True
            if self.is_main:
                model_config = getattr(getattr(self.model, "config", None), "model", None)
                untried = [name for name, active in REMEDIES if not active(self.config, self.objective, model_config)]
                print(f"textvae: warning: posterior collapse at step {state['step']}: KL {result['kl']:.3f} nats "
                      f"per example, {result['au']} active units; try {', '.join(untried) or 'a stronger remedy'}",
                      file=sys.stderr)

    def _save_if_best(self, loss: float) -> None:
        if loss < self.state["saved_best"]:
            self.state["saved_best"] = loss
            if self.is_main:
                save_weights(self.model, self.run_dir / "model.safetensors")

    # ---------------------------------------------------------- plumbing
    def checkpoint(self) -> None:
        distributed.broadcast_from_main(self.model.buffers())  # every rank goes on from the state saved
        if self.is_main:
            save_checkpoint(self.run_dir, self.model, self.optimizer, self.state)
        distributed.barrier()

    def _finish(self) -> None:
        """Make sure ``model.safetensors`` exists: a run that stopped before its
        first validation keeps its last weights if they are the best so far."""
        if not (self.run_dir / "model.safetensors").exists() or self.state["saved_best"] == math.inf:
            result = self.evaluate()
            self._log({"split": "valid", "final": True, **result})
            self._save_if_best(-result["elbo"])

    def _maybe_end_pretraining(self) -> None:
        """Li et al. 2019: after ``ae_pretrain_epochs`` of autoencoder training,
        re-initialise the decoder and start the VAE phase with fresh Adam state."""
        state = self.state
        if self.config.ae_pretrain_epochs and state["epoch"] == self.config.ae_pretrain_epochs and state["batch"] == 0 \
                and state["phase_start"] == 0:
            self.model.reset_decoder()
            distributed.broadcast_from_main(self.model.parameters())  # the ranks' random streams differ
            self.optimizer = build_optimizer(self.model, self.config)
            state["phase_start"], state["lr"] = state["step"], self.config.lr
            state["phase_start_seconds"] = self.elapsed()
            state["plateau_best"], state["saved_best"] = math.inf, math.inf
            log.info("autoencoder pretraining done: decoder re-initialised")

    @property
    def interrupted(self) -> bool:
        """True when a signal stopped the run before it was finished."""
        return self._stop_signal is not None

    def log_info(self, message: str) -> None:
        if self.is_main:
            log.info(message)

    def _set_lr(self, lr: float) -> None:
        self.state["lr"] = lr
        self._apply_lr()

    def _log(self, record: dict[str, Any]) -> None:
        if self.is_main:
            epoch = round(self.state["step"] / max(1, self.steps_per_epoch), 3)
            record = {"step": self.state["step"], "epoch": epoch, "time": round(time.time(), 3), **record}
            with open(self.run_dir / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps(record) + "\n")

    def _progress(self, epoch: int):
        from tqdm import tqdm

        disable = not (self.is_main and sys.stderr.isatty())
        return tqdm(total=self.train_data.num_batches(epoch), initial=self.state["batch"], file=sys.stderr,
                    desc=f"epoch {epoch + 1}/{self.config.epochs}", disable=disable, dynamic_ncols=True, leave=False)

    def _on_signal(self, signum: int, frame) -> None:
        if self._signal_received is not None:  # second signal: give up at once
            raise KeyboardInterrupt
        self._signal_received = signum

    def _report_stop(self) -> None:
        if self._stop_signal and self.is_main:
            print(f"textvae: interrupted at step {self.state['step']}; checkpoint saved, continue with "
                  f"`{self.command} --resume {self.run_dir}`", file=sys.stderr)


class _Stop(Exception):
    """Ends the loop after a checkpoint (max_steps, early stop, a signal)."""
