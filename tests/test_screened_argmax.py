"""Greedy decoding's argmax read off a bf16 product (nn/output.py,
ScreenedArgmax): the token is the fp32 product's argmax even where two
logits are closer than bf16 can tell apart (where a plain bf16 argmax is
wrong), masked logits stay out, and greedy generation of LSTM and
Transformer decoders gives the same sentences with it as without it."""

import pytest
import torch
from torch import nn

from textvae.generation import GenerationConfig, generate
from textvae.nn.output import ScreenedArgmax


def near_ties(vocab=3000, hidden=64, rows=4000):
    """An output layer whose logits come in near-equal pairs (row 2k+1 is row
    2k scaled by 1 +- 0.5e-3 to 1.5e-3: closer than bf16 resolves, farther
    than fp32's rounding), and random hidden states."""
    torch.manual_seed(0)
    layer = nn.Linear(hidden, vocab)
    with torch.no_grad():
        sign = torch.randint(0, 2, (vocab // 2, 1)) * 2 - 1
        layer.weight[1::2] = layer.weight[0::2] * (1 + 1e-3 * sign * (0.5 + torch.rand(vocab // 2, 1)))
        layer.bias[1::2] = layer.bias[0::2]
    states = 4 * torch.randn(rows, hidden)
    return layer, states


def test_the_token_is_the_fp32_argmax_where_bf16_cannot_tell():
    layer, states = near_ties()
    with torch.no_grad():
        exact = layer(states).argmax(-1)
        naive = nn.functional.linear(states.bfloat16(), layer.weight.bfloat16(), layer.bias.bfloat16()).argmax(-1)
        screen = ScreenedArgmax(layer)
        ours = screen.argmax(screen.logits(states))
    assert (naive != exact).sum() > 100  # bf16 alone picks the wrong one of a pair often
    assert torch.equal(ours, exact)


def test_masked_logits_stay_out():
    layer, states = near_ties(rows=500)
    with torch.no_grad():
        exact = layer(states)
        screen = ScreenedArgmax(layer)
        logits = screen.logits(states)
    best = exact.argmax(-1)
    masked = logits.clone()
    masked[torch.arange(len(best)), best] = float("-inf")  # the winner banned: the runner-up wins
    exact[torch.arange(len(best)), best] = float("-inf")
    assert torch.equal(screen.argmax(masked), exact.argmax(-1))


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_greedy_generation_is_unchanged(kind, monkeypatch):
    from textvae.config import ModelConfig
    from textvae.nn import build_decoder

    torch.manual_seed(0)
    decoder = build_decoder(ModelConfig(decoder=kind, embed_dim=32, hidden_dim=32, latent_dim=4, num_heads=2),
                            1500, 0).eval()
    with torch.no_grad():
        decoder.output.bias[2] += 0.3  # eos: sentences of many lengths
    z = 3 * torch.randn(40, 4, generator=torch.Generator().manual_seed(1))
    config = GenerationConfig("greedy", max_length=20)
    prefixes = [[7, 8]] * 20 + [[]] * 20

    def run(make):
        monkeypatch.setattr(ScreenedArgmax, "for_decoder", staticmethod(make))
        return generate(decoder, z, 40, 1, 2, config, prefixes, forbidden=(0,))

    used = []
    screened = run(lambda d: used.append(1) or ScreenedArgmax(d.output))
    assert used and screened == run(lambda d: None)
    assert len({len(s) for s in screened}) > 3


def test_the_screen_is_used_only_where_it_pays():
    small, large = nn.Linear(8, 100), nn.Linear(8, 2000)
    holder = lambda layer: type("Decoder", (), {"output": layer})()  # noqa: E731
    assert ScreenedArgmax.for_decoder(holder(small)) is None  # a small vocabulary: fp32 is cheap
    assert ScreenedArgmax.for_decoder(holder(large), force=True) is not None
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 logits asked for: nothing to make exact
        assert ScreenedArgmax.for_decoder(holder(large), force=True) is None
