"""Run folders: the trainer's typed state (state.json files of the untyped
kind included), ``textvae info`` for people and scripts, and evaluation
files of the MNIST kind written before the shared result schema."""

import json
import math
import shutil
from pathlib import Path

import pytest

from textvae.errors import TextVAEError
from textvae.evaluation.results import read_result
from textvae.training.checkpoint import read_state
from textvae.training.state import AggressiveState, CollapseState, PlateauState, TrainState

ROOT = Path(__file__).resolve().parents[1]

# What the trainer wrote before its state was typed: one flat dict (an aggressive run's).
UNTYPED = {
    "step": 40, "epoch": 5, "batch": 3, "lr": 0.0005, "phase_start": 0, "plateau_best": 52.5, "bad_evals": 1,
    "since_best": 2, "decays": 1, "saved_best": 52.5, "collapse_streak": 1, "collapse_warned": True,
    "finished": False, "stop_reason": None, "aggressive": False, "aggressive_best_mi": 0.75,
    "log_sums": {"loss": 10.5, "rec": 9.0}, "log_steps": 2, "seconds": 61.5, "phase_start_seconds": 0.0,
    "last_eval_step": 35, "inner_epoch": 1, "inner_batch": 4, "inner_steps": 120,
}


def test_the_state_survives_its_json_round_trip():
    state = TrainState(step=7, epoch=1, batch=2, lr=0.01, best_loss=40.0, since_best=1, saved_best=40.5,
                       finished=True, stop_reason="max_steps", log_sums={"rec": 3.5}, log_steps=1,
                       plateau=PlateauState(bad_evals=2, decays=1), collapse=CollapseState(streak=1),
                       aggressive=AggressiveState(active=True, best_mi=0.5, inner_epoch=1, inner_batch=3,
                                                  inner_steps=40))
    assert TrainState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    fresh = TrainState.from_dict(json.loads(json.dumps(TrainState().to_dict())))  # infinities included
    assert fresh.best_loss == fresh.saved_best == math.inf and fresh.aggressive.best_mi == -math.inf


def test_an_untyped_state_loads_into_its_sections():
    state = TrainState.from_dict(UNTYPED)
    assert (state.step, state.epoch, state.batch, state.lr, state.seconds) == (40, 5, 3, 0.0005, 61.5)
    assert (state.best_loss, state.since_best, state.saved_best) == (52.5, 2, 52.5)
    assert state.plateau == PlateauState(bad_evals=1, decays=1)
    assert state.collapse == CollapseState(streak=1, warned=True)
    assert state.aggressive == AggressiveState(active=False, best_mi=0.75, inner_epoch=1, inner_batch=4,
                                               inner_steps=120)
    assert state.log_sums == {"loss": 10.5, "rec": 9.0}


def test_missing_fields_come_from_the_initial_state():
    """A file from before the time budget (no seconds, no last_eval_step) of a
    run that did not train aggressively (no inner_* keys)."""
    older = {k: v for k, v in UNTYPED.items()
             if k not in ("seconds", "phase_start_seconds", "last_eval_step", "inner_epoch", "inner_batch",
                          "inner_steps", "aggressive_best_mi", "lr")}
    initial = TrainState(lr=0.001, aggressive=AggressiveState(active=True))
    state = TrainState.from_dict(older, initial)
    assert (state.seconds, state.phase_start_seconds, state.last_eval_step, state.lr) == (0.0, 0.0, -1, 0.001)
    assert state.aggressive == AggressiveState(active=False)  # the file's flag wins; the rest is the initial state's
    assert initial.aggressive.active  # the initial state itself is untouched


@pytest.mark.parametrize("raw, fragment", [
    ({"step": 1, "wobble": 2}, "wobble"),
    ({"plateau": {"decays": 1, "patience": 3}}, "plateau.patience"),
    ({"collapse": 3}, "collapse must be an object"),
])
def test_unknown_or_malformed_state_fields_are_refused(raw, fragment):
    with pytest.raises(TextVAEError, match=fragment):
        TrainState.from_dict(raw)


# ---------------------------------------------------------------- info
def info(cli, run, *flags):
    result = cli("info", run, *flags)
    assert result.code == 0, result.err
    return result


def test_info_says_where_a_finished_run_stands(cli, trained_run):
    facts = json.loads(info(cli, trained_run, "--json").out)
    state = read_state(trained_run)
    assert facts["kind"] == "text" and facts["status"] == "finished" and facts["finished"] and facts["weights"]
    assert (facts["step"], facts["epoch"], facts["stop_reason"]) == (state.step, 3, "epochs")
    valid = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    best = max((r for r in valid if r["split"] == "valid"), key=lambda r: r["elbo"])
    assert facts["best_valid"] == {"step": best["step"], "elbo": best["elbo"], "objective": -best["elbo"],
                                   "rec": best["rec"], "kl": best["kl"], "mi": best["mi"], "au": best["au"],
                                   "latent_dim": 4}
    assert info(cli, trained_run, "--get", "status").out == "finished\n"
    assert info(cli, trained_run, "--get", "step").out == f"{state.step}\n"
    human = info(cli, trained_run).out_lines
    assert human[1].split() == ["status", "finished", "(epochs)"]
    assert any(line.startswith("best valid") and f"-elbo {-best['elbo']:.3f}" in line for line in human)


def test_info_on_a_stopped_run_and_on_a_saved_model(cli, trained_run, tmp_path):
    stopped = shutil.copytree(trained_run, tmp_path / "stopped")
    state = json.loads((stopped / "checkpoint" / "state.json").read_text())
    (stopped / "checkpoint" / "state.json").write_text(json.dumps({**state, "finished": False, "stop_reason": None}))
    assert info(cli, stopped, "--get", "status").out == "resumable\n"
    saved = tmp_path / "saved"
    from textvae.model import TextVAE

    TextVAE.from_pretrained(trained_run).save_pretrained(saved)
    facts = json.loads(info(cli, saved, "--json").out)
    assert facts["status"] == "no checkpoint" and facts["step"] is None and facts["weights"]
    for args in ([tmp_path / "nowhere"], [saved, "--get", "colour"]):
        result = cli("info", *args)
        assert result.code == 2 and len(result.err_lines) == 1 and result.err.startswith("textvae: error: ")


# ---------------------------------------------------- the result schema
def test_mnist_evaluations_from_before_the_shared_schema_read_in_it():
    old = ROOT / "results" / "mnist" / "eval-tuned-test-full-iw5000-gpu.json"
    raw = json.loads(old.read_text())
    result = read_result(old)
    assert "iw_nll" in raw and "active_units" in raw  # the file keeps its own keys ...
    assert (result["nll"], result["nll_stderr"], result["au"]) == (raw["iw_nll"], raw["iw_nll_stderr"],
                                                                   raw["active_units"])  # ... read in the new ones
    assert result["unit"] == "nats per image" and result["kl"] == raw["kl"]


def test_a_config_json_with_the_retired_num_workers_still_loads(trained_run, tmp_path):
    """Run folders written before data.num_workers was removed (it was read nowhere) load as they are."""
    from textvae.config import Config
    from textvae.model import TextVAE

    old = shutil.copytree(trained_run, tmp_path / "old")
    raw = json.loads((old / "config.json").read_text())
    raw["data"]["num_workers"] = 0
    (old / "config.json").write_text(json.dumps(raw))
    assert TextVAE.from_pretrained(old).config == Config.from_dict(raw)
    with pytest.raises(TextVAEError, match="data.num_wrokers"):  # other unknown keys are still refused
        Config.from_dict({"data": {"num_wrokers": 0}})
