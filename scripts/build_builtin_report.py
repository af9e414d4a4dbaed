"""results/builtin.md and .json, and the built-in model's card, from the
outputs of scripts/train_builtin.py (its eval JSONs, fluency and showcase)."""

from __future__ import annotations

import json
import platform
import shlex
import subprocess
from pathlib import Path

from textvae.run_folder import NORMAL_PRIOR, eval_file

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
# Its prior samples read like the corpus: their NLL per word under the LM at
# most this much above the test sentences' own (nats per word), and at most
# this much fewer of their words made up (not in the training corpus).
FLUENCY_MARGIN = 1.0
KNOWN_WORDS_MARGIN = 0.05


def shown_samples(fluency: dict) -> dict:
    """The fluency figures of the samples `textvae sample` gives (model.known_words decides)."""
    return fluency[fluency.get("default_samples", "mixture_sample")]


def shortfalls(vae_eval: dict, fluency: dict) -> list[str]:
    """Why a candidate does not ship (empty: it does)."""
    out = []
    if vae_eval["exact_match"] < EXACT_BAR:
        out.append(f"it gives back {100 * vae_eval['exact_match']:.1f}% of the test sentences exactly, short of "
                   f"the {100 * EXACT_BAR:.0f}% a built-in model must reach")
    shown = shown_samples(fluency)
    samples, test = shown["nll_per_word"], fluency["test_split"]["nll_per_word"]
    if samples > test + FLUENCY_MARGIN:
        out.append(f"its prior samples do not read like the corpus ({samples:.2f} nats per word under the LM "
                   f"against the test sentences' {test:.2f}; a built-in model's must be within "
                   f"{FLUENCY_MARGIN:g})")
    known, test_known = shown.get("known_words"), fluency["test_split"].get("known_words")
    if known is None or known < test_known - KNOWN_WORDS_MARGIN:
        out.append("its prior samples make up words" + (
            f" ({100 * (1 - known):.1f}% of their words are in no training sentence, lemma or gloss, against "
            f"{100 * (1 - test_known):.1f}% of the test sentences')" if known is not None else " (not measured)"))
    return out


def build_report(out: Path, report: dict, args) -> dict:
    """Write results/builtin.{md,json}; return the model card (``card["ships"]``:
    whether the model reached the bar and is exported into the package)."""
    vae_eval = json.loads((out / "vae" / "eval_test.json").read_text())
    lm_eval = json.loads((out / "lm" / "eval_test.json").read_text())
    normal_file = out / "vae" / eval_file("test", NORMAL_PRIOR)  # the same VAE under N(0, I)
    normal_eval = json.loads(normal_file.read_text()) if normal_file.exists() else None
    vae_train, lm_train = _train_summary(out / "vae"), _train_summary(out / "lm")
    fluency = report["fluency"]
    command = (f"python scripts/train_builtin.py --data {args.data} --out {args.out} --budget {args.budget:g} "
               f"--lm-budget {args.lm_budget:g} --threads {args.threads}"
               + (f" --precision {args.precision}" if args.precision != "fp32" else "")
               + "".join(f" --set {shlex.quote(item)}" for item in args.set)
               + (f" --lm-from {args.lm_from}" if args.lm_from else ""))
    machine = f"{_cpu()}, {args.threads} thread{'s' if args.threads != 1 else ''}, {args.precision}, no GPU"
    figures = {
        "exact match (test)": f"{100 * vae_eval['exact_match']:.1f}%",
        "BLEU of reconstructions": f"{vae_eval['bleu']:.1f}",
        "test NLL (IW, 500 samples)": f"{vae_eval['nll']:.2f} nats/sentence"
                                      + (f", {normal_eval['nll']:.2f} under N(0, I)" if normal_eval else "")
                                      + f" (same-size LM: {lm_eval['nll']:.2f})",
        "KL / MI / AU": f"{vae_eval['kl']:.1f} / {vae_eval['mi']:.2f} / {vae_eval['au']}/{len(vae_eval['au_variances'])}",
        "sample NLL per word under the LM": f"{shown_samples(fluency)['nll_per_word']:.2f} "
                                            f"(test sentences: {fluency['test_split']['nll_per_word']:.2f})",
    }
    if shown_samples(fluency).get("new") is not None:
        figures["samples that are no training sentence"] = f"{100 * shown_samples(fluency)['new']:.1f}%"
    card = {
        "description": "LSTM sentence VAE of WordNet's example sentences (lowercased BPE, 128-d latent, "
                       f"{PRIOR_NAMES[fluency.get('prior_kind', 'gmm')]}), trained with WordNet's lemmas and "
                       "glosses; reconstructs held-out sentences",
        "figures": figures,
        "example": "textvae sample wordnet -n 5",
        "trained_by": command,
        "machine": machine,
    }
    card["ships"] = not shortfalls(vae_eval, fluency)
    result = {"model": "wordnet", "run": f"{args.out}/vae", "command": command, "machine": machine, "vae_eval": vae_eval, "lm_eval": lm_eval,
              "vae_eval_normal_prior": normal_eval,
              "vae_train": vae_train, "lm_train": lm_train, "fluency": fluency, "showcase": report["showcase"],
              "card": card}
    (ROOT / "results" / "builtin.json").write_text(json.dumps(result, indent=2) + "\n")
    (ROOT / "results" / "builtin.md").write_text(_markdown(result))
    return card


