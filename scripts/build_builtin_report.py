"""results/builtin.md and .json, and the built-in model's card, from the
outputs of scripts/train_builtin.py (its eval JSONs, fluency and showcase)."""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _cpu() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _train_summary(run: Path) -> dict:
    from textvae.training.info import run_info

    info = run_info(run)
    wall = run / "train_wall_seconds.txt"
    return {"steps": info.step, "epochs_completed": info.epoch, "train_seconds": info.seconds,
            "wall_seconds_with_startup": float(wall.read_text()) if wall.exists() else None,
            "stop_reason": info.stop_reason, "best_valid": info.best_valid,
            "config": json.loads((run / "config.json").read_text())}


EXACT_BAR = 0.6  # the share of held-out sentences a shipped model gives back exactly


def build_report(out: Path, report: dict, args) -> dict:
    """Write results/builtin.{md,json}; return the model card (``card["ships"]``:
    whether the model reached the bar and is exported into the package)."""
    vae_eval = json.loads((out / "vae" / "eval_test.json").read_text())
    lm_eval = json.loads((out / "lm" / "eval_test.json").read_text())
    vae_train, lm_train = _train_summary(out / "vae"), _train_summary(out / "lm")
    fluency = report["fluency"]
    command = (f"python scripts/train_builtin.py --data {args.data} --out {args.out} --budget {args.budget:g} "
               f"--lm-budget {args.lm_budget:g} --threads {args.threads}"
               + (f" --precision {args.precision}" if args.precision != "fp32" else ""))
    machine = f"{_cpu()}, {args.threads} threads, {args.precision}, no GPU"
    figures = {
        "exact match (test)": f"{100 * vae_eval['exact_match']:.1f}%",
        "BLEU of reconstructions": f"{vae_eval['bleu']:.1f}",
        "test NLL (IW, 500 samples)": f"{vae_eval['nll']:.2f} nats/sentence (same-size LM: {lm_eval['nll']:.2f})",
        "KL / MI / AU": f"{vae_eval['kl']:.1f} / {vae_eval['mi']:.2f} / {vae_eval['au']}/{len(vae_eval['au_variances'])}",
        "sample NLL per word under the LM": f"{fluency['mixture_sample']['nll_per_word']:.2f} "
                                            f"(test sentences: {fluency['test_split']['nll_per_word']:.2f})",
    }
    card = {
        "description": "LSTM sentence VAE of WordNet's example sentences (lowercased BPE, 128-d latent, "
                       "mixture prior), trained with WordNet's lemmas and glosses; reconstructs held-out sentences",
        "figures": figures,
        "example": "textvae sample wordnet -n 5",
        "trained_by": command,
        "machine": machine,
    }
    card["ships"] = vae_eval["exact_match"] >= EXACT_BAR
    result = {"model": "wordnet", "run": f"{args.out}/vae", "command": command, "machine": machine, "vae_eval": vae_eval, "lm_eval": lm_eval,
              "vae_train": vae_train, "lm_train": lm_train, "fluency": fluency, "showcase": report["showcase"],
              "card": card}
    (ROOT / "results" / "builtin.json").write_text(json.dumps(result, indent=2) + "\n")
    (ROOT / "results" / "builtin.md").write_text(_markdown(result))
    return card


def _row(name: str, f: dict) -> str:
    return (f"| {name} | {f['nll_per_word']:.2f} | {f['distinct_1']:.3f} | {f['distinct_2']:.3f} | "
            f"{f['mean_length']:.2f} |")


