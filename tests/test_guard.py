"""The finite-loss guard (issue 16): a step whose loss is NaN or inf is
skipped and counted, enough of them in a row stop the run with its last
checkpoint kept, a non-finite validation decides nothing, weights that are
not finite are never written, and on the command line a diverging run or an
infinite learning rate is one error line."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import textvae.training.trainer as trainer_module
from textvae.errors import TextVAEError
from textvae.run_folder import find_checkpoint, save_weights
from textvae.training.checkpoint import save_checkpoint
from textvae.training.state import CollapseState, PlateauState, TrainState

from conftest import TINY_FLAGS, no_tmp_left
from test_cli import assert_one_error_line
from test_training import make_trainer, records


def poison(monkeypatch, trainer, bad_steps):
    """Make the loss NaN at the (1-based) ``bad_steps``; returns the weights seen at the start of each step."""
    real, seen = trainer_module.elbo_loss, {}

    def loss(out, beta, objective, parts=None):
        step = trainer.state.step + 1
        seen[step] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        value = real(out, beta, objective, parts)
        return value * float("nan") if step in bad_steps else value

    monkeypatch.setattr(trainer_module, "elbo_loss", loss)
    return seen


def test_a_non_finite_loss_skips_the_step_and_is_counted(word_tokenizer, tmp_path, monkeypatch):
    run = tmp_path / "run"
    trainer = make_trainer(word_tokenizer, run, max_steps=8, epochs=100, eval_every=4, checkpoint_every=4)
    seen = poison(monkeypatch, trainer, {2, 3, 5})
    state = trainer.fit()
    assert state.step == 8 and state.stop_reason == "max_steps"
    for step in (2, 3, 5):  # a skipped step leaves the weights as they were
        assert all(torch.equal(seen[step][k], seen[step + 1][k]) for k in seen[step])
    assert not all(torch.equal(seen[1][k], seen[2][k]) for k in seen[1])  # a good step moves them
    assert (state.guard.skipped, state.guard.streak) == (3, 0)
    train = {r["step"]: r for r in records(run, "train")}
    assert math.isnan(train[2]["loss"]) and math.isfinite(train[4]["loss"])
    assert "skipped_steps" not in train[1] and train[3]["skipped_steps"] == 2 and train[8]["skipped_steps"] == 3
    saved = json.loads((find_checkpoint(run) / "state.json").read_text())
    assert saved["guard"] == {"streak": 0, "skipped": 3}  # a resumed run goes on counting
    assert TrainState.from_dict(saved).guard.skipped == 3


def test_steps_non_finite_in_a_row_stop_the_run_keeping_the_checkpoint(word_tokenizer, tmp_path, monkeypatch):
    run = tmp_path / "run"
    trainer = make_trainer(word_tokenizer, run, max_steps=50, epochs=100, checkpoint_every=2, max_nonfinite_steps=4)
    poison(monkeypatch, trainer, set(range(3, 100)))
    with pytest.raises(TextVAEError, match="training diverged: 4 steps in a row .* the last at step 6"):
        trainer.fit()
    saved = json.loads((find_checkpoint(run) / "state.json").read_text())
    assert saved["step"] == 4 and saved["guard"] == {"streak": 2, "skipped": 2}
    weights = load_file(find_checkpoint(run) / "model.safetensors")
    assert all(bool(torch.isfinite(t).all()) for t in weights.values())


def test_non_finite_validation_decides_nothing(word_tokenizer, tmp_path, monkeypatch):
    run = tmp_path / "run"
    trainer = make_trainer(word_tokenizer, run, max_steps=8, epochs=100, eval_every=2, lr_patience=1,
                           early_stop_patience=1)
    nan = float("nan")
    monkeypatch.setattr(trainer, "evaluate", lambda: {"elbo": nan, "rec": nan, "kl": nan, "mi": nan, "au": 0,
                                                      "au_variances": [0.0] * 4})
    state = trainer.fit()
    assert state.step == 8 and state.stop_reason == "max_steps"  # no early stop
    assert state.since_best == 0 and state.best_loss == math.inf and state.saved_best == math.inf
    assert state.plateau == PlateauState() and state.lr == 0.01  # no decay
    assert state.collapse == CollapseState()  # no collapse warning
    assert not (run / "model.safetensors").exists()  # no NaN "best" weights
    assert len(records(run, "valid")) == 5  # logged all the same (4 validations and the final one)


def test_weights_that_are_not_finite_are_never_written(tmp_path):
    model = torch.nn.Linear(3, 2)
    save_weights(model, tmp_path / "model.safetensors")
    optimizer = torch.optim.Adam(model.parameters())
    save_checkpoint(tmp_path, model, optimizer, TrainState(step=1))
    before = (tmp_path / "model.safetensors").read_bytes(), (tmp_path / "checkpoint" / "model.safetensors").read_bytes()
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    with pytest.raises(TextVAEError, match="weight weight is not finite"):
        save_weights(model, tmp_path / "model.safetensors")
    with pytest.raises(TextVAEError, match="the last one is kept"):
        save_checkpoint(tmp_path, model, optimizer, TrainState(step=2))
    after = (tmp_path / "model.safetensors").read_bytes(), (tmp_path / "checkpoint" / "model.safetensors").read_bytes()
    assert after == before and no_tmp_left(tmp_path)


def test_a_diverging_run_is_one_error_line(cli, shared_corpus, tmp_path):
    run = tmp_path / "run"
    result = cli("train", "--data", shared_corpus, "--out", run, *TINY_FLAGS, "--set", "train.lr=1e30",
                 "--set", "train.optimizer=sgd", "--set", "train.grad_clip=0", "--set", "train.max_nonfinite_steps=5",
                 "--set", "train.checkpoint_every=2", "--set", "train.epochs=50")
    assert_one_error_line(result, "training diverged", "train.lr")
    assert result.code == 2
    for path in [run / "model.safetensors", find_checkpoint(run) / "model.safetensors"]:
        if path.exists():
            assert all(bool(torch.isfinite(t).all()) for t in load_file(path).values())


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1e400"])
def test_an_infinite_learning_rate_is_refused(cli, shared_corpus, tmp_path, value):
    result = cli("train", "--data", shared_corpus, "--out", tmp_path / "run", *TINY_FLAGS, "--set", f"train.lr={value}")
    assert_one_error_line(result, "train.lr")
    assert not (tmp_path / "run").exists()
