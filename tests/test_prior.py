"""The second-stage mixture prior and the built-in models."""

import json
import shutil

import pytest
import torch

from textvae.errors import TextVAEError
from textvae.evaluation.likelihood import importance_weighted_log_likelihood
from textvae.latent import standard_normal_log_prob
from textvae.model import TextVAE
from textvae.operations import fit_prior
from textvae.prior import (ExemplarPrior, GaussianMixturePrior, StandardNormalPrior, diagonal_mixture_log_prob,
                           fit_gaussian_mixture, mixture_log_prob)

from conftest import TRAIN


def two_clusters(n=2000, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n // 4, 2, generator=g) * 0.3 + torch.tensor([4.0, 0.0])
    b = torch.randn(3 * n // 4, 2, generator=g) @ torch.tensor([[1.0, 0.0], [0.8, 0.5]]) + torch.tensor([-2.0, 1.0])
    return torch.cat([a, b])


def test_em_recovers_a_two_component_mixture():
    prior = GaussianMixturePrior(2, 2)
    figures = prior.fit(two_clusters(), generator=torch.Generator().manual_seed(0))
    order = prior.means[:, 0].argsort(descending=True)
    assert torch.allclose(prior.means[order], torch.tensor([[4.0, 0.0], [-2.0, 1.0]]), atol=0.1)
    assert torch.allclose(prior.log_weights[order].exp(), torch.tensor([0.25, 0.75]), atol=0.02)
    covariance = prior.scale_tril[order[1]] @ prior.scale_tril[order[1]].T
    assert torch.allclose(covariance, torch.tensor([[1.64, 0.4], [0.4, 0.25]]), atol=0.1)
    assert figures["components"] == 2 and figures["iterations"] >= 2


def test_mixture_density_matches_torch_distributions():
    torch.manual_seed(0)
    means, tril = torch.randn(3, 4), torch.tril(torch.randn(3, 4, 4)) * 0.3 + torch.eye(4)
    weights = torch.tensor([0.2, 0.3, 0.5])
    z = torch.randn(5, 7, 4)
    reference = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(weights),
        torch.distributions.MultivariateNormal(means, scale_tril=tril)).log_prob(z)
    assert torch.allclose(mixture_log_prob(z, weights.log(), means, tril), reference, atol=1e-4)


def test_samples_follow_the_fitted_mixture_and_an_unfitted_one_refuses():
    prior = GaussianMixturePrior(2, 2)
    with pytest.raises(TextVAEError, match="fit-prior"):
        prior.sample(3)
    prior.fit(two_clusters(), generator=torch.Generator().manual_seed(0))
    z = prior.sample(20000, torch.Generator().manual_seed(1))
    assert z.shape == (20000, 2)
    assert float((z[:, 0] > 1.5).float().mean()) == pytest.approx(0.25, abs=0.02)
    # Samples of the fit score as well as the data under it.
    assert float(prior.log_prob(z).mean()) == pytest.approx(float(prior.log_prob(two_clusters()).mean()), abs=0.1)


def fitted_exemplars(k=3, dim=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    prior = ExemplarPrior(dim, k)
    prior.fit(4 * torch.randn(k, dim, generator=g), torch.randn(k, dim, generator=g) * 0.5 - 1)
    return prior


def test_exemplar_density_is_the_mean_of_its_diagonal_gaussians():
    prior = fitted_exemplars(k=5, dim=4)
    z = torch.randn(6, 7, 4) * 3
    components = torch.distributions.Independent(
        torch.distributions.Normal(prior.means, torch.exp(0.5 * prior.logvars)), 1)
    reference = torch.logsumexp(components.log_prob(z.unsqueeze(-2)), -1) - torch.log(torch.tensor(5.0))
    assert torch.allclose(prior.log_prob(z), reference, atol=1e-4)
    # In blocks of rows as in one.
    assert torch.allclose(diagonal_mixture_log_prob(z, prior.means, prior.logvars, rows=4), prior.log_prob(z))
    # Far from every code the density still comes out finite and exact (no cancellation).
    far = prior.means[:1] + 40.0
    assert torch.allclose(diagonal_mixture_log_prob(far, prior.means, prior.logvars),
                          torch.logsumexp(components.log_prob(far.unsqueeze(-2)), -1) - torch.log(torch.tensor(5.0)),
                          rtol=1e-6)


def test_exemplar_samples_come_from_one_posterior_each_and_an_unfitted_prior_refuses():
    with pytest.raises(TextVAEError, match="fit-prior"):
        ExemplarPrior(2, 3).sample(1)
    prior = fitted_exemplars(k=3)
    z = prior.sample(30000, torch.Generator().manual_seed(1))
    nearest = (z[:, None, :] - prior.means).pow(2).sum(-1).argmin(1)  # the exemplars are far apart
    counts = torch.bincount(nearest, minlength=3).float() / len(z)
    assert torch.allclose(counts, torch.full((3,), 1 / 3), atol=0.02)  # uniform weights
    for k in range(3):  # each component's spread is its posterior's
        assert torch.allclose(z[nearest == k].std(0), torch.exp(0.5 * prior.logvars[k]), rtol=0.05)
    with pytest.raises(TextVAEError, match=r"needs means and log-variances of shape \(3, 2\)"):
        prior.fit(torch.zeros(2, 2), torch.zeros(2, 2))


@pytest.mark.parametrize("kind", ["normal", "gmm", "exemplar"])
def test_prior_temperature_scales_the_spread_around_the_modes(kind):
    prior = {"normal": lambda: StandardNormalPrior(2), "gmm": lambda: GaussianMixturePrior(2, 2),
             "exemplar": fitted_exemplars}[kind]()
    if kind == "gmm":
        prior.fit(two_clusters(), generator=torch.Generator().manual_seed(0))
    draw = lambda t: prior.sample(5000, torch.Generator().manual_seed(1), temperature=t)  # noqa: E731
    full, cool = draw(1.0), draw(0.4)
    assert torch.equal(draw(1.0), prior.sample(5000, torch.Generator().manual_seed(1)))  # 1: unchanged
    # The same draws, each offset from its mode m scaled by T: cool = m + 0.4 (full - m),
    # so (cool - 0.4 full) / 0.6 is a mode for every draw.
    modes = torch.zeros(1, 2) if kind == "normal" else prior.means  # (K, 2)
    implied = (cool - 0.4 * full) / 0.6  # (N, 2)
    assert (implied[:, None, :] - modes).abs().amax(-1).amin(1).max() < 1e-4
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(TextVAEError, match="prior temperature"):
            prior.sample(3, temperature=bad)


def test_fitting_a_model_prior_switches_sampling_and_the_nll_to_it(tiny_model, tmp_path):
    texts = TRAIN * 4
    figures = fit_prior(tiny_model, texts, components=3, seed=0)
    assert tiny_model.config.model.prior == "gmm" and figures["points"] == len(texts)
    assert figures["log_likelihood"] > figures["normal_log_likelihood"]  # the codes are far from N(0, I)'s bulk
    # Sampling draws z from the mixture: near the codes, not from N(0, I).
    from textvae import operations

    drawn = []
    decode = operations._decode
    operations._decode = lambda model, z, *a, **k: drawn.append(z) or decode(model, z, *a, **k)
    try:
        tiny_model.sample(200, seed=0)
    finally:
        operations._decode = decode
    codes = tiny_model.encode(texts).mean
    assert (drawn[0].mean(0) - codes.mean(0)).abs().max() < 0.3 * codes.std(0).max() + 0.05
    # The importance-weighted NLL uses log p(z) of the mixture.
    batch = tiny_model.batch(TRAIN[:4])
    with_mixture = importance_weighted_log_likelihood(tiny_model, batch, 20, generator=torch.Generator().manual_seed(0))
    prior = tiny_model.prior
    del tiny_model.prior
    with_normal = importance_weighted_log_likelihood(tiny_model, batch, 20, generator=torch.Generator().manual_seed(0))
    tiny_model.prior = prior
    assert not torch.allclose(with_mixture, with_normal)
    # Saved and loaded with the weights.
    tiny_model.save_pretrained(tmp_path / "run")
    loaded = TextVAE.from_pretrained(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["prior"] == "gmm"
    assert torch.equal(loaded.prior.means, tiny_model.prior.means)
    assert loaded.sample(3, seed=0) == tiny_model.sample(3, seed=0)


def test_an_exemplar_prior_holds_posteriors_of_training_sentences(tiny_model, tmp_path):
    texts = [f"{t} {i}" for i, t in enumerate(TRAIN * 3)]
    figures = fit_prior(tiny_model, texts, components=5, seed=0, kind="exemplar")
    assert tiny_model.config.model.prior == "exemplar" and figures["components"] == 5
    prior = tiny_model.prior
    assert isinstance(prior, ExemplarPrior) and prior.fitted == 1
    # Its components are the posteriors of 5 of the sentences, the same 5 for the same seed.
    chosen = tiny_model.encode(texts)
    pairs = (prior.means[:, None, :] - chosen.mean[None]).abs().amax(-1)  # (5, N)
    rows = pairs.argmin(1)
    assert pairs.amin(1).max() < 1e-5 and len(set(rows.tolist())) == 5
    assert torch.allclose(prior.logvars, chosen.logvar[rows], atol=1e-5)
    with pytest.raises(TextVAEError, match="unknown prior kind"):
        fit_prior(tiny_model, texts, kind="flow")
    # Saved and loaded with the weights; IW-NLL uses its density.
    tiny_model.save_pretrained(tmp_path / "run")
    loaded = TextVAE.from_pretrained(tmp_path / "run")
    assert isinstance(loaded.prior, ExemplarPrior) and torch.equal(loaded.prior.logvars, prior.logvars)
    assert loaded.sample(3, seed=0) == tiny_model.sample(3, seed=0)
    batch = tiny_model.batch(TRAIN[:4])
    with_exemplars = importance_weighted_log_likelihood(tiny_model, batch, 20, generator=torch.Generator().manual_seed(0))
    tiny_model.prior = StandardNormalPrior(tiny_model.latent_dim)
    with_normal = importance_weighted_log_likelihood(tiny_model, batch, 20, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(with_exemplars, with_normal)


def test_fit_prior_command(cli, trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    result = cli("fit-prior", run, "--components", "4")
    assert result.code == 0, result.err
    model = json.loads((run / "config.json").read_text())["model"]
    assert model["prior"] == "gmm" and model["prior_components"] == 4
    assert TextVAE.from_pretrained(run).prior.fitted == 1
    assert cli("-q", "sample", run, "-n", "3", "--seed", "0").code == 0
    # The run still resumes: its checkpoint predates the prior.
    assert cli("-q", "train", "--resume", run, "--set", "train.epochs=4").code == 0
    assert cli("fit-prior", tmp_path / "missing").code == 2
    assert cli("fit-prior", run, "--components", "0").code == 2
    # --kind exemplar; afterwards the run's own kind is the default.
    assert cli("fit-prior", run, "--kind", "exemplar", "--components", "3").code == 0
    assert json.loads((run / "config.json").read_text())["model"]["prior"] == "exemplar"
    assert cli("fit-prior", run).code == 0
    loaded = TextVAE.from_pretrained(run)
    assert loaded.config.model.prior == "exemplar" and loaded.prior.means.shape[0] == 3
    assert cli("-q", "sample", run, "-n", "2", "--seed", "0").code == 0


def test_eval_scores_a_two_stage_run_under_either_prior(cli, trained_run, shared_corpus, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert cli("fit-prior", run, "--kind", "exemplar", "--components", "3").code == 0
    flags = ["--data", shared_corpus, "--iw-samples", "4", "--samples", "3"]
    assert cli("-q", "eval", run, *flags).code == 0
    assert cli("-q", "eval", run, *flags, "--prior", "normal").code == 0
    two_stage = json.loads((run / "eval_test.json").read_text())
    normal = json.loads((run / "eval_test_normal_prior.json").read_text())
    assert (two_stage["prior"], normal["prior"]) == ("exemplar", "normal")
    assert two_stage["nll"] != normal["nll"] and two_stage["rec"] == normal["rec"]  # only log p(z) differs


def test_completion_searches_every_exemplar(tiny_model, monkeypatch):
    """Completion draws one proposal from each exemplar, so the one sentence
    that fits the prefix is never missed (random draws of 256 from 300 would
    miss it 43% of the time)."""
    from textvae import operations

    monkeypatch.setattr(tiny_model, "prior", fitted_exemplars(k=300, dim=tiny_model.latent_dim, seed=1))
    tiny_model.prior.logvars.fill_(-8.0)  # tight: a draw stays by its own exemplar
    target = tiny_model.prior.means[137]

    def fits(inputs, targets, mask, z):  # only z by exemplar 137 explains the prefix
        return torch.where((z - target).norm(dim=-1) < 0.5, 0.0, -1000.0)

    monkeypatch.setattr(tiny_model, "sequence_log_likelihood", fits)
    prefix = tiny_model.tokenizer.encode("the cat")
    for seed in range(3):
        z = operations.posterior_given_prefix(tiny_model, prefix, 4, proposals=512,
                                              generator=torch.Generator().manual_seed(seed))
        assert ((z - target).norm(dim=-1) < 0.5).all()


@pytest.mark.parametrize("proposals", [1, 3, 512])
def test_completion_takes_any_number_of_proposals_with_an_exemplar_prior(tiny_model, monkeypatch, proposals):
    monkeypatch.setattr(tiny_model, "prior", fitted_exemplars(k=5, dim=tiny_model.latent_dim))
    texts = tiny_model.complete("the cat", n=2, seed=0, proposals=proposals)
    assert len(texts) == 2 and all(t.startswith("the cat") for t in texts)


def test_completion_weighs_exemplar_proposals_by_the_prefix_alone(tiny_model, monkeypatch):
    """The stratified proposals are the prior itself, so with a prefix every z
    explains equally, a tight exemplar and a broad one are each chosen half
    the time (weighing by p(z) too would favour the tight one's dense draws).
    512 proposals over 2 exemplars: 256 rounds of one draw each."""
    from textvae import operations

    prior = ExemplarPrior(tiny_model.latent_dim, 2)
    means = torch.zeros(2, tiny_model.latent_dim)
    means[1] += 50.0
    prior.fit(means, torch.tensor([[-6.0], [2.0]]).expand(2, tiny_model.latent_dim).clone())
    monkeypatch.setattr(tiny_model, "prior", prior)
    monkeypatch.setattr(tiny_model, "sequence_log_likelihood", lambda inputs, targets, mask, z: z.new_zeros(len(z)))
    z = operations.posterior_given_prefix(tiny_model, tiny_model.tokenizer.encode("the cat"), 4000, proposals=512,
                                          generator=torch.Generator().manual_seed(0))
    tight = float(((z - means[0]).norm(dim=-1) < 1.0).float().mean())
    assert tight == pytest.approx(0.5, abs=0.05)
