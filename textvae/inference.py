"""Semi-amortized inference: the encoder's posterior mean, refined per example.

An encoder maps every input to q(z|x) in one pass, and for an input it has
not seen its mean can sit far from the code the decoder would need (the
amortization gap, Cremer et al. 2018). Kim et al. 2018 ("Semi-Amortized
Variational Autoencoders") take the encoder's output as the starting point
of a few gradient steps on the example's own objective. Here the steps move
the mean m of each example, with Adam, on the objective the model was
trained with, its reconstruction term taken at z = m:

    L(m) = -log p(x | z = m) + beta * FB(KL(N(m, s^2) || N(0, I))),

with beta the objective's KL weight (``objective.kl_weight``), FB its free
bits (objectives.free_bits_kl; "dim_batch" taken per example, as
"dim_example", so that no example influences another) and s the encoder's
standard deviation, which is kept. The bag-of-words and MMD terms are left
out. Each example keeps the best mean its steps reached (never worse than the
encoder's own). Shared by the text and image models: it needs only
``log_likelihood(batch, z)``. Used when a model is put to use (encode,
reconstruct, interpolate, and the evaluation's reconstructions), never in
training, and off by default (``objective.refine_steps = 0``).
"""

from __future__ import annotations

import torch

from .config import ObjectiveConfig
from .latent import DiagonalGaussian
from .objectives import free_bits_kl


def refined_objective(model, batch, mean, logvar, objective: ObjectiveConfig):
    """L(m) above for each example: means and log-variances (B, D) -> (B,) nats."""
    mode = "dim_example" if objective.free_bits_mode == "dim_batch" else objective.free_bits_mode
    kl = free_bits_kl(DiagonalGaussian(mean, logvar).kl_per_dim(), objective.free_bits, mode)
    return objective.kl_weight * kl - model.log_likelihood(batch, mean.unsqueeze(0))[0].float()


def refine_posterior(model, batch, q: DiagonalGaussian, objective: ObjectiveConfig) -> DiagonalGaussian:
    """q with each example's mean moved by ``objective.refine_steps`` Adam steps
    of rate ``objective.refine_lr`` on L(m) above; q itself for 0 steps.
    Means (B, D) -> (B, D)."""
    steps = objective.refine_steps
    if steps <= 0:
        return q
    start, logvar = q.mean.detach().float(), q.logvar.detach().float()
    mean = start.clone().requires_grad_(True)
    best, best_loss = start.clone(), torch.full((len(start),), float("inf"), device=start.device)
    optimizer = torch.optim.Adam([mean], lr=objective.refine_lr)
    with torch.enable_grad():
        for step in range(steps + 1):
            loss = refined_objective(model, batch, mean, logvar, objective)
            better = loss.detach() < best_loss  # (B,) the mean this loss belongs to is the best so far
            best[better], best_loss[better] = mean.detach()[better], loss.detach()[better]
            if step == steps:
                break
            (mean.grad,) = torch.autograd.grad(loss.sum(), [mean])
            optimizer.step()
    return DiagonalGaussian(best.to(q.mean.dtype), q.logvar)
