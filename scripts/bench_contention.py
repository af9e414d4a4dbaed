"""The benchmark's ``contention`` case (scripts/benchmark.py): PTB LSTM
training in child processes, idle and beside a busy single-threaded
process, in alternating rounds, with torch's default (fixed) thread count
and with textvae's default (``train.num_threads=0``:
``textvae.threads.ThreadGovernor`` re-chooses the count from the other
processes' load); it prints each one's busy/idle throughput ratio. Run
alone, this file is one such child."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch

from textvae.threads import ThreadGovernor

from bench_training import load_ptb, textvae_training, time_interleaved  # scripts/ beside this file


def contention_worker(args, splits, tokenizer) -> None:
    """(Child process) PTB LSTM training tokens/s with torch's default thread
    count, or (``--governed``) with the trainer's thread governor ticking
    after every step as in ``Trainer``."""
    *_, batches, step = textvae_training("ptb-lstm", [], splits, tokenizer, args.steps + args.warmup)
    governor = ThreadGovernor() if args.governed else None

    def timed(batch):
        step(batch)
        if governor:
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
                    out = subprocess.run([sys.executable, __file__, "--data", args.data, "--steps",
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


def worker() -> None:
    parser = argparse.ArgumentParser(description="one contention child (bench_contention.py)")
    parser.add_argument("--data", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--warmup", type=int, required=True)
    parser.add_argument("--governed", action="store_true")
    args = parser.parse_args()
    tokenizer, splits = load_ptb(args.data)
    contention_worker(args, splits, tokenizer)


if __name__ == "__main__":
    worker()