def _markdown(r: dict) -> str:
    v, lm, fl = r["vae_eval"], r["lm_eval"], r["fluency"]
    vt, lt = r["vae_train"], r["lm_train"]
    lines = [
        "# The built-in `wordnet` model",
        "",
        "`textvae sample wordnet`, `TextVAE.from_pretrained(\"wordnet\")`: a sentence VAE of the embedded "
        "WordNet example sentences (`data/wordnet`, 43,480 training / 2,404 test sentences), "
        + ("shipped in `textvae/pretrained/wordnet` with bf16 weights. " if r["card"]["ships"] else
           f"**not shipped**: it gives back {100 * v['exact_match']:.1f}% of the test sentences exactly, short of "
           f"the {100 * EXACT_BAR:.0f}% a built-in model must reach, and its prior samples do not read like the "
           "corpus (below). ")
        + "Config: `configs/builtin/wordnet.yaml`. It trains on "
        "the example sentences (twice) together with every WordNet lemma (147,240) and 60,000 short glosses of "
        "the same database (`data/wordnet/lemmas.txt`, `glosses.txt`, extracted by "
        "`scripts/extract_wordnet_dictionary.py`; nothing equal to a held-out sentence): the lemmas show it how "
        "every word of the dictionary is spelt, which the held-out sentences need (36% of the test sentences "
        "have a word that no training sentence has). The mixture prior is fitted to the example sentences "
        "only, and the LM is trained on them only.",
        "",
        f"Reproduce: `{r['command']}` ({r['machine']}). All figures below come from that run.",
        "",
        "## Test split",
        "",
        "| model | NLL (IW, 500) | PPL (words) | ELBO | KL | MI | AU | exact match | BLEU | train time |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| VAE + mixture prior | {v['nll']:.2f} | {v.get('ppl_word', float('nan')):.1f} | {v['elbo']:.2f} | "
        f"{v['kl']:.2f} | {v['mi']:.2f} | {v['au']}/{len(v['au_variances'])} | {100 * v['exact_match']:.1f}% | "
        f"{v['bleu']:.1f} | {vt['train_seconds'] / 60:.1f} min |",
        f"| LM, same decoder, no latent | {lm['nll']:.2f} | {lm.get('ppl_word', float('nan')):.1f} | – | – | – | – | "
        f"– | – | {lt['train_seconds'] / 60:.1f} min |",
        "",
        "NLL in nats per sentence; for the VAE, log p(z) in the importance weights is the fitted mixture's density "
        "(the NLL of the two-stage model). Exact match: greedy decoding from the posterior mean equals the input, "
        "case and spacing aside. ELBO and KL are against N(0, I), the prior the VAE was trained with. "
        f"Training: {vt['steps']:,} steps ({vt['stop_reason']}); LM {lt['steps']:,} steps.",
        "",
        "## Fluency of prior samples",
        "",
        "1,000 samples each (seed 0), scored by the separately trained LM above: NLL per word (nats per whitespace "
        "word, end of sentence included; lower reads more like the corpus), distinct-1/2 and mean length in "
        "words, against the test sentences'.",
        "",
        "| sentences | LM NLL / word | distinct-1 | distinct-2 | mean length |",
        "|---|---|---|---|---|",
        _row("test split (all)", fl["test_split"]),
        _row("test split (1,000 drawn)", fl["test_sample_1000"]),
        _row("mixture prior, sampled decoding", fl["mixture_sample"]),
        _row("mixture prior, greedy decoding", fl["mixture_greedy"]),
        _row("N(0, I) prior, sampled decoding", fl["normal_sample"]),
        _row("N(0, I) prior, greedy decoding", fl["normal_greedy"]),
        "",
        "## Real output",
        "",
    ]
    tail = [NOTES]
    for item in r["showcase"]:
        shown = item["command"] if r["card"]["ships"] else item["command"].replace(" wordnet ", f" {r['run']} ")
        lines += [f"`{shown}`", "", "```", *item["output"], "```", ""]
    return "\n".join(lines + tail)


