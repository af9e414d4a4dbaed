"""``textvae mnist eval``: the shared figures of ``evaluation/results.py``
for the MNIST model, per image in nats.

One ELBO pass (rec, KL, MI, active units) and the importance-weighted NLL
(Burda et al. 2016) through the same driver as the text models, with
``iw_samples`` samples per image from one seeded generator.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..evaluation.elbo import evaluate_elbo
from ..evaluation.likelihood import importance_weighted_nll
from ..evaluation.results import likelihood_figures
from .batches import ImageBatches
from .model import ConvVAE

log = logging.getLogger("textvae")
REPORT_EVERY = 60  # seconds between progress lines of a long IW-NLL


def evaluate_images(model: ConvVAE, batches: ImageBatches, iw_samples: int, seed: int = 0) -> dict[str, Any]:
    """Figures, settings and timings of ``model`` on ``batches`` (the caller
    adds where the images came from and what ran it)."""
    model.eval()
    started = time.perf_counter()
    stats = evaluate_elbo(model, batches.iterate(0), model.device, seed=seed)
    elbo_seconds = time.perf_counter() - started
    nll = importance_weighted_nll(model, batches.iterate(0), iw_samples, model.device, seed=seed,
                                  progress=_reporter(len(batches)))
    nll_seconds = time.perf_counter() - started - elbo_seconds
    return {"images": len(batches), "unit": "nats per image", **likelihood_figures(stats, nll, model.latent_dim),
            "settings": {"iw_samples": iw_samples, "seed": seed, "batch_size": batches.batch_size},
            "timings": {"elbo_s": round(elbo_seconds, 1), "nll_s": round(nll_seconds, 1)}}


def _reporter(total: int):
    """A progress callback that logs a line a minute with the time left."""
    started = last = time.time()
    done = 0

    def report(count: int) -> None:
        nonlocal done, last
        done += count
        if time.time() - last > REPORT_EVERY:
            last, rate = time.time(), done / (time.time() - started)
            log.info(f"IW-NLL: {done:,}/{total:,} images, about {(total - done) / rate:.0f} s left")

    return report
