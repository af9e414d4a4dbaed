"""Time to quality: validation NLL against wall-clock minutes, textvae's PTB
language model against the plain baseline of ``scripts/benchmark.py``.

Both train the same model (embedding 256, LSTM 256, tied embeddings, dropout
0.5, batch 32) with the same recipe (``configs/ptb/full.yaml``: Adam at 2e-3,
cosine decay to zero over the budget) at the same time, one thread each, side
by side on the same machine; each validates every ``--eval-every`` steps, and
validation counts against its budget. textvae trains as ``textvae train``
does (bucketed batches, masked output projection, fused Adam, bf16 where the
CPU has it natively); the baseline the usual way (fp32, eager, random padded
batches, full (B, T, V) logits).

    python scripts/time_to_quality.py --data ../shared/data/ptb --minutes 30

writes results/time_to_quality.png and .json (the points of both curves).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = ("textvae train --data {data} --out {out} --config ptb-lstm --config configs/ptb/full.yaml "
        "--config configs/ptb/lm.yaml --time-budget {minutes} --set train.num_threads=1 "
        "--set train.eval_every={eval_every}")


def plain_worker(args) -> None:
    """Train the plain baseline as a language model; one JSON line per validation on stdout,
    minutes counted from launch (start-up included, as for textvae)."""
    launch = time.time()
    import torch
    import torch.nn.functional as F

    from bench_training import PlainLSTMVAE  # scripts/ is on sys.path when this file runs
    from textvae.config import build_config
    from textvae.data import collate, load_splits, read_texts
    from textvae.tokenization import build_tokenizer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = build_config(["ptb-lstm", str(ROOT / "configs/ptb/full.yaml"), str(ROOT / "configs/ptb/lm.yaml")], [])
    texts = read_texts(args.data, ["train", "valid"], "text")
    tokenizer = build_tokenizer(config.tokenizer, texts["train"])
    splits = load_splits(args.data, tokenizer, ["train", "valid"], config.data.max_length, texts=texts)
    ids = {name: split.ids for name, split in splits.items()}
    model = PlainLSTMVAE(tokenizer.vocab_size, tokenizer.pad_id, latent=0)
    model.out.weight = model.dec_embed.weight  # tied, as configs/ptb/full.yaml
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    budget, start, step = args.minutes * 60.0, time.time(), 0

    def validate() -> float:
        model.eval()
        total = 0.0
        with torch.no_grad():
            for i in range(0, len(ids["valid"]), 64):
                index = list(range(i, min(i + 64, len(ids["valid"]))))
                batch = collate([ids["valid"][j] for j in index], index, tokenizer)
                total += float(model(batch.tokens, batch.lengths)) * len(index)
        model.train()
        return total / len(ids["valid"])

    generator = torch.Generator().manual_seed(0)
    done = False
    while not done:
        order = torch.randperm(len(ids["train"]), generator=generator).tolist()
        for first in range(0, len(order) - 31, 32):
            fraction = min(1.0, (time.time() - start) / budget)
            for group in optimizer.param_groups:
                group["lr"] = config.train.lr * 0.5 * (1.0 + math.cos(math.pi * fraction))
            index = order[first:first + 32]
            batch = collate([ids["train"][j] for j in index], index, tokenizer)
            loss = model(batch.tokens, batch.lengths)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
            optimizer.step()
            step += 1
            over = time.time() - start >= budget
            if step % args.eval_every == 0 or over:
                nll = validate()
                print(json.dumps({"step": step, "minutes": (time.time() - launch) / 60, "nll": nll}), flush=True)
            if over:
                done = True
                break


def our_points(run: Path, start: float) -> list[dict]:
    from textvae.run_folder import read_metrics

    return [{"step": r["step"], "minutes": (r["time"] - start) / 60, "nll": r["rec"]}
            for r in read_metrics(run) if r.get("split") == "valid"]


def plot(curves: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for label, points in curves.items():
        axes.plot([p["minutes"] for p in points], [p["nll"] for p in points], marker="o", markersize=3, label=label)
    axes.set_xlabel("wall-clock minutes (one thread each, side by side)")
    axes.set_ylabel("validation NLL (nats per sentence)")
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("TEXTVAE_DATA", "../shared/data") + "/ptb")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--runs", default="runs/time-to-quality")
    parser.add_argument("--out", default="results/time_to_quality")
    parser.add_argument("--cpu", default="", help="the CPU, for the figure's title (default: from lscpu)")
    parser.add_argument("--plain-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_worker:
        return plain_worker(args)
    runs = (ROOT / args.runs).resolve()
    runs.mkdir(parents=True, exist_ok=True)
    ours_run = runs / "textvae-lm"
    if ours_run.exists():
        raise SystemExit(f"{ours_run} exists: remove it or pass another --runs")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'scripts'}"}
    ours_command = OURS.format(data=args.data, out=ours_run, minutes=args.minutes, eval_every=args.eval_every)
    plain_command = [sys.executable, __file__, "--plain-worker", "--data", args.data, "--minutes", str(args.minutes),
                     "--eval-every", str(args.eval_every)]
    start = time.time()
    ours = subprocess.Popen([sys.executable, "-m", "textvae", *shlex.split(ours_command)[1:]], cwd=ROOT, env=env,
                            stderr=open(runs / "textvae-lm.log", "w"))
    plain = subprocess.run(plain_command, cwd=ROOT, env=env, capture_output=True, text=True)
    if ours.wait() != 0 or plain.returncode != 0:
        sys.stderr.write(plain.stderr)
        raise SystemExit("a run failed; see " + str(runs / "textvae-lm.log"))
    plain_points = [json.loads(line) for line in plain.stdout.splitlines() if line.startswith("{")]
    curves = {"textvae": our_points(ours_run, start), "plain baseline (fp32, padded)": plain_points}
    cpu = args.cpu or next((line.split(":", 1)[1].strip() for line in
                            subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
                            if line.startswith("Model name")), "unknown CPU")
    out = ROOT / args.out
    plot(curves, out.with_suffix(".png"), f"PTB language model, same recipe, {args.minutes:g} min each ({cpu})")
    record = {"cpu": cpu, "minutes": args.minutes, "curves": curves,
              "commands": {"script": "python scripts/time_to_quality.py " + shlex.join(sys.argv[1:]),
                           "textvae": ours_command, "baseline": "scripts/time_to_quality.py --plain-worker"}}
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out.with_suffix('.png')} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
