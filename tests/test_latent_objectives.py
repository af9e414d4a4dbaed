"""The Gaussian latent, KL schedules, free bits, word dropout, IW likelihood."""

import math

import pytest
import torch

from textvae.config import ObjectiveConfig
from textvae.latent import DiagonalGaussian, GaussianHead, delta_variance_bounds, standard_normal_log_prob
from textvae.objectives import MMD_SCALES, VAEOutput, elbo_loss, free_bits_kl, kl_weight, mmd_to_normal, word_dropout


def gaussian(batch: int = 3, dim: int = 4, seed: int = 0) -> DiagonalGaussian:
    g = torch.Generator().manual_seed(seed)
    return DiagonalGaussian(torch.randn(batch, dim, generator=g), torch.randn(batch, dim, generator=g))


def test_closed_form_kl_matches_monte_carlo():
    q = gaussian()
    z = q.sample(200_000, generator=torch.Generator().manual_seed(1))  # (S, B, D)
    estimate = (q.log_prob(z) - standard_normal_log_prob(z)).mean(0)  # (B,)
    exact = q.kl_per_dim().sum(-1)
    assert torch.allclose(estimate, exact, atol=0.03 + 0.01 * float(exact.max()))
    assert (q.kl_per_dim() >= 0).all()
    assert torch.allclose(DiagonalGaussian(torch.zeros(2, 3), torch.zeros(2, 3)).kl_per_dim(), torch.zeros(2, 3))


def test_log_prob_matches_torch_distributions():
    q = gaussian()
    z = q.sample(5, generator=torch.Generator().manual_seed(2))
    reference = torch.distributions.Normal(q.mean, q.std).log_prob(z).sum(-1)
    assert torch.allclose(q.log_prob(z), reference, atol=1e-5)
    assert torch.allclose(standard_normal_log_prob(z), torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1))


def test_sampling_is_reparameterised_and_seeded():
    q = gaussian()
    q.mean.requires_grad_(True)
    a = q.sample(generator=torch.Generator().manual_seed(5))
    b = q.sample(generator=torch.Generator().manual_seed(5))
    assert a.shape == q.mean.shape and torch.equal(a, b)
    a.sum().backward()
    assert torch.equal(q.mean.grad, torch.ones_like(q.mean))


def test_gaussian_head_clamps_logvar():
    head = GaussianHead(3, 2, logvar_min=-1.0, logvar_max=1.0)
    q = head(100 * torch.randn(64, 3, generator=torch.Generator().manual_seed(0)))
    assert q.mean.shape == q.logvar.shape == (64, 2)
    assert q.logvar.min() >= -1.0 and q.logvar.max() <= 1.0


def test_delta_vae_keeps_every_dimension_above_delta():
    low, high = delta_variance_bounds(0.3)
    assert 0.5 * (high - math.log(high) - 1) == pytest.approx(0.3, abs=1e-6)
    head = GaussianHead(3, 4, delta=0.3)
    q = head(torch.randn(32, 3, generator=torch.Generator().manual_seed(0)))
    assert (q.kl_per_dim() >= 0.3 - 1e-5).all()


# ------------------------------------------------------------ schedules
def schedule(kind: str, **options) -> ObjectiveConfig:
    return ObjectiveConfig(kl_schedule=kind, **options)


def test_constant_schedule():
    assert {kl_weight(schedule("constant", kl_weight=0.7), s, 100) for s in (0, 50, 10**6)} == {0.7}


def test_linear_schedule_endpoints():
    config = schedule("linear", kl_start=0.1, kl_weight=0.9, kl_warmup_steps=100)
    assert kl_weight(config, 0, 1000) == pytest.approx(0.1)
    assert kl_weight(config, 50, 1000) == pytest.approx(0.5)
    assert kl_weight(config, 100, 1000) == pytest.approx(0.9)
    assert kl_weight(config, 5000, 1000) == pytest.approx(0.9)
    weights = [kl_weight(config, s, 1000) for s in range(0, 120)]
    assert weights == sorted(weights)


