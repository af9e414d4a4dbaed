"""Does bf16 autocast keep quality? Two short Penn Treebank runs from the same
seed, one in bf16 and one in fp32, then the validation NLL of each.

Prints one JSON object: each run's validation -ELBO (the NLL bound; exact NLL
for the language model), its training time, and the difference.

    python scripts/bf16_quality.py --data ../shared/data/ptb [--steps 400] [--config ptb-lstm]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(data: str, out: Path, precision: str, args: argparse.Namespace) -> dict:
    command = ["textvae", "-q", "train", "--data", data, "--out", str(out), "--config", args.config,
               *sum((["--config", c] for c in args.extra_config), []),
               "--set", f"train.precision={precision}", "--set", f"train.max_steps={args.steps}",
               "--set", f"train.eval_every={args.steps}", "--set", f"train.seed={args.seed}"]
    start = time.time()
    subprocess.run([sys.executable, "-m", *command], check=True)  # this interpreter's textvae, venv active or not
    seconds = time.time() - start
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in records if r["split"] == "valid"][-1]
    return {"precision": precision, "valid_nll_bound": -valid["elbo"], "valid_rec": valid["rec"],
            "valid_kl": valid["kl"], "train_seconds": round(seconds, 1), "command": " ".join(command)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("TEXTVAE_DATA", "../shared/data") + "/ptb")
    parser.add_argument("--config", default="ptb-lstm")
    parser.add_argument("--extra-config", action="append", default=[], help="layered after --config")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not Path(args.data).exists():
        sys.exit(f"bf16_quality: error: no data at {args.data}")
    with tempfile.TemporaryDirectory() as tmp:
        results = [run(args.data, Path(tmp) / p, p, args) for p in ("bf16", "fp32")]
    difference = results[0]["valid_nll_bound"] - results[1]["valid_nll_bound"]
    print(json.dumps({"steps": args.steps, "runs": results, "difference_nats": round(difference, 3),
                      "within_0.3": abs(difference) <= 0.3}, indent=2))


if __name__ == "__main__":
    main()
