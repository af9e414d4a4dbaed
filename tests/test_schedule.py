"""Learning-rate schedules, the run's progress and the time budget."""

import json
import math

import pytest

from textvae.config import ObjectiveConfig, TrainConfig
from textvae.errors import TextVAEError
from textvae.objectives import kl_weight
from textvae.training import trainer as trainer_module
from textvae.training.schedule import lr_factor, progress

from conftest import TINY_FLAGS
from test_training import records, train_cli


def test_progress_is_the_further_of_steps_and_time():
    assert progress(10, 100, 0.0, 0.0) == pytest.approx(0.1)
    assert progress(10, 100, 30.0, 60.0) == pytest.approx(0.5)  # the clock is further along
    assert progress(90, 100, 30.0, 60.0) == pytest.approx(0.9)
    assert progress(500, 100, 0.0, 0.0) == 1.0 and progress(0, 0, 0.0, 0.0) == 0.0


def test_cosine_falls_from_one_to_zero_and_warmup_ramps():
    cosine = TrainConfig(lr_schedule="cosine")
    assert [lr_factor(cosine, 0, f) for f in (0.0, 0.5, 1.0)] == pytest.approx([1.0, 0.5, 0.0])
    factors = [lr_factor(cosine, 0, f / 10) for f in range(11)]
    assert factors == sorted(factors, reverse=True)
    warm = TrainConfig(lr_schedule="cosine", lr_warmup_steps=4)
    assert [lr_factor(warm, s, 0.0) for s in range(5)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])


def test_plateau_keeps_its_rate_until_the_final_fraction():
    plain = TrainConfig()
    assert {lr_factor(plain, 0, f) for f in (0.0, 0.5, 0.99, 1.0)} == {1.0}  # the default changes nothing
    final = TrainConfig(lr_final_fraction=0.2)
    assert lr_factor(final, 0, 0.79) == 1.0
    assert lr_factor(final, 0, 0.9) == pytest.approx(0.5) and lr_factor(final, 0, 1.0) == 0.0


def test_cyclical_annealing_divides_a_time_budget_by_its_progress():
    config = ObjectiveConfig(kl_schedule="cyclical", kl_cycles=4, kl_cycle_ratio=0.5)
    # 4 cycles over the run: a quarter of the run per cycle, rising over its first half.
    assert kl_weight(config, 0, 10**9, fraction=0.0) == 0.0
    assert kl_weight(config, 0, 10**9, fraction=0.0625) == pytest.approx(0.5)
    assert kl_weight(config, 0, 10**9, fraction=0.2) == 1.0
    assert kl_weight(config, 0, 10**9, fraction=0.25) == 0.0  # the second cycle starts again from 0
    assert kl_weight(config, 0, 10**9, fraction=1.0) == 1.0  # the run ends at the top of its last cycle


@pytest.fixture
def fake_clock(monkeypatch):
    """time.monotonic as seen by the trainer: 5 s pass at every look."""
    now = [0.0]

    def monotonic():
        now[0] += 5.0
        return now[0]

    monkeypatch.setattr(trainer_module.time, "monotonic", monotonic)
    return now


def test_a_time_budget_ends_the_run_annealed_with_a_checkpoint_and_a_last_validation(shared_corpus, tmp_path,
                                                                                   fake_clock):
    run = tmp_path / "run"
    train_cli("--data", shared_corpus, "--out", run, *TINY_FLAGS, "--time-budget", "1",
              "--set", "train.lr_schedule=cosine", "--set", "train.eval_every=5", "-q")
    config = json.loads((run / "config.json").read_text())["train"]
    assert config["time_budget"] == 1.0 and config["epochs"] == 1_000_000  # the budget, not epochs, ends it
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["finished"] and state["stop_reason"] == "time_budget"
    assert 60.0 <= state["seconds"] < 75.0
    assert 5 < state["step"] < 20  # one look at the clock a step: about 12 steps of 5 s
    valid = records(run, "valid")
    assert valid[-1]["step"] == state["step"]  # the annealed end was validated
    lrs = [r["lr"] for r in records(run, "train")]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.2 * lrs[0]
    assert (run / "model.safetensors").exists()
    # A larger budget continues the run where the clock left off.
    train_cli("--resume", run, "--time-budget", "2", "-q")
    resumed = json.loads((run / "checkpoint" / "state.json").read_text())
    assert resumed["step"] > state["step"] and 120.0 <= resumed["seconds"] < 135.0
    assert resumed["stop_reason"] == "time_budget"


def test_an_explicit_epoch_limit_still_holds_under_a_budget(shared_corpus, tmp_path):
    run = tmp_path / "run"
    train_cli("--data", shared_corpus, "--out", run, *TINY_FLAGS, "--time-budget", "30",
              "--set", "train.epochs=1", "-q")
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["epoch"] == 1 and state["stop_reason"] == "epochs" and state["seconds"] < 30 * 60


def test_cosine_turns_off_plateau_decays(word_tokenizer, tmp_path):
    from test_training import make_trainer

    trainer = make_trainer(word_tokenizer, tmp_path / "run", max_steps=40, epochs=100, eval_every=2, lr=50.0,
                           lr_patience=1, lr_schedule="cosine")  # lr 50 diverges: validation never improves
    trainer.fit()
    assert not any("decayed" in str(r) for r in records(tmp_path / "run"))
    assert trainer.state.plateau.decays == 0


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_a_bad_time_budget_is_one_error_line(cli, shared_corpus, tmp_path, value):
    result = cli("train", "--data", str(shared_corpus), "--out", str(tmp_path / "run"), *TINY_FLAGS,
                 "--time-budget", value)
    assert result.code == 2 and result.err_lines[-1].startswith("textvae: error: --time-budget")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("key, value", [("train.lr", ".inf"), ("train.lr", ".nan"), ("train.time_budget", "-1"),
                                        ("train.lr_schedule", "linear"), ("train.lr_final_fraction", "1.0")])
def test_bad_schedule_settings_are_refused(key, value):
    from textvae.config import build_config

    with pytest.raises(TextVAEError):
        build_config(None, [f"{key}={value}"])


@pytest.mark.parametrize("key", ["objective.kl_weight", "model.dropout", "train.weight_decay", "train.grad_clip"])
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1e400"])
def test_no_config_number_may_be_infinite_or_nan(key, value):
    from textvae.config import build_config

    with pytest.raises(TextVAEError, match="finite|must be"):
        build_config(None, [f"{key}={value}"])