def test_logistic_schedule_endpoints():
    config = schedule("logistic", kl_weight=0.8, kl_warmup_steps=10000, kl_logistic_k=0.0025)
    assert kl_weight(config, 0, 10**5) < 0.01 * 0.8
    assert kl_weight(config, 5000, 10**5) == pytest.approx(0.4)
    assert kl_weight(config, 20000, 10**5) > 0.99 * 0.8
    assert kl_weight(config, 10**9, 10**5) == pytest.approx(0.8)
    weights = [kl_weight(config, s, 10**5) for s in range(0, 20000, 500)]
    assert weights == sorted(weights)


def test_cyclical_schedule_restarts_and_reaches_the_top():
    config = schedule("cyclical", kl_weight=1.0, kl_cycles=4, kl_cycle_ratio=0.5)
    total = 400  # cycles of 100 steps: rising for 50, then flat
    for cycle in range(4):
        start = 100 * cycle
        assert kl_weight(config, start, total) == 0.0
        assert kl_weight(config, start + 25, total) == pytest.approx(0.5)
        assert kl_weight(config, start + 50, total) == pytest.approx(1.0)
        assert kl_weight(config, start + 99, total) == pytest.approx(1.0)
    assert max(kl_weight(config, s, total) for s in range(total)) == pytest.approx(1.0)


# ------------------------------------------------------------ free bits
def kl_grid() -> torch.Tensor:
    # (B=2, D=3) against a floor of 0.5: dimension 0 above it everywhere; 1 below
    # it on the batch mean but above for one example; 2 above on the mean only.
    return torch.tensor([[2.0, 0.1, 0.2], [3.0, 0.8, 1.5]], requires_grad=True)


def test_free_bits_dim_batch():
    kl = kl_grid()
    floored = free_bits_kl(kl, 0.5, "dim_batch")
    # batch means per dimension: 2.5 (kept), 0.45 (floored), 0.85 (kept)
    assert floored.mean().item() == pytest.approx(2.5 + 0.5 + 0.85)
    assert floored.tolist() == pytest.approx([2.0 + 0.5 + 0.2, 3.0 + 0.5 + 1.5])
    floored.mean().backward()
    assert kl.grad[:, 1].abs().sum() == 0
    assert (kl.grad[:, [0, 2]] > 0).all()


