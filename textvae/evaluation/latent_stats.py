"""How much the latent space is used: mutual information and active units.

Both work on the posterior parameters of a whole data set, so the text and
image models share them.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ..latent import LOG_2PI


def active_units(means: Tensor, threshold: float = 0.01) -> tuple[int, Tensor]:
    """Burda et al. 2016: dimension d is active when Cov_x(E_q[z_d]) > threshold.

    means (N, D) posterior means -> (count, per-dimension variances (D,)).
    """
    variances = means.double().var(dim=0, unbiased=True) if len(means) > 1 else torch.zeros(means.shape[1])
    return int((variances > threshold).sum()), variances.float()


@torch.no_grad()
def mutual_information(means: Tensor, logvars: Tensor, generator: Optional[torch.Generator] = None,
                       chunk: int = 256) -> float:
    """I(x; z) under q(x, z) = p_data(x) q(z|x), as in He et al. 2019:

        I = E_x E_q(z|x)[log q(z|x)] - E_x E_q(z|x)[log q(z)],

    where q(z) = 1/N sum_j q(z|x_j) is the aggregate posterior over the same N
    examples, with one z ~ q(z|x_i) per example. means, logvars: (N, D). Nats.
    The estimate is biased low by at most log N; it is 0 when q ignores x.

    Both expectations use the same sample z_i: He et al.'s code takes the first
    in closed form (the negative entropy), which has the same expectation but
    leaves the sampling noise of the second uncancelled, so a collapsed model
    could show an MI of -0.15 nats on a small split.
    """
    means, logvars = means.double(), logvars.double()
    count = means.shape[0]
    eps = torch.randn(means.shape, generator=generator, dtype=means.dtype, device=means.device)
    z = means + torch.exp(0.5 * logvars) * eps  # (N, D)
    log_q_z_given_x = -0.5 * (eps ** 2 + logvars + LOG_2PI).sum(-1)  # (N,) log q(z_i | x_i)
    inv_var = torch.exp(-logvars)  # (N, D)
    # log q(z_i | x_j) expanded as matrix products, so no (C, N, D) tensor is made:
    # -1/2 [z_i^2 . inv_j - 2 z_i . (mean_j inv_j) + sum(mean_j^2 inv_j + logvar_j) + D log 2 pi]
    weighted_mean = means * inv_var  # (N, D)
    per_component = (means * weighted_mean + logvars).sum(-1) + means.shape[1] * LOG_2PI  # (N,)
    log_q_z = []
    for start in range(0, count, chunk):
        zs = z[start: start + chunk]  # (C, D)
        log_density = -0.5 * ((zs ** 2) @ inv_var.T - 2 * zs @ weighted_mean.T + per_component)  # (C, N)
        log_q_z.append(torch.logsumexp(log_density, dim=1) - math.log(count))
    return float((log_q_z_given_x - torch.cat(log_q_z)).mean())