NOTES = """## What was tried before this recipe

All on the same corpus and machine (AMD EPYC, fp32), one thread, greedy
reconstruction from the posterior mean; exact match on the first 1,000
validation sentences unless said otherwise:

| recipe | training | exact match |
|---|---|---|
| 64-d latent, beta 0.1, BN-VAE gamma 1, dropout 0.1, word dropout 0.2 (earlier session) | 50 min, 19 epochs | 7.8% (test) |
| 64-d, beta 0.02, no word dropout | 10 min | 2.2% |
| 128-d, beta 0.02, no word dropout | 10 min | 2.8% |
| 128-d, beta 0.005, no dropout, Adam 3e-3 | 10 min | 10.2% |
| the same, Transformer encoder and decoder (3 + 3 layers, 8 memory vectors) | 10 min | 0.1% |
| 128-d, beta 0.005, no dropout, Adam 3e-3, example sentences only | 26 min, 9.6 epochs | 20.5% |
| the same with lemmas and glosses (this model) | 15 min, 1.2 epochs | 26.8% |

On the example sentences alone the model memorised its training set
(training reconstruction 7.3 nats, validation 24.8 and flat): WordNet's
examples illustrate rare words, and a sentence with a word the model has
never seen cannot be spelt back. The dictionary's lemmas and glosses fix
that: validation reconstruction passed the example-only run's best within
one epoch. The best weights are chosen by the training objective (rec +
beta KL); the -ELBO would keep the first steps' weights for beta < 1.

## What the run of 2026-12-01 shows, and what is next

- Faithful, not yet enough: 35.7% of the test split back exactly (BLEU
  31.9); 49.9% of its first 1,000 sentences and 54.1% of the first 1,000
  validation sentences, since the split runs from short adjective phrases
  to longer verb examples. Validation reconstruction was still falling at
  the end of the hour (4.7 epochs; 12.95 nats at step 20,000), so more
  epochs (both threads, or a cheaper step) are the first lever.
- Not fluent: a code of 260 nats (beta 0.005) makes the posteriors points,
  and a 64-component mixture over 128 dimensions does not find the regions
  between them that decode to sentences: mixture samples score 10.13 nats
  per word under the LM against the test sentences' 7.23 (N(0, I): 11.84),
  and the two-stage model's IW-NLL is 239 nats against the LM's 50.3, the
  price of posteriors that narrow. Interpolations between two sentences
  start and end at them (both showcase pairs above). Next: a smaller code
  (a KL target of about 60-80 nats, the information a sentence holds under
  the LM plus margin), so that the decoder learns to read the neighbourhood
  of each code, and a stronger second stage (a flow over the means).

## Where it fails, and two more probes (a later session, same machine)

`python scripts/builtin_diagnostics.py runs/builtin3` (output in
`results/builtin_diagnostics.json`) splits the test split's exact matches:

| words in the sentence | 1-2 | 3-5 | 6-8 | 9-11 | 12+ |
|---|---|---|---|---|---|
| sentences | 287 | 915 | 752 | 318 | 132 |
| exact | 86.8% | 54.9% | 13.8% | 1.3% | 0% |

and by words that no training sentence has: none 43.0% (1,548 sentences),
one 26.0% (720), two 6.2% (112), three or more 0% (24). Half the failures
are five or more words off; the near misses swap two words ("jacob a was
hairy man") or misspell a rare one ("christ is renis!"). The code holds
short sentences; past six words it holds the words more than their order.

Shrinking the mixture's covariances (z = mu_k + tau L_k eps, 300 greedy
samples) lowers the samples' NLL under the LM from 9.33 nats per word
(tau 1) to 8.45, 7.81 and 7.27 (tau 0.7, 0.5, 0.3; test sentences 7.23),
none a training sentence, but they still invent words ("the romasy in the
hathement"): the LM's figure alone does not make them fluent, so no
temperature is offered as a fix.

Two 1-thread probes of the recipe's 60-minute schedule, stopped early (exact
match on the first 1,000 validation sentences):

| change | stopped at | exact match | the recipe at the same step |
|---|---|---|---|
| decoder and embeddings 512 wide (8.2M parameters) | step 1,000 (validation rec 48.0 nats) | – | rec 46.3, at 2.3 times less time a step |
| beta 0.001 (KL 428 nats) | step 5,000 (1.1 epochs) | 22.7% | 21.2% (beta 0.005, KL 297) |

Neither changes the picture: a wider decoder costs more time than it gives
back early, and a code 130 nats richer buys 1.5 points. More epochs are
still the lever for exactness (both threads for the hour), and a smoother
latent for fluency.
"""
