"""``textvae eval``: every figure the literature reports for a sentence VAE.

All figures are per sentence in nats unless named otherwise; the ones every
model gets follow the shared schema of ``results.py``:

- rec, kl, elbo: one-sample reconstruction term, closed-form KL, their sum
  with a minus sign (Bowman et al. 2016).
- nll (nll_stderr): -log p(x) by importance weighting with K samples from
  q(z|x) (Burda et al. 2016); for a language model (latent_dim=0) the exact NLL.
- ppl: exp(total nll / predicted tokens), tokens counting eos and not bos;
  ppl_word: the same over whitespace words + one eos per sentence, so that
  models with different tokenizers compare.
- mi: I(x; z) under q (He et al. 2019); au: active units (Burda et al. 2016).
- bleu: sacrebleu corpus BLEU of greedy reconstructions from the posterior
  mean (refined by ``objective.refine_steps``, inference.py) against the
  inputs; exact_match: the share of those reconstructions equal to their
  input, case and spacing aside; distinct_1/2, self_bleu and mean_length of
  prior samples, against the data's mean length. Reconstructions and samples
  alike are held to the corpus's words where ``model.known_words`` says so
  (lexicon.py).
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch

from ..data import TextBatches, TextSplit
from ..nn.native_kernels import NativeKernels
from ..operations import reconstruct_batch
from ..runtime import autocast_context
from ..threads import tick
from .elbo import evaluate_elbo
from .journal import IWJournal
from .likelihood import importance_weighted_nll
from .progress import progress
from .results import likelihood_figures
from .text_metrics import corpus_bleu, distinct_n, self_bleu


@dataclass
class EvalSettings:
    iw_samples: int = 500
    iw_chunk: int = 50  # samples per decoder pass; bounds memory
    batch_size: int = 32
    num_samples: int = 500  # prior samples for the diversity figures
    seed: int = 0
    precision: str = "fp32"


@torch.no_grad()
def reconstructions(model, data: TextBatches, device: torch.device) -> list[str]:
    """Greedy decodings from the posterior means, in the split's order."""
    out: list[str] = [""] * len(data)
    for batch in data.iterate():
        tick()
        for text, index in zip(reconstruct_batch(model, batch.to(device)), batch.index.tolist()):
            out[index] = text
    return out


def exact_match(outputs: list[str], references: list[str]) -> float:
    """Share of ``outputs`` equal to their reference, ignoring case and whitespace."""
    def normal(text: str) -> str:
        return "".join(text.lower().split())

    return sum(normal(o) == normal(r) for o, r in zip(outputs, references)) / max(1, len(references))