def test_free_bits_dim_example():
    kl = kl_grid()
    floored = free_bits_kl(kl, 0.5, "dim_example")
    assert floored.tolist() == pytest.approx([2.0 + 0.5 + 0.5, 3.0 + 0.8 + 1.5])
    floored.sum().backward()
    assert kl.grad.tolist() == [[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]


def test_free_bits_total():
    kl = kl_grid()
    floored = free_bits_kl(kl, 3.0, "total")
    assert floored.tolist() == pytest.approx([3.0, 5.3])
    floored.sum().backward()
    assert kl.grad.tolist() == [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]


@pytest.mark.parametrize("mode", ["dim_batch", "dim_example", "total"])
def test_free_bits_off_is_the_plain_kl(mode):
    kl = kl_grid()
    assert torch.equal(free_bits_kl(kl, 0.0, mode), kl.sum(-1))


def test_elbo_loss_weights_the_kl():
    kl = kl_grid().detach()
    out = VAEOutput(rec=torch.tensor([10.0, 20.0]), kl=kl.sum(-1), kl_per_dim=kl)
    config = ObjectiveConfig(free_bits=0.0)
    assert elbo_loss(out, 0.5, config).item() == pytest.approx(15.0 + 0.5 * kl.sum(-1).mean().item())
    assert elbo_loss(out, 0.0, config).item() == pytest.approx(15.0)
    assert out.elbo.tolist() == pytest.approx((-(out.rec + out.kl)).tolist())
    lm = VAEOutput(rec=torch.tensor([1.0, 3.0]), kl=torch.zeros(2))
    assert elbo_loss(lm, 1.0, config).item() == pytest.approx(2.0)


# ----------------------------------------------------------- word dropout
def test_word_dropout_protects_frame_tokens_and_drops_about_rate():
    bos, eos, pad, unk = 1, 2, 0, 3
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(4, 50, (200, 30), generator=g)
    tokens[:, 0] = bos
    tokens[:, 20] = eos
    tokens[:, 21:] = pad
    protected = (tokens == bos) | (tokens == eos) | (tokens == pad)
    dropped = word_dropout(tokens, 0.3, unk, protected, torch.Generator().manual_seed(1))
    assert torch.equal(dropped[protected], tokens[protected])
    changed = dropped != tokens
    assert (dropped[changed] == unk).all()
    assert changed.sum() / (~protected).sum() == pytest.approx(0.3, abs=0.03)
    assert torch.equal(word_dropout(tokens, 0.0, unk, protected), tokens)
    assert torch.equal(word_dropout(tokens, 1.0, unk, protected)[~protected], torch.full_like(tokens[~protected], unk))


# -------------------------------------------------- importance weighting
def test_importance_weighted_likelihood_is_above_the_elbo(tiny_model):
    likelihood = pytest.importorskip("textvae.evaluation.likelihood")
    from conftest import TRAIN

    batch = tiny_model.batch(TRAIN[:6])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        q = tiny_model.posterior(batch)
        # E_q[log p(x|z)] - KL from 256 samples: the one-sample ELBO's expectation.
        elbo = tiny_model.log_likelihood(batch, q.sample(256, generator=g)).mean(0) - q.kl_per_dim().sum(-1)
        one_sample = tiny_model(batch, generator=g).elbo
        iw = likelihood.importance_weighted_log_likelihood(tiny_model, batch, 256, chunk=100, generator=g)
    assert iw.shape == elbo.shape == one_sample.shape == (6,)
    assert (iw >= elbo - 0.05).all()
    assert float(iw.mean()) > float(elbo.mean())


# ------------------------------------------------------------------ WAE-MMD
def test_mmd_matches_the_kernel_sums_by_hand():
    """Tolstikhin et al. 2018, Algorithm 2: the off-diagonal means of k over
    codes and over prior samples, minus twice the mean across them."""
    z = torch.tensor([[0.0, 1.0], [2.0, -1.0], [0.5, 0.5]])
    got = mmd_to_normal(z, generator=torch.Generator().manual_seed(3))
    prior = torch.randn(z.shape, generator=torch.Generator().manual_seed(3))
    n, expected = 3, 0.0
    for scale in MMD_SCALES:
        c = scale * 2 * 2
        k = lambda a, b: c / (c + float(((a - b) ** 2).sum()))  # noqa: E731
        qq = sum(k(z[i], z[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        pp = sum(k(prior[i], prior[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        qp = sum(k(z[i], prior[j]) for i in range(n) for j in range(n)) / n**2
        expected += qq + pp - 2 * qp
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_mmd_is_near_zero_for_prior_codes_and_grows_with_the_mismatch():
    g = torch.Generator().manual_seed(0)
    matched = [mmd_to_normal(torch.randn(128, 8, generator=g), generator=g).item() for _ in range(20)]
    shifted = mmd_to_normal(torch.randn(128, 8, generator=g) + 1.0, generator=g).item()
    narrow = mmd_to_normal(0.1 * torch.randn(128, 8, generator=g), generator=g).item()
    assert abs(sum(matched) / len(matched)) < 0.01  # unbiased: 0 in expectation
    assert shifted > 0.1 and narrow > 0.1


def test_the_loss_adds_the_weighted_mmd_and_reports_it():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 4, generator=g) + 2.0
    out = VAEOutput(rec=torch.full((16,), 5.0), kl=torch.ones(16), kl_per_dim=torch.full((16, 4), 0.25), z=z)
    config = ObjectiveConfig(free_bits=0.0, mmd_weight=10.0)
    parts = {}
    torch.manual_seed(1)
    loss = elbo_loss(out, 0.5, config, parts)
    torch.manual_seed(1)
    assert loss.item() == pytest.approx(5.5 + 10.0 * mmd_to_normal(z).item(), rel=1e-6)
    assert parts["mmd"] == pytest.approx((loss.item() - 5.5) / 10.0, rel=1e-5) and parts["mmd"] > 0.1
    assert elbo_loss(out, 0.5, ObjectiveConfig(free_bits=0.0)).item() == pytest.approx(5.5)
