"""Generation throughput with and without the decoder's cache.

For the LSTM and the Transformer decoder (random weights, PTB-sized: a 10k
vocabulary, width 256, latent 32), greedy decoding of sentences of exactly
``--length`` tokens (eos can never end them), at batch 1 and 64:

- cache: the shared engine (``generation.generate``), one decoder step per
  new token through the state (LSTM (h, c); Transformer keys and values);
- no cache: every step re-runs the decoder over the whole prefix from a
  fresh state, as a decoder without a cache would.

Prints one JSON line per (decoder, batch, cache): sentences/s and tokens/s.

    .venv/bin/python scripts/bench_generation.py [--device cuda] [--batch-sizes 1,64]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from textvae.config import ModelConfig
from textvae.generation import GenerationConfig, generate
from textvae.nn import build_decoder

BOS, NEVER = 1, -1  # no token id is -1, so no sentence ends before --length


def decoder_for(kind: str, vocab: int, width: int, layers: int, heads: int, device: torch.device):
    config = ModelConfig(decoder=kind, embed_dim=width, hidden_dim=width, decoder_layers=layers, num_heads=heads,
                         latent_dim=32, latent_to_decoder="both", latent_injection="both")
    torch.manual_seed(0)
    return build_decoder(config, vocab, 0).to(device).eval()


@torch.no_grad()
def with_cache(decoder, z: torch.Tensor, length: int) -> list[list[int]]:
    return generate(decoder, z, z.shape[0], BOS, NEVER, GenerationConfig(strategy="greedy", max_length=length))


@torch.no_grad()
def without_cache(decoder, z: torch.Tensor, length: int) -> list[list[int]]:
    tokens = torch.full((z.shape[0], 1), BOS, device=z.device)
    for _ in range(length):
        hidden, _ = decoder(tokens, decoder.initial_state(z, z.shape[0]))  # the whole prefix again
        tokens = torch.cat([tokens, decoder.output(hidden[:, -1]).argmax(-1, keepdim=True)], dim=1)
    return tokens[:, 1:].tolist()


def timed(run, device: torch.device, min_seconds: float) -> tuple[float, int, list]:
    """Seconds per call (after one warm-up call), averaged over >= min_seconds."""
    result = run()
    calls, start = 0, time.perf_counter()
    while True:
        run()
        calls += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / calls, calls, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--decoders", default="lstm,transformer")
    parser.add_argument("--batch-sizes", default="1,64")
    parser.add_argument("--length", type=int, default=30, help="tokens per sentence")
    parser.add_argument("--vocab", type=int, default=10000)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--min-seconds", type=float, default=2.0, help="timing window per case")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default); on a "
                        "shared machine 1 avoids threads waiting on each other")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    layers = {"lstm": 1, "transformer": 2}
    for kind in args.decoders.split(","):
        decoder = decoder_for(kind, args.vocab, args.width, layers[kind], 4, device)
        for batch in map(int, args.batch_sizes.split(",")):
            z = torch.randn(batch, 32, generator=torch.Generator().manual_seed(0)).to(device)
            outputs = {}
            for cache, run in (("yes", with_cache), ("no", without_cache)):
                seconds, calls, outputs[cache] = timed(lambda: run(decoder, z, args.length), device, args.min_seconds)
                print(json.dumps({
                    "decoder": kind, "layers": layers[kind], "batch": batch, "cache": cache == "yes",
                    "sentences_per_s": round(batch / seconds, 1),
                    "tokens_per_s": round(batch * args.length / seconds, 1), "calls": calls,
                    "length": args.length, "vocab": args.vocab, "width": args.width, "device": str(device),
                    "threads": torch.get_num_threads(),
                }), flush=True)
            assert all(len(row) == args.length for row in outputs["yes"]), "a sentence ended early"
            if outputs["yes"] != outputs["no"]:
                print(json.dumps({"decoder": kind, "batch": batch, "warning": "cached and uncached greedy "
                                  "outputs differ (near-tied logits)"}), flush=True)


if __name__ == "__main__":
    main()
