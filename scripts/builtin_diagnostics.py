"""Where a built-in model candidate fails: exact match of greedy
reconstructions on the test split by sentence length and by the number of
words no training sentence has, and how its mixture prior's samples read
under the language model as the mixture's covariances are shrunk
(a sampling temperature: z = mu_k + tau * L_k eps). With ``--refine N,M``
the exact match and BLEU again with each mean refined by N, M steps
(semi-amortized inference, textvae/inference.py), with their seconds.
Decoding may spell any word unless ``--known-words`` (textvae/lexicon.py).

    python scripts/builtin_diagnostics.py runs/builtin3 [--data data/wordnet] [--samples 300] [--refine 10,30]

RUN is a train_builtin.py output folder (RUN/vae, RUN/lm). Prints JSON.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import sys
import time
from pathlib import Path

import textvae  # noqa: F401  (first: its OpenMP defaults precede torch)
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_builtin import nll_per_word  # noqa: E402

from textvae.cli.use import set_refine  # noqa: E402
from textvae.data import tokenize_split  # noqa: E402
from textvae.evaluation.text_eval import exact_match  # noqa: E402
from textvae.evaluation.text_metrics import corpus_bleu  # noqa: E402
from textvae.model import TextVAE  # noqa: E402
from textvae.operations import decode  # noqa: E402


def by_group(texts: list[str], outputs: list[str], key) -> dict:
    groups = collections.defaultdict(list)
    for text, out in zip(texts, outputs):
        groups[key(text)].append((text, out))
    return {name: {"sentences": len(pairs), "exact": round(exact_match([o for _, o in pairs], [t for t, _ in pairs]), 3)}
            for name, pairs in sorted(groups.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--data", default="data/wordnet")
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--refine", default="", help="comma-separated refinement steps to measure as well")
    parser.add_argument("--known-words", action="store_true", help="hold decoding to the training corpus's words")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    vae, lm = TextVAE.from_pretrained(Path(args.run) / "vae"), TextVAE.from_pretrained(Path(args.run) / "lm")
    vae.config.model = dataclasses.replace(vae.config.model, known_words=args.known_words)
    data = Path(args.data)
    test = [t for t in (data / "test.txt").read_text().splitlines() if t.strip()]
    seen = collections.Counter(w for line in (data / "train.txt").read_text().lower().splitlines() for w in line.split())
    outputs = vae.reconstruct(test, strategy="greedy")
    length = lambda t: {0: "1-2", 1: "3-5", 2: "6-8", 3: "9-11"}.get(len(t.split()) // 3, "12+")  # noqa: E731
    unseen = lambda t: str(min(3, sum(seen[w] == 0 for w in t.lower().split()))).replace("3", "3+")  # noqa: E731
    result = {"run": args.run, "exact": round(exact_match(outputs, test), 3),
              "exact_by_words": by_group(test, outputs, length),
              "exact_by_words_unseen_in_training": by_group(test, outputs, unseen)}
    result["refined"] = {}
    split = tokenize_split("test", test, vae.tokenizer, vae.config.data.max_length)
    assert split.texts == test, "every test sentence has tokens"
    references = [vae.tokenizer.decode(ids) for ids in split.ids]  # BLEU as `textvae eval` scores it
    for steps in [int(n) for n in args.refine.split(",") if n.strip()]:
        set_refine(vae, steps)
        start = time.perf_counter()
        refined = vae.reconstruct(test, strategy="greedy")
        result["refined"][str(steps)] = {
            "exact": round(exact_match(refined, test), 3), "bleu": round(corpus_bleu(refined, references)[0], 1),
            "seconds": round(time.perf_counter() - start, 1), "threads": args.threads,
            "exact_by_words": by_group(test, refined, length)}
    prior, training = vae.prior, set(" ".join(t.lower().split()) for t in (data / "train.txt").read_text().splitlines())
    result["mixture_temperature"] = {}
    for tau in (1.0, 0.7, 0.5, 0.3):
        generator = torch.Generator().manual_seed(0)
        which = torch.multinomial(prior.log_weights.exp(), args.samples, replacement=True, generator=generator)
        eps = torch.randn(args.samples, vae.latent_dim, 1, generator=generator)
        z = prior.means[which] + tau * (prior.scale_tril[which] @ eps).squeeze(-1)
        samples = decode(vae, z, strategy="greedy")
        result["mixture_temperature"][str(tau)] = {
            "lm_nll_per_word": round(nll_per_word(lm, samples), 2),
            "training_sentences": sum(" ".join(s.lower().split()) in training for s in samples),
            "examples": samples[:5]}
    result["test_lm_nll_per_word"] = round(nll_per_word(lm, test), 2)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
