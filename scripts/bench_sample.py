"""End-to-end sampling throughput of a trained run: `sample_stream` (what
`textvae sample RUN -n N` runs) for N sentences of at most 30 tokens, start-up
and a 64-sentence warm-up excluded; prints sentences/s and a hash of the output.

    python scripts/bench_sample.py RUN 5000 greedy|sample [--fp32-argmax]

``--fp32-argmax`` turns off greedy decoding's bf16 screen (nn/output.py,
ScreenedArgmax), so one run can time both ways and compare their hashes.
"""

import hashlib
import json
import sys
import time

import torch

import textvae
from textvae.model import TextVAE
from textvae.nn.output import ScreenedArgmax
from textvae.operations import sample_stream

run, n, strategy = sys.argv[1], int(sys.argv[2]), sys.argv[3]
plain = "--fp32-argmax" in sys.argv[4:]
ScreenedArgmax.enabled = not plain
model = TextVAE.from_pretrained(run)
list(sample_stream(model, 64, seed=1, strategy=strategy, max_length=30))  # warm-up
start = time.perf_counter()
lines = [line for chunk in sample_stream(model, n, seed=0, strategy=strategy, max_length=30) for line in chunk]
took = time.perf_counter() - start
print(json.dumps({"code": textvae.__file__, "strategy": strategy, "fp32_argmax": plain, "n": n,
                  "seconds": round(took, 2), "sentences_per_s": round(n / took, 1),
                  "threads": torch.get_num_threads(), "mean_words": round(sum(len(line.split()) for line in lines) / n, 1),
                  "sha": hashlib.sha1("\n".join(lines).encode()).hexdigest()[:12]}))
