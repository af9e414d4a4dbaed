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
beside a busy single-threaded process, in alternating rounds, with torch's
default (fixed) thread count and with textvae's default (``train.num_threads=0``:
``textvae.threads.ThreadGovernor`` re-chooses the count from the other
processes' load), and prints each one's busy/idle throughput ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from textvae.config import build_config
from textvae.data import TextBatches, collate, load_splits
from textvae.generation import GenerationConfig, generate
from textvae.model import TextVAE
from textvae.nn import native_kernels
from textvae.nn.fused_scoring import unavailable as fused_scoring_unavailable
from textvae.nn.output import ScreenedArgmax
from textvae.operations import sample_stream
from textvae.objectives import elbo_loss
from textvae.runtime import autocast_context
from textvae.threads import ThreadGovernor
from textvae.tokenization import build_tokenizer
from textvae.training.optim import build_optimizer

from iw_timing import IW_MODES, native_peak, projection_peak, time_iw  # scripts/ beside this file


class PlainLSTMVAE(nn.Module):
    """The usual way of writing the PTB LSTM VAE: fp32, full logits, padding
    included; the same layers and dropout as the ``ptb-lstm`` preset. With
    ``latent=0``, the same decoder as a plain language model."""

    def __init__(self, vocab: int, pad: int, embed: int = 256, hidden: int = 256, latent: int = 32,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.pad, self.latent = pad, latent
        self.dropout = nn.Dropout(dropout)
        if latent:
            self.enc_embed = nn.Embedding(vocab, embed, padding_idx=pad)
            self.encoder = nn.LSTM(embed, hidden, batch_first=True)
            self.to_latent = nn.Linear(hidden, 2 * latent)
            self.init = nn.Linear(latent, hidden)
        self.dec_embed = nn.Embedding(vocab, embed, padding_idx=pad)
        self.decoder = nn.LSTM(embed + latent, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Mean negative ELBO (the NLL for ``latent=0``) per sentence."""
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        emb, state, kl = self.dropout(self.dec_embed(inputs)), None, 0.0
        if self.latent:
            packed = nn.utils.rnn.pack_padded_sequence(self.dropout(self.enc_embed(tokens)), lengths,
                                                       batch_first=True, enforce_sorted=False)
            _, (h, _) = self.encoder(packed)
            mean, logvar = self.to_latent(h[-1]).chunk(2, -1)
            z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
            emb = torch.cat([emb, z.unsqueeze(1).expand(-1, inputs.shape[1], -1)], -1)
            c0 = self.init(z).unsqueeze(0)
            state = (torch.tanh(c0), c0)
            kl = 0.5 * (mean.pow(2) + logvar.exp() - logvar - 1).sum(-1).mean()
        out, _ = self.decoder(emb, state)
        logits = self.out(self.dropout(out))  # (B, T, V): every position, padding included
        rec = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=self.pad, reduction="sum") / len(tokens)
        return rec + kl


def peak_memory_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_interleaved(runners: dict, batches: dict, warmup: int, rounds: int) -> dict:
    """Tokens/s of each runner, timed in alternating rounds so that both see
    the same machine load (what a side-by-side ratio needs on a shared machine)."""
    for name, step in runners.items():
        for batch, _ in batches[name][:warmup]:
            step(batch)
    spent = {name: 0.0 for name in runners}
    tokens = {name: 0 for name in runners}
    per_round = (len(next(iter(batches.values()))) - warmup) // rounds
    for r in range(rounds):
        for name, step in runners.items():
            chunk = batches[name][warmup + r * per_round: warmup + (r + 1) * per_round]
            start = time.perf_counter()
            for batch, count in chunk:
                step(batch)
                tokens[name] += count
            spent[name] += time.perf_counter() - start
    return {name: tokens[name] / spent[name] for name in runners}


def textvae_training(preset: str, overrides: list[str], splits, tokenizer, steps: int):
    """The model, its first ``steps`` bucketed batches as (batch, tokens) and
    its training step: bf16 autocast where native, masked output projection,
    the trainer's optimiser construction (fused kernels); Adam at 1e-3,
    whatever the preset says, so that it does the baseline's update."""
    config = build_config(preset, overrides)
    torch.manual_seed(0)
    model = TextVAE(config, tokenizer)
    train = TextBatches(splits["train"], tokenizer, config.train.batch_size, seed=0)
    order = train.sampler.batches(0)[:steps]
    batches = [(collate([train.split.ids[i] for i in b], b, tokenizer), sum(len(train.split.ids[i]) + 1 for i in b))
               for b in order]
    optimizer = build_optimizer(model, dataclasses.replace(config.train, optimizer="adam", lr=1e-3))
    autocast = autocast_context(torch.device("cpu"), "bf16")

    def step(batch):
        with autocast():
            loss = elbo_loss(model(batch), 1.0, config.objective)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    model.train()
    return config, model, train, batches, step


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
        torch.manual_seed(0)
        plain = PlainLSTMVAE(tokenizer.vocab_size, tokenizer.pad_id)
        plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-3)
        generator = torch.Generator().manual_seed(0)
        random_order = torch.randperm(len(train.split), generator=generator).tolist()
        plain_batches = []
        for s in range(steps):
            index = random_order[s * 32: (s + 1) * 32]
            batch = collate([train.split.ids[i] for i in index], index, tokenizer)
            plain_batches.append((batch, sum(len(train.split.ids[i]) + 1 for i in index)))

        def plain_step(batch):
            loss = plain(batch.tokens, batch.lengths)
            plain_opt.zero_grad()
            loss.backward()
            plain_opt.step()

        runners["baseline"], batches["baseline"] = plain_step, plain_batches
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


def contention_worker(args, splits, tokenizer) -> None:
    """(Child process) PTB LSTM training tokens/s with torch's default thread
    count, or (``--governed``) with the trainer's thread governor ticking
    after every step as in ``Trainer``."""
    *_, batches, step = textvae_training("ptb-lstm", [], splits, tokenizer, args.steps + args.warmup)
    governor = ThreadGovernor() if args.governed else None
    timed = step
    if governor:
        def timed(batch):
            step(batch)
            governor.tick()
    speed = time_interleaved({"w": timed}, {"w": batches}, args.warmup, 1)["w"]
    print(json.dumps({"train_tokens_per_s": speed, "threads": torch.get_num_threads(),
                      "others": governor.others if governor else None}), flush=True)


def bench_contention(args) -> None:
    """Training idle and beside a busy single-threaded process, with a fixed
    thread count and governed, in alternating rounds (children in libgomp's
    default environment)."""
    settings = {"fixed": [], "governed": ["--governed"]}
    speeds = {(name, beside): [] for name in settings for beside in ("idle", "busy")}
    threads = {}
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    for _ in range(args.rounds):
        for name, extra in settings.items():
            for beside in ("idle", "busy"):
                neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if beside == "busy" else None
                try:
                    out = subprocess.run([sys.executable, __file__, "--worker", "--data", args.data, "--steps",
                                          str(args.steps), "--warmup", str(args.warmup), *extra],
                                         env=env, capture_output=True, text=True, check=True).stdout
                finally:
                    if neighbour:
                        neighbour.kill()
                        neighbour.wait()
                record = json.loads(out.strip().splitlines()[-1])
                speeds[name, beside].append(record["train_tokens_per_s"])
                threads[name, beside] = record["threads"]
    result = {"case": "contention", "rounds": args.rounds, "cpus": os.cpu_count()}
    for name in settings:
        idle, busy = (sum(speeds[name, b]) / len(speeds[name, b]) for b in ("idle", "busy"))
        result[name] = {"idle_tokens_per_s": round(idle), "busy_tokens_per_s": round(busy),
                        "busy_over_idle": round(busy / idle, 3),
                        "threads_at_end": {b: threads[name, b] for b in ("idle", "busy")}}
    result["idle_governed_over_fixed"] = round(result["governed"]["idle_tokens_per_s"]
                                               / result["fixed"]["idle_tokens_per_s"], 3)
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
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a contention child
    parser.add_argument("--governed", action="store_true", help=argparse.SUPPRESS)  # ... with the governor
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not Path(args.data).exists():
        sys.exit(f"benchmark: error: no data at {args.data} (pass --data or set TEXTVAE_DATA)")
    args.config_for = {"lstm": "ptb-lstm", "transformer": "transformer-small"}
    cases = args.cases.split(",")
    if cases != ["contention"] or args.worker:
        base = build_config("ptb-lstm")
        tokenizer = build_tokenizer(base.tokenizer, open(Path(args.data) / "ptb.train.txt").read().splitlines())
        splits = load_splits(args.data, tokenizer, ["train", "test"], base.data.max_length)
    if args.worker:
        return contention_worker(args, splits, tokenizer)
    for name in cases:
        if name == "contention":
            bench_contention(args)
        else:
            bench_case(name, [], splits, tokenizer, args)


if __name__ == "__main__":
    main()
