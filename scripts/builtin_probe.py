r"""A short probe of a change to the built-in model's recipe.

    python scripts/builtin_probe.py --corpus runs/builtin3/corpus --out runs/probe8/mmd10 \
        --set objective.mmd_weight=10 [--lm runs/builtin3/lm]

Trains configs/builtin/wordnet.yaml (with the --set changes) on the corpus of
scripts/train_builtin.py under the recipe's 60-minute schedule (one thread
unless --threads), stops it (as Ctrl-C does) right after the validation at
--steps, and prints
the validation reconstruction there, the exact match of greedy
reconstructions of the first 1,000 validation sentences and, with --lm, the
NLL per word under that LM of 500 greedy N(0, I) samples (scripts/
builtin_notes.md compares probes this way).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from train_builtin import CONFIG, ROOT, nll_per_word  # scripts/ beside this file


def train_until(args) -> float:
    """Train until the validation at ``args.steps`` (unless the run has it
    already); its reconstruction (nats)."""
    metrics = ROOT / args.out / "metrics.jsonl"

    def reached() -> list[dict]:
        records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
        return [r for r in records if r["split"] == "valid" and r["step"] >= args.steps]

    if reached():
        return reached()[0]["rec"]
    command = [sys.executable, "-m", "textvae", "train", "--data", args.corpus, "--out", args.out,
               "--config", CONFIG, "--time-budget", "60", "--set", f"train.num_threads={args.threads}"]
    for change in args.set:
        command += ["--set", change]
    print("$ textvae " + " ".join(command[3:]), file=sys.stderr, flush=True)
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    try:
        while process.poll() is None:
            time.sleep(5)
            if reached():
                process.send_signal(signal.SIGINT)  # stops with a checkpoint; the best weights stay
                process.wait()
                return reached()[0]["rec"]
    finally:
        if process.poll() is None:
            process.kill()
    raise SystemExit(f"training ended (exit {process.returncode}) before step {args.steps}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True, help="OUT/corpus of scripts/train_builtin.py")
    parser.add_argument("--out", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lm", help="a language model run of the example sentences (train_builtin.py's OUT/lm)")
    parser.add_argument("--valid", default="data/wordnet/valid.txt")
    args = parser.parse_args()
    rec = train_until(args)

    import torch

    from textvae.evaluation.text_eval import exact_match
    from textvae.model import TextVAE
    from textvae.prior import StandardNormalPrior

    torch.set_num_threads(args.threads)
    vae = TextVAE.from_pretrained(ROOT / args.out)
    lines = (ROOT / args.valid).read_text().splitlines()[:1000]
    exact = exact_match(vae.reconstruct(lines), lines)
    print(f"{args.out}: validation rec {rec:.2f} at step {args.steps}; exact match {100 * exact:.1f}% "
          f"of {len(lines):,}")
    if args.lm:
        lm = TextVAE.from_pretrained(ROOT / args.lm)
        vae.prior = StandardNormalPrior(vae.latent_dim)
        samples = vae.sample(500, seed=0, strategy="greedy")
        words = sum(len(s.split()) for s in samples) / len(samples)
        print(f"N(0, I) greedy samples: {nll_per_word(lm, samples):.2f} nats per word under the LM, "
              f"{words:.1f} words; e.g. {' / '.join(samples[:4])}")


if __name__ == "__main__":
    main()
