"""The Gaussian latent: q(z|x), reparameterisation, closed-form KL, the prior.

Shared by the text and image models. All log densities are in nats and summed
over the latent dimensions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOG_2PI = math.log(2.0 * math.pi)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over the last dimension. (..., D) -> (...)"""
    return -0.5 * (z.pow(2) + LOG_2PI).sum(-1)


@dataclass
class DiagonalGaussian:
    """q(z|x) = N(mean, diag(exp(logvar))); ``mean`` and ``logvar`` are (B, D)."""

    mean: Tensor
    logvar: Tensor

    @property
    def std(self) -> Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, num_samples: Optional[int] = None, generator: Optional[torch.Generator] = None) -> Tensor:
        """Reparameterised z = mean + std * eps (Kingma & Welling 2014).

        Returns (B, D), or (S, B, D) when ``num_samples`` is given.
        """
        shape = self.mean.shape if num_samples is None else (num_samples, *self.mean.shape)
        eps = torch.randn(shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def log_prob(self, z: Tensor) -> Tensor:
        """log q(z|x) summed over D; z is (..., B, D), the result (..., B)."""
        return -0.5 * (((z - self.mean) ** 2) * torch.exp(-self.logvar) + self.logvar + LOG_2PI).sum(-1)

    def kl_per_dim(self) -> Tensor:
        """KL(q || N(0, I)) per dimension in closed form, (B, D):
        0.5 * (mean^2 + var - logvar - 1)."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - self.logvar - 1.0)


class GaussianHead(nn.Module):
    """Maps a feature vector (B, F) to q(z|x) with a clamped log-variance.

    Two optional remedies for posterior collapse live here because they
    constrain q itself:
    - BN-VAE (Zhu et al. 2020, "A Batch Normalized Inference Network Keeps the
      KL Vanishing Away"): batch normalisation of the means with a fixed scale
      gamma and a learned shift, so E_x[mean_d^2] >= gamma^2 and the expected
      KL is at least D * gamma^2 / 2.
    - delta-VAE (Razavi et al. 2019, "Preventing Posterior Collapse with
      delta-VAEs"): the posterior variance is confined to an interval that
      excludes 1, so every dimension's KL is at least ``delta`` nats.
    """

    def __init__(self, in_features: int, latent_dim: int, logvar_min: float = -10.0, logvar_max: float = 10.0,
                 bn_gamma: float = 0.0, delta: float = 0.0) -> None:
        super().__init__()
        self.proj = nn.Linear(in_features, 2 * latent_dim)
        self.logvar_min, self.logvar_max = logvar_min, logvar_max
        self.bn_gamma = bn_gamma
        if bn_gamma > 0:
            self.mean_norm = nn.BatchNorm1d(latent_dim, affine=False)
            self.mean_shift = nn.Parameter(torch.zeros(latent_dim))
        self.delta = delta
        if delta > 0:
            low, high = delta_variance_bounds(delta)
            self.register_buffer("var_bounds", torch.tensor([low, high]), persistent=False)

    def forward(self, features: Tensor) -> DiagonalGaussian:
        mean, raw_logvar = self.proj(features).float().chunk(2, dim=-1)  # (B, D) each
        if self.bn_gamma > 0:
            norm = self.mean_norm
            if self.training and mean.shape[0] == 1:
                # One example has no batch statistics (BatchNorm raises): a
                # training batch of one, as when N = 1 mod batch_size, uses the running ones.
                normed = F.batch_norm(mean, norm.running_mean, norm.running_var, training=False, eps=norm.eps)
            else:
                normed = norm(mean)
            mean = self.bn_gamma * normed + self.mean_shift
        if self.delta > 0:
            low, high = self.var_bounds
            logvar = torch.log(low + (high - low) * torch.sigmoid(raw_logvar))
        else:
            logvar = raw_logvar.clamp(self.logvar_min, self.logvar_max)
        return DiagonalGaussian(mean, logvar)


def delta_variance_bounds(delta: float) -> tuple[float, float]:
    """Variances (low, high) with 0.5 * (v - log v - 1) = delta on each side of 1.

    Any q with variance in [low, high] has KL >= delta per dimension whatever
    its mean, since 0.5 * (v - log v - 1) is the KL of N(0, v) from N(0, 1)
    and is decreasing below 1 and increasing above. The posterior variance is
    kept below 1 (the upper root is not used), as in Razavi et al. 2019.
    """
    target = 2.0 * delta

    def gap(v: float) -> float:
        return v - math.log(v) - 1.0 - target

    lo, hi = 1e-12, 1.0
    for _ in range(200):  # bisection on (0, 1), where gap decreases
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if gap(mid) > 0 else (lo, mid)
    upper = lo
    return 1e-6, upper
