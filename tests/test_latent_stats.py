"""Mutual information and active units against numbers known in advance: MI
of a linear Gaussian encoder against its closed form, MI zero when q(z|x)
ignores x, and the active units as the dimensions whose posterior means
vary."""

import math

import pytest
import torch

from textvae.evaluation.latent_stats import active_units, mutual_information


def test_mutual_information_of_a_linear_gaussian_encoder():
    """x ~ N(0, 1) per dimension and q(z|x) = N(a x, s^2): then q(z) = N(0,
    a^2 + s^2) and I(x; z) = sum_d 0.5 log((a_d^2 + s_d^2) / s_d^2), here
    0.75 + 0.25 = 1 nat."""
    count = 2000
    s = torch.tensor([1.0, 0.5])
    a = torch.tensor([math.sqrt(math.exp(1.5) - 1.0), 0.5 * math.sqrt(math.exp(0.5) - 1.0)])
    exact = float((0.5 * torch.log((a ** 2 + s ** 2) / s ** 2)).sum())
    assert exact == pytest.approx(1.0)
    x = torch.randn(count, 2, generator=torch.Generator().manual_seed(7))
    means, logvars = a * x, (2 * torch.log(s)).expand(count, 2)
    estimate = mutual_information(means, logvars, torch.Generator().manual_seed(0))
    assert estimate == pytest.approx(exact, abs=0.05)
    # Chunking the aggregate posterior changes nothing.
    small_chunks = mutual_information(means, logvars, torch.Generator().manual_seed(0), chunk=7)
    assert small_chunks == pytest.approx(estimate, abs=1e-9)


def test_mutual_information_is_zero_when_q_ignores_x():
    count = 500
    means, logvars = torch.full((count, 3), 0.3), torch.full((count, 3), -0.5)
    for seed in range(3):
        assert abs(mutual_information(means, logvars, torch.Generator().manual_seed(seed))) < 0.02


def test_active_units_are_the_dimensions_whose_means_vary():
    g = torch.Generator().manual_seed(0)
    means = torch.full((50, 5), 0.7) + 0.005 * torch.randn(50, 5, generator=g)  # variance ~2.5e-5
    means[:, 1] += torch.randn(50, generator=g)
    means[:, 3] += 0.5 * torch.randn(50, generator=g)
    count, variances = active_units(means)
    assert count == 2
    assert (variances > 0.01).nonzero().flatten().tolist() == [1, 3]
    assert variances.shape == (5,)
    assert torch.allclose(variances, means.var(dim=0), rtol=1e-5)
    assert active_units(means, threshold=10.0)[0] == 0
    assert active_units(means[:1])[0] == 0  # one example: nothing varies
