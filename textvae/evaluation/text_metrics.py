"""Text-quality figures: reconstruction BLEU, distinct-n, self-BLEU."""

from __future__ import annotations

from typing import Sequence


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, str]:
    """sacrebleu corpus BLEU (0-100) of hypotheses against one reference each,
    with sacrebleu's signature so the figure can be reproduced exactly."""
    from sacrebleu.metrics import BLEU

    metric = BLEU()
    score = metric.corpus_score(list(hypotheses), [list(references)])
    return float(score.score), str(metric.get_signature())


def distinct_n(sentences: Sequence[str], n: int) -> float:
    """Distinct n-grams / all n-grams over whitespace tokens (Li et al. 2016)."""
    seen, total = set(), 0
    for sentence in sentences:
        words = sentence.split()
        grams = [tuple(words[i: i + n]) for i in range(len(words) - n + 1)]
        seen.update(grams)
        total += len(grams)
    return len(seen) / total if total else 0.0


def self_bleu(sentences: Sequence[str], limit: int = 200) -> float:
    """Mean sentence BLEU of each of the first ``limit`` sentences against all
    the other sentences as references (Zhu et al. 2018, Texygen); high means
    the samples repeat each other."""
    from sacrebleu.metrics import BLEU

    metric = BLEU(effective_order=True)
    sentences = [s for s in sentences if s.strip()]
    if len(sentences) < 2:
        return 0.0
    scores = []
    for i, hypothesis in enumerate(sentences[:limit]):
        others = sentences[:i] + sentences[i + 1:]
        scores.append(metric.sentence_score(hypothesis, others).score)
    return sum(scores) / len(scores)
