"""The one result schema of ``textvae eval`` and ``textvae mnist eval``, and
the ``textvae compare`` table over it.

Every evaluation file (``RUN/eval_SPLIT.json``) holds, per example (a
sentence or an image) in nats:

- ``nll``, ``nll_stderr``: importance-weighted -log p(x) (Burda et al. 2016;
  exact for a language model) and its standard error over the examples;
- ``elbo``, ``rec``, ``kl``: the one-sample ELBO and its terms;
- ``mi``, ``au``, ``au_variances``: mutual information I(x; z) under q (He et
  al. 2019) and active units (Burda et al. 2016), absent without a latent;

and beside them ``latent_dim``, ``unit`` ("nats per sentence" or "nats per
image"), ``split``, ``data``, ``settings`` (``iw_samples``, ``seed``, ...),
``timings`` (seconds per part), ``device`` and ``command``. Text files add
perplexity, BLEU and sample diversity (``evaluation/text_eval.py``), and
``prior``: the p(z) of the NLL and the samples (the run's ``model.prior``,
or "normal" for ``textvae eval --prior normal``).

MNIST files written before the shared schema named ``nll`` ``iw_nll`` and
``au`` ``active_units``; ``read_result`` maps them, so old runs compare too.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from torch import Tensor

from ..errors import TextVAEError
from ..run_folder import eval_file, read_json

OLD_KEYS = {"iw_nll": "nll", "iw_nll_stderr": "nll_stderr", "active_units": "au"}
COMPARE_COLUMNS = [("nll", "NLL"), ("ppl", "PPL"), ("elbo", "ELBO"), ("rec", "rec"), ("kl", "KL"), ("mi", "MI"),
                   ("au", "AU"), ("bleu", "BLEU"), ("distinct_2", "distinct-2"), ("self_bleu", "self-BLEU")]


def likelihood_figures(stats: dict[str, Any], nll: Tensor, latent_dim: int) -> dict[str, Any]:
    """The shared figures from one ELBO pass (``evaluation.elbo.evaluate_elbo``)
    and the per-example -log p(x) (N,) of ``likelihood.importance_weighted_nll``."""
    count = len(nll)
    result: dict[str, Any] = {
        "nll": float(nll.mean()),
        "nll_stderr": float(nll.std() / math.sqrt(count)) if count > 1 else 0.0,
        "elbo": stats["elbo"], "rec": stats["rec"], "kl": stats["kl"], "latent_dim": latent_dim,
    }
    if "au" in stats:
        result.update(mi=stats["mi"], au=stats["au"], au_variances=stats["au_variances"])
    return result


def read_result(path: Path) -> dict[str, Any]:
    """An evaluation file in the current schema (older MNIST keys mapped)."""
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise TextVAEError(f"{path} does not hold an evaluation")
    result = {OLD_KEYS.get(key, key): value for key, value in raw.items()}
    if "unit" not in result:  # text files written before the shared schema
        result["unit"] = "nats per sentence" if "sentences" in result else "nats per image"
    for key, _ in COMPARE_COLUMNS:
        value = result.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise TextVAEError(f"{path} is damaged: its {key!r} is {str(value)[:40]!r}, not a number")
    if not isinstance(result["unit"], str):
        raise TextVAEError(f"{path} is damaged: its 'unit' is not text")
    return result


def read_run_result(run: Path, split: str) -> dict[str, Any]:
    path = run / eval_file(split)
    if not path.exists():
        raise TextVAEError(f"{run} has no stored evaluation ({path.name}); run `textvae eval {run} --data ...` "
                           f"(or `textvae mnist eval {run}`)")
    return read_result(path)


def compare_table(results: list[tuple[str, dict[str, Any]]]) -> str:
    """A Markdown table, one row per (name, result); "–" where a run has no such figure."""
    lines = ["| run | " + " | ".join(label for _, label in COMPARE_COLUMNS) + " | unit |",
             "|" + "---|" * (len(COMPARE_COLUMNS) + 2)]
    for name, result in results:
        cells = []
        for key, _ in COMPARE_COLUMNS:
            value = result.get(key)
            cells.append("–" if value is None else f"{value:d}" if isinstance(value, int) else f"{value:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {result['unit']} |")
    return "\n".join(lines)
