"""Semi-amortized inference: the encoder's posterior mean, refined per example.

An encoder maps every input to q(z|x) in one pass, and for an input it has
not seen its mean can sit far from the code the decoder would need (the
amortization gap, Cremer et al. 2018). Kim et al. 2018 ("Semi-Amortized
Variational Autoencoders") take the encoder's output as the starting point
of a few gradient steps on the example's own objective. Here the steps move
the mean m of each example, with Adam, on the model's objective at z = m:

    L(m) = -log p(x | z = m) + beta * KL(N(m, s^2) || N(0, I)),
    dKL/dm = m, so the KL term is beta * |m|^2 / 2 up to a constant in m,

with beta the objective's KL weight (``objective.kl_weight``) and s the
encoder's standard deviation, which is kept. Each example keeps the best mean
its steps reached (never worse than the encoder's own), and no example
influences another. Shared by the text and image models: it needs only
``log_likelihood(batch, z)``. Used when a model is put to use (encode,
reconstruct, interpolate, and the evaluation's reconstructions), never in
training, and off by default (``objective.refine_steps = 0``).
"""

from __future__ import annotations

import torch

from .latent import DiagonalGaussian


def refine_posterior(model, batch, q: DiagonalGaussian, steps: int, lr: float, kl_weight: float) -> DiagonalGaussian:
    """q with each example's mean moved by ``steps`` Adam steps of rate ``lr``
    on L(m) above; q itself when ``steps`` is 0. Means (B, D) -> (B, D)."""
    if steps <= 0:
        return q
    start = q.mean.detach().float()
    mean = start.clone().requires_grad_(True)
    best, best_loss = start.clone(), torch.full((len(start),), float("inf"), device=start.device)
    optimizer = torch.optim.Adam([mean], lr=lr)
    with torch.enable_grad():
        for step in range(steps + 1):
            loss = 0.5 * kl_weight * mean.pow(2).sum(-1) - model.log_likelihood(batch, mean.unsqueeze(0))[0].float()
            better = loss.detach() < best_loss  # (B,) the mean this loss belongs to is the best so far
            best[better], best_loss[better] = mean.detach()[better], loss.detach()[better]
            if step == steps:
                break
            (mean.grad,) = torch.autograd.grad(loss.sum(), [mean])
            optimizer.step()
    return DiagonalGaussian(best.to(q.mean.dtype), q.logvar)
