"""IW-NLL with both compiled kernels, the scoring kernel alone, and eager,
timed interleaved in one process (run it on an idle machine):

    python scripts/iw_kernels_ab.py --data ../shared/data/ptb --threads 2

An untrained ``ptb-lstm`` model (the cost does not depend on the weights),
the first three test batches of 32, 100 importance samples in chunks of 50;
three rounds, each mode's best. Prints JSON: seconds per mode and precision,
the estimates (equal across modes up to rounding), and the ratios.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from textvae.config import build_config
from textvae.data import TextBatches, load_splits
from textvae.evaluation.likelihood import importance_weighted_log_likelihood
from textvae.model import TextVAE
from textvae.nn import fused_scoring, lstm
from textvae.runtime import autocast_context
from textvae.tokenization import build_tokenizer

MODES = {"both": (True, False), "scoring_only": (True, True), "eager": (False, False)}  # (scoring on, cell off)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="Penn Treebank folder (ptb.train.txt, ptb.test.txt)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = build_config("ptb-lstm")
    tokenizer = build_tokenizer(config.tokenizer, (Path(args.data) / "ptb.train.txt").read_text().splitlines())
    splits = load_splits(args.data, tokenizer, ["test"], config.data.max_length)
    torch.manual_seed(0)
    model = TextVAE(config, tokenizer).eval()
    batches = list(TextBatches(splits["test"], tokenizer, 32, shuffle=False).iterate())[:3]
    result = {"threads": args.threads}
    for precision in ("bf16", "fp32"):
        ctx = autocast_context(torch.device("cpu"), precision)
        times = {mode: [] for mode in MODES}
        for _ in range(3):
            for mode, (scoring, cell_off) in MODES.items():
                lstm.CELL.broken = cell_off
                with torch.no_grad(), ctx(), fused_scoring.fused_scoring(scoring):
                    importance_weighted_log_likelihood(model, batches[0], 50, 50)  # compiles, warms up
                    start = time.perf_counter()
                    estimates = [importance_weighted_log_likelihood(model, b, 100, 50,
                                                                    generator=torch.Generator().manual_seed(0))
                                 for b in batches]
                    times[mode].append(time.perf_counter() - start)
                result.setdefault(f"estimate_{precision}_{mode}", float(torch.cat(estimates).mean()))
        lstm.CELL.broken = False
        for mode in MODES:
            result[f"{precision}_{mode}_s"] = round(min(times[mode]), 3)
        result[f"{precision}_cell_gain"] = round(min(times["scoring_only"]) / min(times["both"]), 3)
        result[f"{precision}_vs_eager"] = round(min(times["eager"]) / min(times["both"]), 3)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
