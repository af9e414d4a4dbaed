"""What ``/api/info`` tells about a run: its config, size, stored evaluation,
latent statistics and training curves.

Latent statistics come from the run's stored evaluation (``eval_test.json``,
else ``eval_valid.json``) where it holds them, else they are computed on the
map's sample of training sentences; each figure says where it came from.
KL per dimension is never stored, so it always comes from the map sample.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from ..evaluation.latent_stats import active_units, mutual_information
from ..latent import DiagonalGaussian

log = logging.getLogger("textvae")

EVAL_KEYS = ("split", "sentences", "nll", "ppl", "ppl_word", "elbo", "rec", "kl", "mi", "au", "bleu",
             "distinct_2", "self_bleu")
TRAIN_KEYS = ("loss", "rec", "kl", "kl_weight")
VALID_KEYS = ("elbo", "rec", "kl", "mi", "au")
AU_THRESHOLD = 0.01  # evaluation.latent_stats.active_units' default (Burda et al. 2016)


def stored_evaluation(run_dir: Path) -> Optional[dict[str, Any]]:
    """The first of ``eval_test.json`` and ``eval_valid.json`` that reads as
    JSON, with its file name; None when there is none."""
    for name in ("eval_test.json", "eval_valid.json"):
        path = run_dir / name
        if not path.is_file():
            continue
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            log.warning("%s is not readable JSON; ignored", path)
            continue
        if isinstance(raw, dict):
            found = {key: raw[key] for key in EVAL_KEYS if key in raw}
            found["file"] = name
            if isinstance(raw.get("au_variances"), list):
                found["au_variances"] = raw["au_variances"]
            return found
    return None


def training_curves(run_dir: Path, max_points: int = 400) -> dict[str, list[dict[str, float]]]:
    """Train and validation records of ``metrics.jsonl`` (train thinned to
    about ``max_points``); empty lists when the file is missing or unreadable."""
    curves: dict[str, list[dict[str, float]]] = {"train": [], "valid": []}
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return curves
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        split = record.get("split") if isinstance(record, dict) else None
        keys = TRAIN_KEYS if split == "train" else VALID_KEYS if split == "valid" else ()
        if keys and "step" in record:
            curves[split].append({"step": record["step"], **{k: record[k] for k in keys if k in record}})
    stride = max(1, len(curves["train"]) // max_points)
    curves["train"] = curves["train"][::stride]
    return curves


def latent_statistics(evaluation: Optional[dict[str, Any]], mean: Optional[Tensor],
                      logvar: Optional[Tensor]) -> dict[str, Any]:
    """KL per dimension, AU variances and count, MI and KL, each with its source.

    ``mean``, ``logvar``: the map sample's posteriors (N, D), or None.
    """
    stats: dict[str, Any] = {"au_threshold": AU_THRESHOLD, "kl_per_dim": None, "au_variances": None,
                             "active_units": None, "mi": None, "kl": None, "sources": {}}
    where = f"stored evaluation ({evaluation['file']})" if evaluation else ""
    sample = f"map sample ({len(mean)} training sentences)" if mean is not None else ""
    if mean is not None:
        per_dim = DiagonalGaussian(mean, logvar).kl_per_dim().mean(0)  # (D,) nats
        stats["kl_per_dim"] = [round(float(v), 5) for v in per_dim]
        stats["kl"] = round(float(per_dim.sum()), 5)
        stats["sources"]["kl_per_dim"] = stats["sources"]["kl"] = sample
    if evaluation and isinstance(evaluation.get("kl"), (int, float)):
        stats["kl"], stats["sources"]["kl"] = evaluation["kl"], where
    if evaluation and evaluation.get("au_variances"):
        variances = [float(v) for v in evaluation["au_variances"]]
        stats["au_variances"], stats["sources"]["au"] = variances, where
        stats["active_units"] = sum(v > AU_THRESHOLD for v in variances)
    elif mean is not None:
        count, variances = active_units(mean, AU_THRESHOLD)
        stats["au_variances"] = [round(float(v), 6) for v in variances]
        stats["active_units"], stats["sources"]["au"] = count, sample
    if evaluation and isinstance(evaluation.get("mi"), (int, float)):
        stats["mi"], stats["sources"]["mi"] = evaluation["mi"], where
    elif mean is not None:
        stats["mi"] = round(mutual_information(mean, logvar, torch.Generator().manual_seed(0)), 5)
        stats["sources"]["mi"] = sample
    return stats
