"""Importance-weighted estimate of log p(x) (Burda et al. 2016), shared by
the text and image models.

    log p(x) ~= log (1/K) sum_k p(x | z_k) p(z_k) / q(z_k | x),  z_k ~ q(z|x)

It is a lower bound on log p(x) for every K, equals the ELBO in expectation
at K = 1, and tightens towards log p(x) as K grows. A model offers
``posterior(batch) -> DiagonalGaussian`` and ``log_likelihood(batch, z)`` with
z (S, B, D) -> (S, B), and may offer ``prior`` (prior.py; N(0, I) otherwise); the K samples are taken ``chunk`` at a time, so memory
stays bounded, and combined with log-sum-exp.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ..latent import standard_normal_log_prob


@torch.no_grad()
def importance_weighted_log_likelihood(model, batch, num_samples: int, chunk: int = 50,
                                       generator: Optional[torch.Generator] = None) -> Tensor:
    """(B,) estimates of log p(x) in nats, from ``num_samples`` samples each."""
    q = model.posterior(batch)
    pieces = []
    for start in range(0, num_samples, chunk):
        size = min(chunk, num_samples - start)
        z = q.sample(size, generator=generator)  # (S, B, D)
        log_prior = model.prior.log_prob(z) if hasattr(model, "prior") else standard_normal_log_prob(z)
        log_weight = model.log_likelihood(batch, z).float() + log_prior - q.log_prob(z)
        pieces.append(torch.logsumexp(log_weight, dim=0))  # (B,)
    return torch.logsumexp(torch.stack(pieces), dim=0) - math.log(num_samples)