def evaluate_text(model, split: TextSplit, settings: EvalSettings, device: torch.device,
                  journal: Optional[IWJournal] = None) -> dict[str, Any]:
    """Every figure of the module docstring on ``split``, in the shared result
    schema (``results.py``) plus the text figures; a ``journal`` lets a stopped
    importance-weighted NLL go on where it was (journal.py)."""
    model.eval()
    tok = model.tokenizer
    data = TextBatches(split, tok, settings.batch_size, shuffle=False)
    autocast = autocast_context(device, settings.precision)
    timings = {}
    start = time.perf_counter()
    stats = evaluate_elbo(model, data.iterate(), device, autocast, settings.seed)
    timings["elbo_s"] = time.perf_counter() - start

    start = time.perf_counter()
    tokens = sum(len(ids) + 1 for ids in split.ids)  # words/subwords + eos
    done = 0 if journal is None else journal.open(model, json.dumps(split.ids).encode(), {
        "split": split.name, "device": device.type, **{k: v for k, v in asdict(settings).items() if k != "num_samples"}})
    cost = lambda batch: int(batch.lengths.sum()) - len(batch)  # noqa: E731  a pass costs about its tokens
    left = tokens - sum(cost(batch) for batch in itertools.islice(data.iterate(), done))
    bar = progress(left, f"IW-NLL ({settings.iw_samples} samples)", "tokens")
    native_before = NativeKernels.calls
    nll = importance_weighted_nll(model, data.iterate(), settings.iw_samples, device, settings.iw_chunk, autocast,
                                  settings.seed, lambda batch: bar.update(cost(batch)), journal)
    bar.close()
    timings["nll_s"] = time.perf_counter() - start
    total_nll = float(nll.sum())
    words = sum(len(text.split()) + 1 for text in split.texts)
    result: dict[str, Any] = {"split": split.name, "sentences": len(split), "tokens": tokens, "words": words,
                              "unit": "nats per sentence", **likelihood_figures(stats, nll, model.latent_dim),
                              "ppl": float(torch.tensor(total_nll / tokens).exp())}
    if tok.source != "word":
        result["ppl_word"] = float(torch.tensor(total_nll / words).exp())
    references = [tok.decode(ids) for ids in split.ids]
    if model.has_latent:
        start = time.perf_counter()
        outputs = reconstructions(model, data, device)
        result["bleu"], result["bleu_signature"] = corpus_bleu(outputs, references)
        result["exact_match"] = exact_match(outputs, split.texts)
        timings["bleu_s"] = time.perf_counter() - start
    start = time.perf_counter()
    samples = model.sample(settings.num_samples, seed=settings.seed)
    timings["samples_s"] = time.perf_counter() - start
    result.update(
        distinct_1=distinct_n(samples, 1), distinct_2=distinct_n(samples, 2), self_bleu=self_bleu(samples),
        mean_length=sum(len(s.split()) for s in samples) / len(samples),
        data_mean_length=sum(len(r.split()) for r in references) / len(references),
        examples=samples[:5],
    )
    result["settings"] = {**asdict(settings), "refine_steps": model.config.objective.refine_steps,
                          "known_words": model.config.model.known_words,
                          "native_kernels": NativeKernels.calls > native_before}  # nn/native_kernels.py ran
    result["timings"] = {k: round(v, 2) for k, v in timings.items()}
    return result


ROWS = [("nll", "NLL (IW)", "-log p(x), importance weighted; nats/sentence"),
        ("ppl", "PPL", "exp(NLL total / tokens incl. eos)"),
        ("ppl_word", "PPL (words)", "exp(NLL total / (words + eos))"),
        ("elbo", "ELBO", "-(rec + KL); nats/sentence"),
        ("rec", "rec", "-log p(x|z), one z ~ q(z|x)"),
        ("kl", "KL", "KL(q(z|x) || p(z)), closed form"),
        ("mi", "MI", "I(x; z) under q (He et al. 2019)"),
        ("au", "AU", "active units, Cov_x E_q[z] > 0.01"),
        ("bleu", "BLEU", "greedy reconstructions from the posterior mean"),
        ("exact_match", "exact match", "share of those equal to the input (case, spacing aside)"),
        ("distinct_1", "distinct-1", "prior samples"),
        ("distinct_2", "distinct-2", "prior samples"),
        ("self_bleu", "self-BLEU", "prior samples"),
        ("mean_length", "mean length", "words per prior sample"),
        ("data_mean_length", "data length", "words per sentence in the split")]


def format_table(result: dict[str, Any]) -> str:
    lines = [f"{result['split']}: {result['sentences']:,} sentences, {result['tokens']:,} tokens, "
             f"{result['settings']['iw_samples']} importance samples, {result['settings']['precision']}"
             + (f", reconstructions from means refined by {refine} steps"
                if (refine := result["settings"].get("refine_steps")) else "")
             + (", decoding held to the corpus's words" if result["settings"].get("known_words") else "")]
    for key, label, meaning in ROWS:
        if key in result:
            value = result[key]
            text = f"{value:d}" if isinstance(value, int) else f"{value:.3f}"
            lines.append(f"  {label:<12} {text:>10}   {meaning}")
    if "bleu_signature" in result:
        lines.append(f"  BLEU signature: {result['bleu_signature']}")
    return "\n".join(lines)
