"""``textvae mnist eval``: the shared figures of ``evaluation/results.py``
for the MNIST model, per image in nats.

One ELBO pass (rec, KL, MI, active units) and the importance-weighted NLL
(Burda et al. 2016) through the same driver as the text models, with
``iw_samples`` samples per image from one seeded generator.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Optional

from ..evaluation.elbo import evaluate_elbo
from ..evaluation.journal import IWJournal
from ..evaluation.likelihood import importance_weighted_nll
from ..evaluation.progress import progress
from ..evaluation.results import likelihood_figures
from .batches import ImageBatches
from .model import ConvVAE


def evaluate_images(model: ConvVAE, batches: ImageBatches, iw_samples: int, seed: int = 0,
                    journal: Optional[IWJournal] = None) -> dict[str, Any]:
    """Figures, settings and timings of ``model`` on ``batches`` (the caller
    adds where the images came from and what ran it); a ``journal`` lets a
    stopped importance-weighted NLL go on where it was (journal.py)."""
    model.eval()
    started = time.perf_counter()
    stats = evaluate_elbo(model, batches.iterate(0), model.device, seed=seed)
    elbo_seconds = time.perf_counter() - started
    done = 0 if journal is None else journal.open(model, batches.images.numpy().tobytes(), {
        "iw_samples": iw_samples, "seed": seed, "batch_size": batches.batch_size, "device": model.device.type})
    left = len(batches) - sum(len(batch) for batch in itertools.islice(batches.iterate(0), done))
    bar = progress(left, f"IW-NLL ({iw_samples} samples)", "images")
    nll = importance_weighted_nll(model, batches.iterate(0), iw_samples, model.device, seed=seed,
                                  progress=lambda batch: bar.update(len(batch)), journal=journal)
    bar.close()
    nll_seconds = time.perf_counter() - started - elbo_seconds
    return {"images": len(batches), "unit": "nats per image", **likelihood_figures(stats, nll, model.latent_dim),
            "settings": {"iw_samples": iw_samples, "seed": seed, "batch_size": batches.batch_size},
            "timings": {"elbo_s": round(elbo_seconds, 1), "nll_s": round(nll_seconds, 1)}}