def _row(name: str, f: dict) -> str:
    known = f"{100 * f['known_words']:.1f}%" if "known_words" in f else "–"
    new = f"{100 * f['new']:.1f}%" if "new" in f else "–"
    new_nll = f"{f['new_nll_per_word']:.2f}" if f.get("new_nll_per_word") is not None else "–"
    return (f"| {name} | {f['nll_per_word']:.2f} | {f['distinct_1']:.3f} | {f['distinct_2']:.3f} | "
            f"{f['mean_length']:.2f} | {known} | {new} | {new_nll} |")


PRIOR_NAMES = {"gmm": "mixture prior", "exemplar": "exemplar prior"}
DECODING = {"sample": "sampled", "greedy": "greedy", "beam": "beam search"}


def _decoding(key: str) -> str | None:
    """The decoding of a known-words row of the fitted prior (train_builtin.sample_key), else None."""
    for strategy in DECODING:
        if key.startswith(f"mixture_known_{strategy}"):
            return strategy
    return None


def _temperature(row) -> float:
    return row.get("prior_temperature", 1.0) if isinstance(row, dict) else 1.0


def _at(row: dict) -> str:
    return f" at temperature {_temperature(row):g}" if _temperature(row) != 1 else ""


def _markdown(r: dict) -> str:
    v, lm, fl = r["vae_eval"], r["lm_eval"], r["fluency"]
    fitted = PRIOR_NAMES[fl.get("prior_kind", "gmm")]
    vt, lt = r["vae_train"], r["lm_train"]
    lines = [
        "# The built-in `wordnet` model",
        "",
        "`textvae sample wordnet`, `TextVAE.from_pretrained(\"wordnet\")`: a sentence VAE of the embedded "
        "WordNet example sentences (`data/wordnet`, 43,480 training / 2,404 test sentences), "
        + ("shipped in `textvae/pretrained/wordnet` with bf16 weights. " if r["card"]["ships"] else
           f"**not shipped**: {' and '.join(shortfalls(v, fl))} (below). ")
        + "Config: `configs/builtin/wordnet.yaml`. It trains on "
        "the example sentences (twice) together with every WordNet lemma (147,240) and 60,000 short glosses of "
        "the same database (`data/wordnet/lemmas.txt`, `glosses.txt`, extracted by "
        "`scripts/extract_wordnet_dictionary.py`; nothing equal to a held-out sentence): the lemmas show it how "
        "every word of the dictionary is spelt, which the held-out sentences need (36% of the test sentences "
        f"have a word that no training sentence has). The {fitted} is fitted to the example sentences "
        "only, and the LM is trained on them only.",
        "",
        f"Reproduce: `{r['command']}` ({r['machine']}). All figures below come from the run folder it names; "
        "where that folder was not made by this command alone, the notes at the end say how it was made.",
        "",
        "## Test split",
        "",
        "| model | NLL (IW, 500) | PPL (words) | ELBO | KL | MI | AU | exact match | BLEU | train time |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| VAE + {fitted} | {v['nll']:.2f} | {v.get('ppl_word', float('nan')):.4g} | {v['elbo']:.2f} | "
        f"{v['kl']:.2f} | {v['mi']:.2f} | {v['au']}/{len(v['au_variances'])} | {100 * v['exact_match']:.1f}% | "
        f"{v['bleu']:.1f} | {vt['train_seconds'] / 60:.1f} min |",
        *([f"| the same VAE, N(0, I) prior | {r['vae_eval_normal_prior']['nll']:.2f} | "
           f"{r['vae_eval_normal_prior'].get('ppl_word', float('nan')):.4g} | – | – | – | – | – | – | – |"]
          if r.get("vae_eval_normal_prior") else []),
        f"| LM, same decoder, no latent | {lm['nll']:.2f} | {lm.get('ppl_word', float('nan')):.4g} | – | – | – | – | "
        f"– | – | {lt['train_seconds'] / 60:.1f} min |",
        "",
        f"NLL in nats per sentence; for the VAE, log p(z) in the importance weights is the {fitted}'s density "
        "(the NLL of the two-stage model). Exact match: greedy decoding from the posterior mean"
        + (f" (refined by {v['settings']['refine_steps']} steps, textvae/inference.py)"
           if v["settings"].get("refine_steps") else "")
        + (", decoding held to the training corpus's words (model.known_words: a sentence with a word the corpus "
           "lacks cannot come back; `--any-words` lifts it, below)" if v["settings"].get("known_words") else "")
        + " equals the input, case and spacing aside. ELBO and KL are against N(0, I), the prior the VAE was trained with. "
        f"Training: {vt['steps']:,} steps ({vt['stop_reason']}); LM {lt['steps']:,} steps.",
        "",
        "## Fluency of prior samples",
        "",
        "1,000 samples each (seed 0), scored by the separately trained LM above: NLL per word (nats per whitespace "
        "word, end of sentence included; lower reads more like the corpus), distinct-1/2, mean length in "
        "words and the share of words that the training corpus has (sentences, lemmas, glosses; punctuation at "
        "either end aside; the others the "
        "decoder spelt from BPE pieces), the share of samples that are new (no line of the training corpus, case "
        "and spacing aside) and the LM's NLL per word of the new ones alone, against the test sentences'; and the "
        "LM's own samples, which show what "
        "a decoder of this size and training reads like with no latent at all. \"known words\" rows hold decoding to "
        "the training corpus's words (`--known-words`, textvae/lexicon.py); the others let BPE pieces spell anything."
        + (" The row marked `textvae sample` is what the command gives (the config's `model.known_words`, "
           "`model.sample_strategy` and `model.prior_temperature`); the ship rule judges that row."
           if fl.get("default_samples") else "")
        + (" Rows at a prior temperature T draw z with each component's spread scaled by T "
           "(`--prior-temperature T`, Kingma & Dhariwal 2018): nearer the codes of the training sentences."
           if any(_temperature(row) != 1 for row in fl.values()) else ""),
        "",
        "| sentences | LM NLL / word | distinct-1 | distinct-2 | mean length | known words | new | new: LM NLL / word |",
        "|---|---|---|---|---|---|---|---|",
        _row("test split (all)", fl["test_split"]),
        _row("test split (1,000 drawn)", fl["test_sample_1000"]),
        _row(f"{fitted}, sampled decoding", fl["mixture_sample"]),
        _row(f"{fitted}, greedy decoding", fl["mixture_greedy"]),
        *[_row(f"{fitted}{_at(row)}, known words, {DECODING[_decoding(key)]}"
               + (" (`textvae sample`)" if key == fl.get("default_samples") else ""), row)
          for key, row in sorted(fl.items(), key=lambda item: (list(DECODING).index(_decoding(item[0]) or "sample"),
                                                               -_temperature(item[1])))
          if _decoding(key)],
        _row("N(0, I) prior, sampled decoding", fl["normal_sample"]),
        _row("N(0, I) prior, greedy decoding", fl["normal_greedy"]),
        *([_row("the LM's own samples", fl["lm_sample"])] if "lm_sample" in fl else []),
        *([_row("the LM's own samples, known words", fl["lm_known_sample"])] if "lm_known_sample" in fl else []),
        "",
        "## Real output",
        "",
    ]
    tail = [NOTES.read_text()]
    for item in r["showcase"]:
        shown = item["command"] if r["card"]["ships"] else item["command"].replace(" wordnet ", f" {r['run']} ")
        lines += [f"`{shown}`", "", "```", *item["output"], "```", ""]
    return "\n".join(lines + tail)


NOTES = Path(__file__).with_name("builtin_notes.md")  # what was tried and what it gave, written by hand
