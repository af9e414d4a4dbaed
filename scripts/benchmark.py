"""Speed benchmark: textvae against the same model written plainly.

Prints one JSON object per case on stdout. For the PTB-protocol LSTM VAE
(embedding 256, LSTM 256/256, latent 32, batch 32) and the small Transformer
preset it measures training tokens/s, IW-NLL evaluation sentences/s and
its time over the output projection's roofline, generation sentences/s
(sampled at batch 64; greedy as `textvae sample` runs it, with and without
the bf16 screen of nn/output.py) and peak memory; in the same process it runs a
**plain baseline** — fp32, eager, random (unbucketed) padded batches, full
(B, T, V) logits — and prints the ratio, since only a ratio measured side by
side means anything on a shared machine.

    python scripts/benchmark.py --data ../shared/data/ptb [--steps 60] [--cases lstm,transformer,contention]

The ``contention`` case trains the PTB LSTM in child processes, idle and
beside a busy single-threaded process (scripts/bench_contention.py).
Training is timed by scripts/bench_training.py, the IW-NLL and its roofline
by scripts/iw_timing.py.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

from textvae.data import TextBatches
from textvae.generation import GenerationConfig, generate
from textvae.model import TextVAE
from textvae.nn import native_kernels
from textvae.nn.fused_scoring import unavailable as fused_scoring_unavailable
from textvae.nn.output import ScreenedArgmax
from textvae.operations import sample_stream
from textvae.runtime import autocast_context

from bench_contention import bench_contention  # scripts/ beside this file
from bench_training import load_ptb, plain_training, textvae_training, time_interleaved
from iw_timing import IW_MODES, native_peak, projection_peak, time_iw


def peak_memory_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_greedy(model: TextVAE, tokenizer, n: int = 1024) -> dict:
    """Greedy decoding as `textvae sample -n N --strategy greedy --max-length 30`
    runs it (prior z, chunks of SAMPLE_CHUNK), with greedy's bf16 screen
    (nn/output.py; where bf16 is native) and with the plain fp32 argmax, in
    alternating rounds, the best of two each; the sentences that differ (only
    at exact fp32 ties) are counted."""
    best, lines = {}, {}
    for name in ("fp32_argmax", "screened", "fp32_argmax", "screened"):
        ScreenedArgmax.enabled = name == "screened"
        start = time.perf_counter()
        lines[name] = [line for chunk in sample_stream(model, n, seed=0, strategy="greedy", max_length=30)
                       for line in chunk]
        best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
    ScreenedArgmax.enabled = True
    return {**{f"greedy_sentences_per_s_{name}": round(n / took, 1) for name, took in best.items()},
            "greedy_sentences_differing": sum(a != b for a, b in zip(lines["fp32_argmax"], lines["screened"])),
            "greedy_mean_tokens": round(sum(len(tokenizer.encode(line)) for line in lines["screened"]) / n, 1)}


def bench_case(name: str, overrides: list[str], splits, tokenizer, args) -> None:
    steps = args.steps + args.warmup
    config, model, train, ours, step = textvae_training(args.config_for[name], overrides, splits, tokenizer, steps)
    device = torch.device("cpu")
    runners, batches = {"textvae": step}, {"textvae": ours}
    if name == "lstm":  # the plain baseline exists for the PTB-protocol LSTM
        runners["baseline"], batches["baseline"] = plain_training(train.split, tokenizer, steps)
    speed = time_interleaved(runners, batches, args.warmup, args.rounds)
    result = {"case": name, "train_tokens_per_s": round(speed["textvae"])}
    if "baseline" in speed:
        result.update(baseline_train_tokens_per_s=round(speed["baseline"]),
                      train_speedup=round(speed["textvae"] / speed["baseline"], 2))

    # IW-NLL evaluation, sentences/s (bf16 vs fp32 of the same code), and its
    # time over the roofline of its one unavoidable product: the output
    # projection of every target token under every sample, at the peak that
    # this machine's matrix product reaches for that shape in that precision.
    model.eval()
    test = TextBatches(splits["test"], tokenizer, 32, shuffle=False)
    batches = list(test.iterate())[: args.eval_batches]
    targets = sum(int(batch.lengths.sum()) - len(batch) for batch in batches)  # bos not predicted
    for precision in ("bf16", "fp32"):
        ctx = autocast_context(device, precision)
        native = precision == "bf16" and native_kernels.cpu_supported() and native_kernels.library() is not None
        modes = [mode for mode in IW_MODES if native or mode != "native"]
        # The peak is measured before and after the IW timing and the higher kept: this
        # machine's speed drifts, and a peak taken in a slow second flatters the ratio.
        # Where the native kernel runs, its own speed (log-sum-exp included) is a
        # candidate too: the bound is the fastest product measured here.
        peaks = [projection_peak(model.decoder.output, ctx), native_peak(model.decoder.output) if native else 0.0]
        seconds = time_iw(model, batches, ctx, args.iw_samples, modes)
        peaks += [projection_peak(model.decoder.output, ctx), native_peak(model.decoder.output) if native else 0.0]
        peak = max(peaks)
        bound = 2 * model.decoder.output.weight.numel() * targets * args.iw_samples / peak
        result[f"projection_peak_gflops_{precision}"] = round(peak / 1e9, 1)
        result[f"projection_peak_spread_{precision}"] = round(min(peaks[0], peaks[2]) / max(peaks[0], peaks[2]), 2)
        if native:
            result[f"projection_peak_gflops_{precision}_onednn"] = round(max(peaks[0], peaks[2]) / 1e9, 1)
            result[f"projection_peak_gflops_{precision}_native"] = round(max(peaks[1], peaks[3]) / 1e9, 1)
        result[f"iw_first_pass_s_{precision}"] = round(seconds.pop("first_pass"), 1)
        result[f"iw_kernels_{precision}"] = modes[0]  # what `textvae eval` runs here, the plain keys below
        count = sum(len(batch) for batch in batches)
        for mode, took in seconds.items():
            suffix = precision if mode == modes[0] else f"{precision}_{mode}"
            result[f"iw_nll_sentences_per_s_{suffix}"] = round(count / took, 2)
            result[f"iw_nll_over_roofline_{suffix}"] = round(took / bound, 2)
    result["iw_kernel_compiled"] = not fused_scoring_unavailable()  # False: "compiled" ran eager
    result["iw_speedup"] = round(result["iw_nll_sentences_per_s_bf16"] / result["iw_nll_sentences_per_s_fp32"], 2)
    # Generation (prior samples, sampling, batch 64).
    for precision in ("bf16", "fp32"):
        ctx = autocast_context(device, precision)
        start = time.perf_counter()
        with torch.no_grad(), ctx():
            for _ in range(3):
                z = torch.randn(64, config.model.latent_dim)
                generate(model.decoder, z, 64, tokenizer.bos_id, tokenizer.eos_id,
                         GenerationConfig(strategy="sample", max_length=40))
        result[f"generation_sentences_per_s_{precision}"] = round(3 * 64 / (time.perf_counter() - start), 1)
    result.update(time_greedy(model, tokenizer))
    result["peak_memory_mb"] = round(peak_memory_mb())
    result["threads"] = torch.get_num_threads()
    print(json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("TEXTVAE_DATA", "../shared/data") + "/ptb")
    parser.add_argument("--steps", type=int, default=60, help="timed training steps per case")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    parser.add_argument("--eval-batches", type=int, default=3)
    parser.add_argument("--iw-samples", type=int, default=100)
    parser.add_argument("--cases", default="lstm,transformer")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not Path(args.data).exists():
        sys.exit(f"benchmark: error: no data at {args.data} (pass --data or set TEXTVAE_DATA)")
    args.config_for = {"lstm": "ptb-lstm", "transformer": "transformer-small"}
    cases = args.cases.split(",")
    if cases != ["contention"]:
        tokenizer, splits = load_ptb(args.data)
    for name in cases:
        if name == "contention":
            bench_contention(args)
        else:
            bench_case(name, [], splits, tokenizer, args)


if __name__ == "__main__":
    main()
