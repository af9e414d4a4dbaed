"""The training objective shared by the text and image models.

Everything is per example in nats: the model returns per-example
reconstruction terms -log p(x|z) and closed-form KL terms; this module weights
and floors the KL, and reduces to the scalar that training minimises.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .config import ObjectiveConfig


@dataclass
class VAEOutput:
    """What a VAE's forward pass returns (shapes for a batch of B examples).

    rec:        (B,) -log p(x|z) for one z ~ q(z|x), nats per example
    kl:         (B,) KL(q(z|x) || p(z)) in closed form, nats per example
    kl_per_dim: (B, D) the same per latent dimension (None without a latent)
    mean, logvar: (B, D) q(z|x)'s parameters (None without a latent)
    tokens:     (B,) predicted units per example (tokens incl. eos; pixels)
    bow:        (B,) -log p(bag of target tokens | z), the auxiliary loss of
                Zhao et al. 2017 (text with objective.bow_weight > 0; not in the ELBO)
    z:          (B, D) the sample of q(z|x) that ``rec`` was computed with
    """

    rec: Tensor
    kl: Tensor
    kl_per_dim: Optional[Tensor] = None
    mean: Optional[Tensor] = None
    logvar: Optional[Tensor] = None
    tokens: Optional[Tensor] = None
    bow: Optional[Tensor] = None
    z: Optional[Tensor] = None

    @property
    def elbo(self) -> Tensor:
        """(B,) the evidence lower bound, log p(x) >= -(rec + kl)."""
        return -(self.rec + self.kl)


def kl_weight(config: ObjectiveConfig, step: int, total_steps: int, fraction: Optional[float] = None) -> float:
    """The KL weight beta at optimisation ``step`` (0-based).

    - linear: from ``kl_start`` to ``kl_weight`` over ``kl_warmup_steps``
      (Bowman et al. 2016 anneal the weight from 0 to 1).
    - logistic: kl_weight / (1 + exp(-k (step - warmup/2))), Bowman et al. 2016.
    - cyclical: Fu et al. 2019 ("Cyclical Annealing Schedule"): ``kl_cycles``
      cycles over ``total_steps``; in each, the weight rises linearly from 0 to
      ``kl_weight`` during the first ``kl_cycle_ratio`` of the cycle, then holds.
      With ``fraction`` (the part of the run done, for a time budget) the
      cycles divide the run by that fraction instead of by steps.
    """
    top = config.kl_weight
    if config.kl_schedule == "constant":
        return top
    if config.kl_schedule == "linear":
        progress = min(1.0, step / config.kl_warmup_steps)
        return config.kl_start + (top - config.kl_start) * progress
    if config.kl_schedule == "logistic":
        midpoint = config.kl_warmup_steps / 2
        x = -config.kl_logistic_k * (step - midpoint)
        return top / (1.0 + math.exp(min(x, 700.0)))
    if config.kl_schedule == "cyclical" and fraction is not None:
        position = (min(fraction, 1.0 - 1e-9) * config.kl_cycles) % 1.0
        return top * min(1.0, position / config.kl_cycle_ratio)
    if config.kl_schedule == "cyclical":
        cycle_length = max(1, math.ceil(max(total_steps, 1) / config.kl_cycles))
        position = (step % cycle_length) / cycle_length
        return top * min(1.0, position / config.kl_cycle_ratio)
    raise ValueError(f"unknown KL schedule {config.kl_schedule!r}")


def selection_loss(result: dict, config: ObjectiveConfig) -> float:
    """The validation figure that picks the best weights and drives plateau
    decay and early stopping: the objective the run trains towards, i.e.
    rec + beta * KL at the schedule's final weight (Higgins et al. 2017). For
    beta = 1 this is the negative ELBO; for a beta-VAE with beta < 1 the -ELBO
    worsens as the code grows, and would keep the weights of the first steps."""
    return -result["elbo"] - (1.0 - config.kl_weight) * result["kl"]


def free_bits_kl(kl_per_dim: Tensor, free_bits: float, mode: str) -> Tensor:
    """The KL term the loss uses, (B,), floored so the optimiser stops pushing
    KL below ``free_bits`` nats (no gradient below the floor).

    - dim_batch: per dimension on the batch mean, max(lambda, E_batch KL_d)
      (Kingma et al. 2016, "Improved Variational Inference with Inverse
      Autoregressive Flow", eq. 15; the batch-level form of Li et al. 2019).
    - dim_example: per dimension and per example, max(lambda, KL_d(x)).
    - total: a target on each example's whole KL, max(lambda, KL(x)).
    The result's batch mean is the floored KL of the batch.
    """
    if free_bits <= 0:
        return kl_per_dim.sum(-1)
    if mode == "dim_batch":
        batch_mean = kl_per_dim.mean(0, keepdim=True)  # (1, D)
        # Per example: its own KL where the dimension is above the floor (so
        # the mean is unchanged), the constant floor where it is below.
        floored = torch.where(batch_mean > free_bits, kl_per_dim, torch.full_like(kl_per_dim, free_bits))
        return floored.sum(-1)
    if mode == "dim_example":
        return kl_per_dim.clamp(min=free_bits).sum(-1)
    if mode == "total":
        return kl_per_dim.sum(-1).clamp(min=free_bits)
    raise ValueError(f"unknown free-bits mode {mode!r}")


def elbo_loss(output: VAEOutput, beta: float, config: ObjectiveConfig, parts: Optional[dict] = None) -> Tensor:
    """Scalar loss: batch mean of rec + beta * (floored) KL (+ the weighted
    bag-of-words loss), nats per example, + the weighted MMD of the batch's
    codes; ``parts``, when given, receives the batch's ``bow`` and ``mmd``
    (for the log)."""
    if output.kl_per_dim is None:
        return output.rec.mean()
    loss = output.rec + beta * free_bits_kl(output.kl_per_dim, config.free_bits, config.free_bits_mode)
    if output.bow is not None:
        loss = loss + config.bow_weight * output.bow
        if parts is not None:
            parts["bow"] = float(output.bow.detach().mean())
    loss = loss.mean()
    if config.mmd_weight > 0 and output.z is not None and output.z.shape[0] > 1:
        mmd = mmd_to_normal(output.z)
        loss = loss + config.mmd_weight * mmd
        if parts is not None:
            parts["mmd"] = float(mmd.detach())
    return loss


def mmd_to_normal(z: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """The unbiased estimate of MMD^2 between the codes z (B, D) and as many
    N(0, I) samples, with the inverse multiquadratic kernel
    k(a, b) = C / (C + |a - b|^2) summed over scales C = s * 2D, s in MMD_SCALES
    (Tolstikhin et al. 2018, "Wasserstein Auto-Encoders", Algorithm 2 and
    section 4): a heavy-tailed kernel whose gradient does not vanish for codes
    far from the prior's samples. A scalar, 0 in expectation when q(z) = p(z).
    """
    n, dim = z.shape
    z = z.float()
    prior = torch.randn(z.shape, generator=generator, device=z.device)
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=z.device)
    distances = {name: torch.cdist(a, b).pow(2) for name, (a, b) in
                 {"qq": (z, z), "pp": (prior, prior), "qp": (z, prior)}.items()}  # each (B, B)
    total = z.new_zeros(())
    for scale in MMD_SCALES:
        c = scale * 2.0 * dim
        k = {name: c / (c + d) for name, d in distances.items()}
        total = total + (k["qq"][off_diagonal].mean() + k["pp"][off_diagonal].mean() - 2.0 * k["qp"].mean())
    return total


MMD_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def word_dropout(tokens: Tensor, rate: float, unk_id: int, protected: Tensor,
                 generator: Optional[torch.Generator] = None) -> Tensor:
    """Bowman et al. 2016: replace each decoder input token by unk with
    probability ``rate``, except where ``protected`` (bos, eos, pad) is True.

    tokens, protected: (B, T). Returns a new tensor; ``tokens`` is unchanged.
    """
    if rate <= 0:
        return tokens
    drop = torch.rand(tokens.shape, generator=generator, device=tokens.device) < rate
    return tokens.masked_fill(drop & ~protected, unk_id)
