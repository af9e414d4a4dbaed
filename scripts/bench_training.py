"""Training speed for the benchmark (scripts/benchmark.py,
scripts/bench_contention.py): textvae's training step as the trainer runs
it, the same PTB LSTM VAE written plainly, and a timing of steps in
alternating rounds, so that a ratio of two sees the same machine."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from textvae.config import build_config
from textvae.data import TextBatches, collate, load_splits
from textvae.model import TextVAE
from textvae.objectives import elbo_loss
from textvae.runtime import autocast_context
from textvae.tokenization import build_tokenizer
from textvae.training.optim import build_optimizer


def load_ptb(data: str):
    """The ptb-lstm preset's tokenizer trained on PTB's training text, and the train and test splits."""
    base = build_config("ptb-lstm")
    tokenizer = build_tokenizer(base.tokenizer, open(Path(data) / "ptb.train.txt").read().splitlines())
    return tokenizer, load_splits(data, tokenizer, ["train", "test"], base.data.max_length)


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


def plain_training(split, tokenizer, steps: int):
    """The plain baseline's training step and its first ``steps`` batches,
    (batch, tokens): random unbucketed batches of 32, Adam at 1e-3."""
    torch.manual_seed(0)
    plain = PlainLSTMVAE(tokenizer.vocab_size, tokenizer.pad_id)
    optimizer = torch.optim.Adam(plain.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    random_order = torch.randperm(len(split), generator=generator).tolist()
    batches = []
    for s in range(steps):
        index = random_order[s * 32: (s + 1) * 32]
        batch = collate([split.ids[i] for i in index], index, tokenizer)
        batches.append((batch, sum(len(split.ids[i]) + 1 for i in index)))

    def step(batch):
        loss = plain(batch.tokens, batch.lengths)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step, batches


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
