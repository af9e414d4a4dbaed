"""Importance-weighted estimate of log p(x) (Burda et al. 2016), shared by
the text and image models.

    log p(x) ~= log (1/K) sum_k p(x | z_k) p(z_k) / q(z_k | x),  z_k ~ q(z|x)

It is a lower bound on log p(x) for every K, equals the ELBO in expectation
at K = 1, and tightens towards log p(x) as K grows. A model offers
``posterior(batch) -> DiagonalGaussian`` and ``log_likelihood(batch, z)`` with
z (S, B, D) -> (S, B), and may offer ``prior`` (prior.py; N(0, I) otherwise); the K
samples are taken ``chunk`` at a time, so memory stays bounded, and combined
with log-sum-exp. ``importance_weighted_nll`` runs it over a whole split for
both kinds of model.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Callable, Iterable, Optional

import torch
from torch import Tensor

from ..latent import standard_normal_log_prob
from ..nn.fused_scoring import fused_scoring
from ..threads import tick

log = logging.getLogger("textvae")


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


MAX_DECODES = 2000  # examples x samples decoded in one pass when no chunk is given (bounds memory)
# From this many samples the compiled scoring kernel (nn/fused_scoring.py)
# pays for its compile (seconds, once a process); a model without a latent
# decodes each sentence once and never repays it.
FUSED_MIN_SAMPLES = 100


@torch.no_grad()
def importance_weighted_nll(model, batches: Iterable, num_samples: int, device: torch.device, chunk: int = 0,
                            autocast: Callable = contextlib.nullcontext, seed: int = 0,
                            progress: Optional[Callable[[object], None]] = None, journal=None) -> Tensor:
    """-log p(x) of every example of ``batches``, in their order: (N,) float64 nats.

    The one driver of the estimate above for the text and image models: K =
    ``num_samples`` from one seeded generator over the whole split, ``chunk``
    samples per decoder pass (0: as many as keep MAX_DECODES decodings a
    pass). A model without a latent (the language-model baseline) has an
    exact log p(x), its reconstruction term. ``progress`` is given each batch
    once it is done (progress.py). With an opened ``journal.IWJournal`` the
    batches an earlier, stopped run did are taken from it, and what is done
    is saved as it goes.
    """
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    pieces = list(journal.pieces) if journal is not None else []
    if pieces:
        generator.set_state(journal.generator_state)
    state = generator.get_state() if journal is not None else None  # the sampler's after the batches in pieces
    try:
        for index, batch in enumerate(batches):
            if index < len(pieces):
                continue  # done before a stop
            tick()
            batch = batch.to(device)
            with autocast(), fused_scoring(model.has_latent and num_samples >= FUSED_MIN_SAMPLES):
                if not model.has_latent:
                    log_px = -model(batch).rec
                else:
                    samples = chunk or max(1, MAX_DECODES // len(batch))
                    log_px = importance_weighted_log_likelihood(model, batch, num_samples, samples, generator)
            pieces.append(-log_px.double().cpu())
            if journal is not None:
                state = generator.get_state()
                journal.save(pieces, state)
            if progress:
                progress(batch)
    except BaseException:  # Ctrl-C, a kill by SIGTERM, an error: keep what is done
        if journal is not None and journal.save(pieces, state, final=True):
            log.info(f"{len(pieces)} batches kept in {journal.path}: the same command goes on from there")
        raise
    if journal is not None:
        journal.save(pieces, state, final=True)
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.float64)
