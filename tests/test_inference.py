"""Semi-amortized inference (inference.py): the posterior mean refined per
example, for the text and image models, and how using a model follows
``objective.refine_steps`` and ``--refine``."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from textvae.config import ObjectiveConfig
from textvae.errors import TextVAEError
from textvae.inference import refine_posterior
from textvae.latent import DiagonalGaussian

from conftest import TRAIN, tiny_config


def settings(steps: int, lr: float, kl_weight: float, **more) -> ObjectiveConfig:
    return ObjectiveConfig(refine_steps=steps, refine_lr=lr, kl_weight=kl_weight, **{"free_bits": 0.0, **more})


def refine(model, batch, q, steps: int, lr: float, kl_weight: float, **more) -> DiagonalGaussian:
    return refine_posterior(model, batch, q, settings(steps, lr, kl_weight, **more))


def objective(model, batch, mean: torch.Tensor, kl_weight: float) -> torch.Tensor:
    """L(m) = -log p(x | z = m) + kl_weight * |m|^2 / 2 per example, (B,): the
    refined objective up to a constant in m when there are no free bits."""
    with torch.no_grad():
        return 0.5 * kl_weight * mean.pow(2).sum(-1) - model.log_likelihood(batch, mean.unsqueeze(0))[0]


def test_refinement_lowers_every_examples_objective_and_keeps_the_variance(tiny_model):
    batch = tiny_model.batch(TRAIN[:8])
    q = tiny_model.posterior(batch)
    start = DiagonalGaussian(q.mean + 2.0, q.logvar)  # a poor encoder: far from the best code
    refined = refine(tiny_model, batch, start, steps=40, lr=0.1, kl_weight=1.0)
    before, after = objective(tiny_model, batch, start.mean, 1.0), objective(tiny_model, batch, refined.mean, 1.0)
    assert (after <= before).all() and (before - after).mean() > 1.0  # nats per sentence
    assert torch.equal(refined.logvar, start.logvar)
    assert refine(tiny_model, batch, start, steps=0, lr=0.1, kl_weight=1.0) is start


def test_the_kl_weight_pulls_the_refined_mean_towards_the_prior(tiny_model):
    batch = tiny_model.batch(TRAIN[:6])
    q = tiny_model.posterior(batch)
    loose = refine(tiny_model, batch, q, steps=30, lr=0.1, kl_weight=0.0).mean
    tight = refine(tiny_model, batch, q, steps=30, lr=0.1, kl_weight=50.0).mean
    assert tight.norm(dim=-1).mean() < loose.norm(dim=-1).mean()
    # Free bits as in training: below the floor the KL does not pull at all, so a
    # KL target no code reaches leaves the reconstruction term alone.
    for mode in ("total", "dim_example", "dim_batch"):
        floored = refine(tiny_model, batch, q, steps=30, lr=0.1, kl_weight=1.0, free_bits=100.0, free_bits_mode=mode)
        torch.testing.assert_close(floored.mean, loose)


def test_each_example_is_refined_as_if_alone_and_the_weights_stay_untouched(tiny_model):
    weights = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    batch = tiny_model.batch(TRAIN[:5])
    together = refine(tiny_model, batch, tiny_model.posterior(batch), 15, 0.05, 1.0).mean
    for row, text in enumerate(TRAIN[:5]):
        alone_batch = tiny_model.batch([text])
        alone = refine(tiny_model, alone_batch, tiny_model.posterior(alone_batch), 15, 0.05, 1.0).mean
        torch.testing.assert_close(alone[0], together[row], atol=2e-5, rtol=1e-4)
    assert all(p.grad is None for p in tiny_model.parameters())
    assert all(torch.equal(v, weights[k]) for k, v in tiny_model.state_dict().items())


def test_using_a_model_follows_refine_steps(tiny_model):
    texts = TRAIN[:4]
    amortized = tiny_model.posterior(tiny_model.batch(texts)).mean
    torch.testing.assert_close(tiny_model.encode(texts).mean, amortized)  # off by default
    tiny_model.config.objective = dataclasses.replace(tiny_model.config.objective, refine_steps=10)
    refined = tiny_model.encode(texts).mean
    assert not torch.allclose(refined, amortized)
    batch = tiny_model.batch(texts)
    kl_weight = tiny_model.config.objective.kl_weight  # the tiny config has no free bits
    assert (objective(tiny_model, batch, refined, kl_weight) <= objective(tiny_model, batch, amortized, kl_weight)).all()


def test_the_image_model_refines_the_same_way():
    from test_image_model import batch_of, tiny_model as tiny_image_model

    model, batch = tiny_image_model(), batch_of(6)
    q = model.posterior(batch)
    refined = refine(model, batch, q, steps=20, lr=0.1, kl_weight=1.0)
    assert (objective(model, batch, refined.mean, 1.0) < objective(model, batch, q.mean, 1.0)).all()
    model.config.objective = dataclasses.replace(model.config.objective, refine_steps=20, refine_lr=0.1, kl_weight=1.0,
                                                 free_bits=0.0)
    torch.testing.assert_close(model.encode(batch.images).mean, refined.mean)


def test_refine_settings_are_checked():
    for bad in ({"refine_steps": -1}, {"refine_lr": 0.0}):
        with pytest.raises(TextVAEError, match="objective.refine_"):
            tiny_config(objective=bad)


def test_the_refine_flag_of_the_commands(cli, trained_run, shared_corpus, tmp_path):
    plain = [json.loads(line)["mean"] for line in cli("encode", trained_run, TRAIN[0]).out_lines]
    refined = [json.loads(line)["mean"] for line in cli("encode", trained_run, TRAIN[0], "--refine", "20").out_lines]
    assert plain != refined
    assert cli("encode", trained_run, TRAIN[0], "--refine", "0").out_lines == cli("encode", trained_run, TRAIN[0]).out_lines
    for command in (["reconstruct", trained_run, TRAIN[0]], ["interpolate", trained_run, TRAIN[0], TRAIN[1]]):
        assert cli(*command, "--refine", "5").code == 0
        bad = cli(*command, "--refine", "-1")
        assert bad.code == 2 and bad.err_lines == ["textvae: error: objective.refine_steps must be >= 0"]
    out, run = tmp_path / "eval.json", tmp_path / "run"
    shutil.copytree(trained_run, run)  # eval writes the run's eval_test.json; the shared run stays as it is
    result = cli("eval", run, "--data", shared_corpus, "--iw-samples", "2", "--samples", "3",
                 "--refine", "5", "--json", out)
    assert result.code == 0 and "reconstructions from means refined by 5 steps" in result.out
    assert json.loads(out.read_text())["settings"]["refine_steps"] == 5
