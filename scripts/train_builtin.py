"""Train, measure and package the built-in `wordnet` model.

    python scripts/train_builtin.py --data data/wordnet --out runs/builtin
    python scripts/train_builtin.py ... --out runs/probe --set model.logvar_min=-2 --lm-from runs/builtin/lm

A probe (``--set`` or ``--lm-from``) stops before ``export``: its figures
stay in OUT/report.json, and results/builtin.md and the packaged model are
left alone unless ``--stages`` names export.

Stages (each one skipped when its output exists, so a stopped run continues):
  corpus   OUT/corpus: the example sentences of data/wordnet (twice), every
           WordNet lemma and up to --glosses short glosses (data/wordnet/
           lemmas.txt, glosses.txt): the lemmas teach the model how every word
           of the dictionary is spelt, which the held-out sentences need
  train    the VAE (configs/builtin/wordnet.yaml) on OUT/corpus for --budget minutes
  prior    its second-stage mixture prior (`textvae fit-prior`), fitted to
           the example sentences only
  lm       a language model of the same size on the example sentences, for
           the NLL comparison and the fluency of samples (--lm-budget minutes;
           --lm-from RUN links one trained before instead)
  eval     `textvae eval` of both on the test split (500 importance samples)
  fluency  1,000 prior samples: NLL per word under the LM, distinct-1/2, the
           share of words the training corpus has (not spelt from pieces) and
           mean length, the share that is no training line, against the test
           split's; the fitted prior vs N(0, I), and the fitted prior at prior
           temperatures 0.7 and 0.5, sampled, greedy and beam
  showcase prior samples, completions and interpolations, as a user runs them
  export   textvae/pretrained/wordnet (bf16 weights, card.json) and
           results/builtin.md / .json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shlex
import shutil
import string
import subprocess
import sys
import time
from pathlib import Path

from textvae.run_folder import NORMAL_PRIOR, eval_file

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "configs/builtin/wordnet.yaml"
PRIOR_TEMPERATURES = (0.7, 0.5)  # fluency rows beside T = 1
STAGES = ("corpus", "train", "prior", "lm", "eval", "fluency", "showcase", "export")
SHOWCASE = [
    ["sample", "{run}", "-n", "10", "--seed", "0"],
    ["complete", "{run}", "the man", "-n", "5", "--seed", "0"],
    ["interpolate", "{run}", "he ran a mile", "she sang a beautiful song", "--steps", "6"],
    ["interpolate", "{run}", "the children played in the garden", "a cold wind blew across the lake",
     "--steps", "6"],
]


def textvae(*args: str, threads: int, log: Path | None = None) -> str:
    """Run the textvae CLI with this interpreter; return its stdout."""
    command = [sys.executable, "-m", "textvae", *map(str, args)]
    env = {"OMP_NUM_THREADS": str(threads)}
    print("$ textvae " + shlex.join(map(str, args)), file=sys.stderr, flush=True)
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **env})
    if log is not None:
        with open(log, "a") as handle:
            handle.write(f"$ textvae {shlex.join(map(str, args))}\n{result.stderr}\n")
    if result.returncode != 0:
        sys.stderr.write(result.stderr)
        raise SystemExit(f"textvae {args[0]} failed with exit code {result.returncode}")
    return result.stdout


def train(args, out: Path, name: str, extra: list[str], budget: float, data: str) -> None:
    from textvae.training.info import run_info

    run = out / name
    if (run / "config.json").exists() and run_info(run).status != "no checkpoint":
        if run_info(run).finished:
            return
        textvae("train", "--resume", run, threads=args.threads, log=out / "log.txt")
        return
    start = time.time()
    textvae("train", "--data", data, "--out", run, "--config", CONFIG, *extra, "--time-budget", budget,
            "--set", f"train.num_threads={args.threads}", "--set", f"train.precision={args.precision}",
            threads=args.threads, log=out / "log.txt")
    (run / "train_wall_seconds.txt").write_text(f"{time.time() - start:.1f}\n")


def link_lm(out: Path, source: Path) -> None:
    """OUT/lm as a link to a finished language model trained by another run."""
    from textvae.training.info import run_info

    if not (source / "config.json").exists() or not run_info(source).finished:
        raise SystemExit(f"--lm-from {source}: no finished training run there")
    link = out / "lm"
    if link.is_symlink() and link.resolve() == source:
        return
    if link.exists() or link.is_symlink():
        raise SystemExit(f"--lm-from: {link} exists already (remove it to link {source})")
    link.symlink_to(source, target_is_directory=True)


def build_corpus(args, out: Path) -> Path:
    """OUT/corpus/{train,valid,test}.txt: the examples twice, the lemmas, and up
    to ``--glosses`` glosses of at most 14 words (a fixed random choice)."""
    corpus, source = out / "corpus", Path(args.data)
    if (corpus / "train.txt").exists():
        return corpus
    corpus.mkdir(parents=True, exist_ok=True)
    examples = (source / "train.txt").read_text().splitlines()
    lemmas = (source / "lemmas.txt").read_text().splitlines()
    glosses = [g for g in (source / "glosses.txt").read_text().splitlines() if len(g.split()) <= 14]
    glosses = random.Random(0).sample(glosses, min(args.glosses, len(glosses)))
    lines = [line for line in examples * 2 + lemmas + glosses if line.strip()]
    random.Random(0).shuffle(lines)
    for name in ("valid.txt", "test.txt"):
        shutil.copyfile(source / name, corpus / name)
    (corpus / "train.txt").write_text("\n".join(lines) + "\n")
    return corpus


def nll_per_word(lm, texts: list[str], batch_size: int = 256) -> float:
    """Total NLL (nats) of ``texts`` under the language model over whitespace words + one eos each."""
    import torch

    total, words = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            chunk = [t if t.strip() else "." for t in texts[i:i + batch_size]]
            total += float(lm(lm.batch(chunk)).rec.double().sum())
            words += sum(len(t.split()) + 1 for t in chunk)
    return total / words


def fluency(args, out: Path) -> dict:
    import torch

    from textvae.evaluation.text_metrics import distinct_n
    from textvae.lexicon import WordConstraint
    from textvae.model import TextVAE
    from textvae.prior import StandardNormalPrior

    torch.set_num_threads(args.threads)
    vae, lm = TextVAE.from_pretrained(out / "vae"), TextVAE.from_pretrained(out / "lm")
    test = [t for t in (Path(args.data) / "test.txt").read_text().splitlines() if t.strip()]
    reference = random.Random(0).sample(test, min(1000, len(test)))
    # Every word the VAE was trained on (sentences, lemmas, glosses): a sample's
    # word outside it is one the decoder spelt from BPE pieces, mostly not English.
    # Known: a word whose letters (punctuation at either end aside: "vigilant,") the corpus has.
    corpus_lines = (out / "corpus" / "train.txt").read_text().lower().splitlines()
    corpus = " ".join(corpus_lines).split()
    vocabulary = {w.strip(string.punctuation) for w in corpus} - {""}
    seen = {" ".join(line.split()) for line in corpus_lines}  # every training line, case and spacing aside

    def figures(texts: list[str]) -> dict:
        words = [w for t in texts for w in t.lower().split()]
        cores = [c for c in (w.strip(string.punctuation) for w in words) if c]
        new = [t for t in texts if " ".join(t.lower().split()) not in seen]
        return {"nll_per_word": nll_per_word(lm, texts), "distinct_1": distinct_n(texts, 1),
                "distinct_2": distinct_n(texts, 2), "mean_length": len(words) / len(texts),
                "known_words": sum(c in vocabulary for c in cores) / max(1, len(cores)),
                # A sample that is no line of the training corpus: how many the model makes up,
                # and how those read under the LM (a prior near the codes can give the corpus back).
                "new": len(new) / len(texts), "new_nll_per_word": nll_per_word(lm, new) if new else None,
                "new_examples": new[:5]}

    result = {"prior_kind": vae.config.model.prior, "test_split": {**figures(test), "sentences": len(test)},
              "test_sample_1000": figures(reference)}
    # What the decoders write alone (words=False), and held to the corpus's words (textvae/lexicon.py).
    lm_words = WordConstraint(lm.tokenizer, set(corpus))
    for name, words in (("lm_sample", False), ("lm_known_sample", lm_words)):
        samples = lm.sample(1000, seed=0, strategy="sample", words=words)
        result[name] = {**figures(samples), "examples": samples[:5]}
    mixture = vae.prior
    for prior_name, prior in (("mixture", mixture), ("normal", StandardNormalPrior(vae.latent_dim))):
        vae.prior = prior
        for strategy in ("sample", "greedy"):
            samples = vae.sample(1000, seed=0, strategy=strategy, words=False)
            result[f"{prior_name}_{strategy}"] = {**figures(samples), "examples": samples[:5]}
    vae.prior = mixture
    # Held to the corpus's words, at T = 1 and nearer the mixture's modes (`--prior-temperature`).
    chosen = vae.config.model  # how `textvae sample` decodes this model (sample_strategy, prior_temperature)
    temperatures = sorted({1.0, *PRIOR_TEMPERATURES, chosen.prior_temperature}, reverse=True)
    for strategy in ("sample", "greedy", "beam"):
        for temperature in temperatures:
            samples = vae.sample(1000, seed=0, strategy=strategy, words=True, prior_temperature=temperature)
            result[sample_key(strategy, temperature, True)] = {**figures(samples), "examples": samples[:5],
                                                               "prior_temperature": temperature}
    # The samples `textvae sample` gives (the run's model.known_words, sample_strategy and
    # prior_temperature): what the ship rule judges.
    result["default_samples"] = sample_key(chosen.sample_strategy, chosen.prior_temperature, chosen.known_words)
    return result


def sample_key(strategy: str, temperature: float, known_words: bool) -> str:
    """The fluency row of mixture samples decoded this way."""
    return f"mixture{'_known' if known_words else ''}_{strategy}" + (f"_t{temperature:g}" if temperature != 1 else "")


def export(args, out: Path, report: dict) -> None:
    import torch
    from safetensors.torch import save_model

    from textvae.model import TextVAE

    target = ROOT / "textvae" / "pretrained" / "wordnet"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    model = TextVAE.from_pretrained(out / "vae")
    model.to(torch.bfloat16)
    model.prior.float()  # the mixture's Cholesky factors keep full precision
    # The corpus folder of the training run is a path on the machine that trained it, not the user's.
    model.config.data = dataclasses.replace(model.config.data, path="")
    model.config.save(target / "config.json")
    model.tokenizer.save(target / "tokenizer")
    save_model(model, str(target / "model.safetensors"))
    (target / "model.safetensors").chmod(0o644)  # readable by every user of an installed package
    (target / "card.json").write_text(json.dumps(report["card"], indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/wordnet")
    parser.add_argument("--out", default="runs/builtin")
    parser.add_argument("--budget", type=float, default=50.0, help="VAE training minutes")
    parser.add_argument("--lm-budget", type=float, default=15.0, help="language-model training minutes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                        help="training precision: bf16 pays on a CPU with AMX (or a GPU), fp32 elsewhere")
    parser.add_argument("--glosses", type=int, default=60000, help="glosses in the training corpus")
    parser.add_argument("--iw-samples", type=int, default=500)
    parser.add_argument("--stages", default=None,
                        help="comma-separated (default: all; a probe's default stops before export)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override the VAE's config (repeatable; a probe of the recipe)")
    parser.add_argument("--lm-from", metavar="RUN",
                        help="use this trained language model (another OUT/lm) instead of training one")
    args = parser.parse_args()
    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    probe = bool(args.set or args.lm_from)
    stages = (args.stages or ",".join(STAGES[:-1] if probe else STAGES)).split(",")
    report_path = out / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}

    def save() -> None:
        report_path.write_text(json.dumps(report, indent=2) + "\n")

    if "corpus" in stages:
        build_corpus(args, out)
    if "train" in stages:
        train(args, out, "vae", [flag for item in args.set for flag in ("--set", item)], args.budget,
              str(out / "corpus"))
    if "prior" in stages and not (out / "vae" / "prior_fitted.txt").exists():
        textvae("fit-prior", out / "vae", "--data", args.data, threads=args.threads, log=out / "log.txt")
        (out / "vae" / "prior_fitted.txt").write_text(f"textvae fit-prior {out / 'vae'} --data {args.data}\n")
    if "lm" in stages and args.lm_from:
        link_lm(out, (ROOT / args.lm_from).resolve())
    elif "lm" in stages:
        # dropout 0.3: with no latent to read, the VAE's dropout-free recipe would overfit
        train(args, out, "lm", ["--set", "model.latent_dim=0", "--set", "model.prior=normal",
                                "--set", "model.dropout=0.3"], args.lm_budget, args.data)
    if "eval" in stages:
        # The VAE under its fitted prior (the two-stage model) and under N(0, I), the prior it trained with.
        for name, prior in (("vae", "run"), ("vae", "normal"), ("lm", "run")):
            if not (out / name / eval_file("test", NORMAL_PRIOR if prior == "normal" else "")).exists():
                textvae("eval", out / name, "--data", args.data, "--split", "test", "--iw-samples", args.iw_samples,
                        "--batch-size", 64, "--samples", 1000, "--prior", prior, threads=args.threads,
                        log=out / "log.txt")
    if "fluency" in stages:
        report["fluency"] = fluency(args, out)
        save()
    if "showcase" in stages:
        report["showcase"] = []
        for command in SHOWCASE:
            command = [c.format(run="wordnet") if c == "{run}" else c for c in command]
            real = [out / "vae" if c == "wordnet" else c for c in command]
            report["showcase"].append({"command": "textvae " + shlex.join(command),
                                       "output": textvae("-q", *real, threads=args.threads).splitlines()})
        save()
    if "export" in stages:
        from build_builtin_report import build_report  # scripts/ beside this file

        report["card"] = build_report(out, report, args)
        save()
        if report["card"]["ships"]:
            export(args, out, report)
        else:
            print("textvae: the model did not reach the bar (results/builtin.md): not exported", file=sys.stderr)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
