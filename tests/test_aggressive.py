"""Aggressive training on a tiny model: encoder-only inner loops that stop
when their loss stops falling, inner (encoder) and outer (decoder) updates
that touch only their own parameters, and a phase that validates at its own
cadence and ends when validation MI falls or at its step cap."""

import pytest
import torch

from textvae.training import aggressive

from test_remedies import make_trainer, train_records


def snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def unchanged(params, before) -> bool:
    return all(torch.equal(p, b) for p, b in zip(params, before))


def all_changed(params, before) -> bool:
    return all(not torch.equal(p, b) for p, b in zip(params, before))


def test_aggressive_training_runs_encoder_only_inner_loops(word_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(aggressive, "CHECK_EVERY", 2)
    trainer = make_trainer(word_tokenizer, tmp_path / "run", max_steps=4, epochs=10, aggressive=True,
                           aggressive_max_inner=10)
    state = trainer.fit()
    inner = [r["inner_steps"] for r in train_records(tmp_path / "run")]
    assert len(inner) == 4 and state.aggressive.inner_steps == sum(inner) > 0
    # Each outer step: at least two windows of CHECK_EVERY steps (the first
    # always improves on nothing), whole windows only, at most the maximum.
    assert all(4 <= n <= 10 and (n % 2 == 0 or n == 10) for n in inner), inner
    assert min(inner) < 10  # some inner loop stopped when its loss stopped falling
    assert state.aggressive.active  # no validation yet: the phase goes on


@pytest.fixture
def aggressive_trainer(word_tokenizer, tmp_path):
    return make_trainer(word_tokenizer, tmp_path / "run", aggressive=True, aggressive_max_inner=3)


@pytest.mark.parametrize("losses, expected", [
    ([5, 5, 4, 4, 3, 3, 3.5, 3.5, 1, 1, 1, 1], 8),  # the fourth window's mean rose: stop after it
    ([5, 5, 4, 4, 4, 4, 1, 1], 6),  # a flat window also stops
    ([9, 8, 7, 6, 5, 4, 3, 2, 1, 0, -1, -2, -3], 10),  # always falling: the maximum
])
def test_inner_loop_stops_when_the_loss_stops_falling(aggressive_trainer, monkeypatch, losses, expected):
    monkeypatch.setattr(aggressive, "CHECK_EVERY", 2)
    aggressive_trainer.config.aggressive_max_inner = 10
    steps = aggressive_trainer.aggressive
    scripted = iter(losses)
    monkeypatch.setattr(steps, "_next_batch", lambda: None)
    monkeypatch.setattr(aggressive_trainer, "train_step", lambda batch, beta, frozen=(): {"loss": next(scripted)})
    assert steps.update_encoder(1.0) == expected


def test_aggressive_updates_touch_only_their_own_parameters(aggressive_trainer):
    steps = aggressive_trainer.aggressive
    assert steps.decoder_params and steps.encoder_params
    names = {id(p): n for n, p in aggressive_trainer.model.named_parameters()}
    assert all(names[id(p)].startswith("decoder.") for p in steps.decoder_params)
    assert any(names[id(p)].startswith("posterior_head.") for p in steps.encoder_params)

    encoder, decoder = snapshot(steps.encoder_params), snapshot(steps.decoder_params)
    assert steps.update_encoder(1.0) == 3  # CHECK_EVERY = 15 > max: runs to the maximum
    assert unchanged(steps.decoder_params, decoder)
    assert all_changed(steps.encoder_params, encoder)

    encoder, decoder = snapshot(steps.encoder_params), snapshot(steps.decoder_params)
    batch = next(aggressive_trainer.train_data.iterate(0))
    aggressive_trainer.train_step(batch, 1.0, frozen=steps.encoder_params)  # the outer decoder step
    assert unchanged(steps.encoder_params, encoder)
    assert all_changed([p for p in steps.decoder_params if p.grad is not None],
                       [d for p, d in zip(steps.decoder_params, decoder) if p.grad is not None])


def test_aggressive_phase_ends_when_validation_mi_falls(aggressive_trainer):
    trainer, steps = aggressive_trainer, aggressive_trainer.aggressive
    for mi in (0.5, 0.7, 0.7):
        steps.after_validation({"mi": mi})
        assert trainer.state.aggressive.active
    steps.after_validation({"elbo": -10.0})  # no MI (a language model): no decision
    assert trainer.state.aggressive.active
    steps.after_validation({"mi": 0.6})
    assert not trainer.state.aggressive.active
    before = trainer.state.aggressive.inner_steps
    logs = steps.step(next(trainer.train_data.iterate(0)), 1.0)  # now a plain joint step
    assert "inner_steps" not in logs and trainer.state.aggressive.inner_steps == before


def test_aggressive_phase_validates_at_its_own_cadence(word_tokenizer, tmp_path, monkeypatch):
    """Validation every aggressive_eval_every steps while the phase lasts, then
    once an epoch (eval_every=0): 50 sentences in batches of 8 are 7 steps an epoch."""
    monkeypatch.setattr(aggressive, "CHECK_EVERY", 1)
    trainer = make_trainer(word_tokenizer, tmp_path / "run", epochs=3, aggressive=True, aggressive_max_inner=2,
                           aggressive_eval_every=2)
    mis = iter([0.5, 0.7, 0.6, 0.9, 0.9, 0.9])  # the third validation ends the phase
    monkeypatch.setattr(trainer, "evaluate", lambda: {"elbo": -50.0, "rec": 45.0, "kl": 5.0, "au": 4,
                                                         "au_variances": [1.0] * 4, "mi": next(mis)})
    trainer.fit()
    valid_steps = [r["step"] for r in train_records(tmp_path / "run", "valid")]
    assert valid_steps == [2, 4, 6, 7, 14, 21]
    assert not trainer.state.aggressive.active


def test_aggressive_phase_ends_at_its_step_cap(word_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(aggressive, "CHECK_EVERY", 1)
    trainer = make_trainer(word_tokenizer, tmp_path / "run", max_steps=6, epochs=10, aggressive=True,
                           aggressive_max_inner=2, aggressive_max_steps=3)
    state = trainer.fit()
    assert not state.aggressive.active
    assert [r.get("inner_steps") for r in train_records(tmp_path / "run")] == [2, 2, 2, None, None, None]
