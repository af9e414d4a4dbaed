"""Greedy decoding's argmax read off a bf16 product (nn/output.py,
ScreenedArgmax): the token is the fp32 product's argmax even where two
logits are closer than bf16 can tell apart (where a plain bf16 argmax is
wrong), including a case built to need the whole error bound; equal logits
go to the first; masked logits stay out, also in rows the bound cannot
serve (non-finite, flat); the bf16 weights are made again when the
layer's weights change; greedy generation of LSTM and Transformer
decoders, with prefixes, ``not_first`` and a word list, gives the same
sentences with it as without it; it is used only where it pays."""

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


def test_the_bf16_weights_are_kept_until_the_layer_changes():
    layer, states = near_ties(rows=200)
    first, again = ScreenedArgmax(layer), ScreenedArgmax(layer)
    assert again.weight_bf16 is first.weight_bf16  # made once for the layer
    for change in (lambda: layer.weight.mul_(-1), lambda: layer.bias.add_(1.0),
                   lambda: layer.load_state_dict({k: v.flip(0) for k, v in layer.state_dict().items()})):
        with torch.no_grad():
            change()
            screen = ScreenedArgmax(layer)
            assert torch.equal(screen.argmax(screen.logits(states)), layer(states).argmax(-1))
    assert screen.weight_bf16 is not first.weight_bf16


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


def test_a_case_that_needs_the_whole_bound():
    """bf16 logits [256, 260], fp32 [259.011, 259.008]: token 0 wins in fp32
    by 0.003 where bf16 puts it 4 behind; half the bound would miss it."""
    width = 257
    down, up = 1 + 2 ** -8 - 2 ** -20, 1 + 2 ** -8 + 2 ** -20  # round to 1 and to 1 + 2^-7 in bf16
    layer = nn.Linear(width, 2)
    with torch.no_grad():
        layer.bias.zero_()
        layer.weight[0] = down
        layer.weight[1] = up
        layer.weight[1, -1] = 1.0
        states = torch.full((1, width), down)
        screen = ScreenedArgmax(layer)
        logits = screen.logits(states)
        assert logits.argmax(-1).item() == 1 and layer(states).argmax(-1).item() == 0
        assert screen.argmax(logits).item() == 0
        screen.bound = screen.bound / 2
        assert screen.argmax(logits).item() == 1  # the bound is not loose: half of it is wrong here


@pytest.mark.parametrize("vocab", [1, 256, 300])
def test_equal_logits_go_to_the_first_and_all_masked_rows_to_zero(vocab):
    torch.manual_seed(0)
    layer = nn.Linear(16, vocab)
    with torch.no_grad():
        layer.weight[vocab // 2:] = layer.weight[: vocab - vocab // 2]  # each of the first half twice
        layer.bias[vocab // 2:] = layer.bias[: vocab - vocab // 2]
        states = torch.randn(50, 16)
        screen = ScreenedArgmax(layer)
        logits = screen.logits(states)
        logits[:5] = float("-inf")
        reference = layer(states)
        reference[:5] = float("-inf")
    assert torch.equal(screen.argmax(logits), reference.argmax(-1))
    assert screen.argmax(logits)[:5].tolist() == [0] * 5


def test_rows_the_bound_cannot_serve_keep_their_masks():
    layer, states = near_ties(rows=6)
    with torch.no_grad():
        states[0, 3] = float("inf")  # a non-finite state
        states[1] = 0.0
        layer_flat = nn.Linear(64, 3000)
        layer_flat.weight.zero_()
        layer_flat.bias.zero_()
        for net in (layer, layer_flat):  # the second: every logit equal, the whole row within reach
            screen = ScreenedArgmax(net)
            logits = screen.logits(states)
            logits[:, :500] = float("-inf")
            reference = net(states)
            reference[:, :500] = float("-inf")
            token = screen.argmax(logits)
            assert torch.equal(token[1:], reference[1:].argmax(-1))
            assert (token >= 500).all()


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


def test_greedy_with_a_word_list_and_prefixes_is_unchanged(monkeypatch):
    from textvae.config import TokenizerConfig
    from textvae.lexicon import WordConstraint
    from textvae.model import TextVAE
    from textvae.tokenization import build_tokenizer, corpus_words

    from conftest import TRAIN, tiny_config

    tokenizer = build_tokenizer(TokenizerConfig(spec="bpe", vocab_size=300), TRAIN)
    torch.manual_seed(0)
    model = TextVAE(tiny_config(), tokenizer).eval()
    words = WordConstraint(tokenizer, corpus_words(TRAIN[:12]))
    z = torch.randn(24, 4, generator=torch.Generator().manual_seed(1))
    prefixes = [tokenizer.encode("the"), tokenizer.encode("a small")] * 6 + [[]] * 12
    config = GenerationConfig("greedy", max_length=14, words=words)

    def run(make):
        monkeypatch.setattr(ScreenedArgmax, "for_decoder", staticmethod(make))
        return generate(model.decoder, z, 24, tokenizer.bos_id, tokenizer.eos_id, config, prefixes,
                        forbidden=tokenizer.never_generated, not_first=(tokenizer.eos_id,))

    assert run(lambda d: ScreenedArgmax(d.output)) == run(lambda d: None)


def test_the_screen_is_used_only_where_it_pays(monkeypatch):
    from textvae import runtime

    small, large = nn.Linear(8, 100), nn.Linear(8, 2000)
    holder = lambda layer: type("Decoder", (), {"output": layer})()  # noqa: E731
    monkeypatch.setattr(runtime, "native_bf16", lambda device: True)
    assert ScreenedArgmax.for_decoder(holder(small)) is None  # a small vocabulary: fp32 is cheap
    assert ScreenedArgmax.for_decoder(holder(large)) is not None
    monkeypatch.setattr(ScreenedArgmax, "enabled", False)  # switched off (to time against the fp32 argmax)
    assert ScreenedArgmax.for_decoder(holder(large)) is None
    monkeypatch.setattr(ScreenedArgmax, "enabled", True)
    monkeypatch.setattr(runtime, "native_bf16", lambda device: False)
    assert ScreenedArgmax.for_decoder(holder(large)) is None  # emulated bf16 is slower than fp32
    assert ScreenedArgmax.for_decoder(holder(large), force=True) is not None
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 logits asked for: nothing to make exact
        assert ScreenedArgmax.for_decoder(holder(large), force=True) is None
