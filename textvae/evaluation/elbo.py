"""One pass over a data set: the ELBO's terms and the latent statistics."""

from __future__ import annotations

import contextlib
from typing import Iterable, Optional

import torch

from ..threads import tick
from .latent_stats import active_units, mutual_information


@torch.no_grad()
def evaluate_elbo(model, batches: Iterable, device: torch.device, autocast=contextlib.nullcontext,
                  seed: int = 0, progress: Optional[callable] = None) -> dict:
    """Mean rec, KL and ELBO per example (nats), plus MI and active units.

    Uses its own seeded generator for the reparameterised samples, so it never
    disturbs the training random stream and gives the same figures each time.
    """
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    rec = kl = 0.0
    examples = units = 0
    means, logvars = [], []
    for batch in batches:
        tick()
        batch = batch.to(device)
        with autocast():
            out = model(batch, generator=generator)
        rec += float(out.rec.float().sum())
        kl += float(out.kl.float().sum())
        examples += len(batch)
        units += int(out.tokens.sum()) if out.tokens is not None else 0
        if out.mean is not None:
            means.append(out.mean.float().cpu())
            logvars.append(out.logvar.float().cpu())
        if progress:
            progress(len(batch))
    model.train(was_training)
    result = {"rec": rec / examples, "kl": kl / examples, "elbo": -(rec + kl) / examples,
              "examples": examples, "units": units}
    if means:
        mean, logvar = torch.cat(means), torch.cat(logvars)
        result["au"], variances = active_units(mean)
        result["au_variances"] = [round(float(v), 6) for v in variances]
        result["mi"] = mutual_information(mean, logvar, torch.Generator().manual_seed(seed))
    return result
