"""The generation engine (greedy, sampling, beam, prefixes): on a scripted
decoder every strategy stops at eos, cuts at max_length and keeps forced
prefixes; filter_logits keeps exactly the top k and the nucleus; on the tiny
model greedy is deterministic, top-k 1 sampling and width-1 beam equal
greedy, outputs hold no eos, forbidden ids never appear, and finished rows
leave the batch without changing a token."""

import pytest
import torch
from torch import nn

from textvae.generation import GenerationConfig, filter_logits, generate

from conftest import TRAIN


VOCAB, BOS, EOS = 12, 1, 2
SCRIPTS = [[5, 6, 7], [8], [9, 10, 11, 5, 6]]


class ScriptedDecoder(nn.Module):
    """A decoder that ignores its inputs and, for row r (read from z), puts
    almost all probability on SCRIPTS[r][t] at step t and on eos after it."""

    def __init__(self) -> None:
        super().__init__()
        width = max(map(len, SCRIPTS)) + 1
        table = torch.full((len(SCRIPTS), width + 64), EOS)
        for row, script in enumerate(SCRIPTS):
            table[row, : len(script)] = torch.tensor(script)
        self.register_buffer("table", table)
        self.output = nn.Linear(VOCAB, VOCAB, bias=False)
        with torch.no_grad():
            self.output.weight.copy_(10 * torch.eye(VOCAB))

    def initial_state(self, z, batch_size):
        return {"row": z[:, 0].long(), "position": torch.zeros(batch_size, dtype=torch.long)}

    def forward(self, inputs, state):
        steps = state["position"].unsqueeze(1) + torch.arange(inputs.shape[1])  # (B, T)
        upcoming = self.table[state["row"].unsqueeze(1), steps]
        hidden = nn.functional.one_hot(upcoming, VOCAB).float()  # (B, T, V)
        return hidden, {"row": state["row"], "position": state["position"] + inputs.shape[1]}

    @staticmethod
    def select_state(state, index):
        return {k: v.index_select(0, index) for k, v in state.items()}


def scripted(config: GenerationConfig, prefixes=None, rows=(0, 1, 2), seed=0):
    z = torch.tensor(rows, dtype=torch.float).unsqueeze(1)
    return generate(ScriptedDecoder(), z, len(rows), BOS, EOS, config, prefixes, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("config", [
    GenerationConfig("greedy"),
    GenerationConfig("sample", temperature=0.5),
    GenerationConfig("sample", top_k=1, temperature=5.0),
    GenerationConfig("sample", top_p=0.5),
    GenerationConfig("beam", beam_size=1),
    GenerationConfig("beam", beam_size=3),
], ids=["greedy", "cold-sample", "top-k-1", "top-p", "beam-1", "beam-3"])
def test_every_strategy_stops_at_eos(config):
    assert scripted(config) == SCRIPTS


@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam"])
def test_max_length_cuts_outputs(strategy):
    out = scripted(GenerationConfig(strategy, max_length=2, top_k=1))
    assert out == [s[:2] for s in SCRIPTS]


@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam"])
def test_forced_prefixes_are_kept(strategy):
    prefixes = [[11, 11], [], [3]]  # not what the decoder would choose
    out = scripted(GenerationConfig(strategy, top_k=1, beam_size=2), prefixes)
    assert out == [[11, 11, 7], [8], [3, 10, 11, 5, 6]]


def test_max_length_counts_the_prefix():
    out = scripted(GenerationConfig("greedy", max_length=2), [[9, 9, 9], [8], [5]])
    assert out == [[9, 9], [8], [5, 10]]


def test_invalid_generation_settings_raise():
    for options in ({"strategy": "nucleus"}, {"temperature": 0.0}, {"top_p": 0.0}, {"beam_size": 0},
                    {"max_length": 0}, {"top_k": -1}):
        with pytest.raises(ValueError):
            GenerationConfig(**options)


# ---------------------------------------------------------- filter_logits
def test_top_k_keeps_exactly_k():
    logits = torch.randn(4, 30, generator=torch.Generator().manual_seed(0))
    kept = filter_logits(logits, top_k=5)
    assert (torch.isfinite(kept).sum(-1) == 5).all()
    top = logits.topk(5, dim=-1).indices
    assert torch.equal(kept.gather(-1, top), logits.gather(-1, top))
    assert torch.equal(filter_logits(logits, top_k=0), logits)
    assert torch.equal(filter_logits(logits, top_k=100), logits)


@pytest.mark.parametrize("top_p, nucleus", [(0.5, {3}), (0.7, {3, 0}), (0.8, {3, 0}), (0.81, {3, 0, 1}),
                                            (0.99, {3, 0, 1, 2}), (1.0, {3, 0, 1, 2})])
def test_top_p_keeps_the_nucleus(top_p, nucleus):
    probs = torch.tensor([[0.3, 0.15, 0.05, 0.5]])
    kept = filter_logits(probs.log(), top_p=top_p)
    assert set(torch.isfinite(kept[0]).nonzero().flatten().tolist()) == nucleus
    assert torch.allclose(kept.softmax(-1)[0, list(nucleus)], probs[0, list(nucleus)] / probs[0, list(nucleus)].sum())


def test_top_k_and_top_p_combine():
    probs = torch.tensor([[0.3, 0.15, 0.05, 0.5]])
    kept = filter_logits(probs.log(), top_k=3, top_p=0.9)  # top-3 renormalised: 0.526, 0.316, 0.158
    assert set(torch.isfinite(kept[0]).nonzero().flatten().tolist()) == {0, 1, 3}


# ------------------------------------------------------ on the tiny model
def test_greedy_is_deterministic(tiny_model):
    tok = tiny_model.tokenizer
    z = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    runs = [generate(tiny_model.decoder, z, 4, tok.bos_id, tok.eos_id, GenerationConfig("greedy", max_length=10),
                     generator=torch.Generator().manual_seed(seed)) for seed in (0, 1)]
    assert runs[0] == runs[1]
    assert tiny_model.reconstruct(TRAIN[:3]) == tiny_model.reconstruct(TRAIN[:3])


def test_top_k_1_sampling_and_width_1_beam_equal_greedy(tiny_model):
    z = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    tok = tiny_model.tokenizer

    def run(prefixes=None, **options):
        config = GenerationConfig(max_length=12, **options)
        return generate(tiny_model.decoder, z, 5, tok.bos_id, tok.eos_id, config, prefixes,
                        torch.Generator().manual_seed(1))

    greedy = run(strategy="greedy")
    assert run(strategy="sample", top_k=1, temperature=2.0) == greedy
    assert run(strategy="beam", beam_size=1) == greedy
    assert run(strategy="beam", beam_size=1, length_penalty=0.0) == greedy
    prefixes = [tok.encode("the dog")] * 5
    assert run(prefixes, strategy="beam", beam_size=1) == run(prefixes, strategy="greedy")
    assert all(out[:2] == prefixes[0] for out in run(prefixes, strategy="beam", beam_size=3))


@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam"])
def test_outputs_hold_no_eos_and_respect_max_length(tiny_model, strategy):
    tok = tiny_model.tokenizer
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(2))
    out = generate(tiny_model.decoder, z, 6, tok.bos_id, tok.eos_id, GenerationConfig(strategy, max_length=7),
                   generator=torch.Generator().manual_seed(0))
    assert len(out) == 6
    for ids in out:
        assert len(ids) <= 7
        assert tok.eos_id not in ids


@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam"])
def test_forbidden_ids_are_never_generated(tiny_model, strategy):
    tok = tiny_model.tokenizer
    z = torch.randn(8, 4, generator=torch.Generator().manual_seed(3))
    # Make padding and bos the most likely tokens everywhere: only the ban keeps them out.
    with torch.no_grad():
        bias = tiny_model.decoder.output.bias
        saved = bias.clone()
        bias[[tok.pad_id, tok.bos_id]] += 100.0
        config = GenerationConfig(strategy, max_length=6, temperature=2.0)
        banned = generate(tiny_model.decoder, z, 8, tok.bos_id, tok.eos_id, config,
                          generator=torch.Generator().manual_seed(0), forbidden=tok.never_generated)
        free = generate(tiny_model.decoder, z, 8, tok.bos_id, tok.eos_id, config,
                        generator=torch.Generator().manual_seed(0))
        bias.copy_(saved)
    assert tok.never_generated == (tok.pad_id, tok.bos_id)
    assert all(i not in tok.never_generated for ids in banned for i in ids)
    assert any(i in tok.never_generated for ids in free for i in ids)


def test_eos_ends_generation_early(tiny_model):
    tok = tiny_model.tokenizer
    with torch.no_grad():
        tiny_model.decoder.output.bias[tok.eos_id] += 100.0  # eos always wins
    assert tiny_model.sample(3, strategy="greedy") == ["", "", ""]
    with torch.no_grad():
        tiny_model.decoder.output.bias[tok.eos_id] -= 1000.0  # eos never wins
    out = generate(tiny_model.decoder, torch.zeros(2, 4), 2, tok.bos_id, tok.eos_id, GenerationConfig(max_length=9))
    assert [len(ids) for ids in out] == [9, 9]


def plain_decode(decoder, z, bos, eos, config, generator):
    """The engine's semantics written the plain way: every row stays in the
    batch to the end (finished rows keep emitting eos) and sampling is
    torch.multinomial; what the engine must reproduce token for token."""
    state = decoder.initial_state(z, len(z))
    hidden, state = decoder(torch.full((len(z), 1), bos), state)
    finished, steps = torch.zeros(len(z), dtype=torch.bool), []
    for _ in range(config.max_length):
        logits = decoder.output(hidden[:, -1]).float()
        if config.strategy == "greedy":
            token = logits.argmax(-1)
        else:
            probs = filter_logits(logits / config.temperature, config.top_k, config.top_p).softmax(-1)
            token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        token = torch.where(finished, torch.full_like(token, eos), token)
        finished |= token == eos
        steps.append(token)
        if finished.all():
            break
        hidden, state = decoder(token.unsqueeze(1), state)
    rows = torch.stack(steps, 1).tolist()
    return [row[: row.index(eos)] if eos in row else row for row in rows]


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
@pytest.mark.parametrize("config", [GenerationConfig("greedy", max_length=15),
                                    GenerationConfig("sample", max_length=15),
                                    GenerationConfig("sample", top_k=4, temperature=0.7, max_length=15)],
                         ids=["greedy", "sample", "top-k"])
def test_finished_rows_leave_the_batch_without_changing_a_token(kind, config):
    """Finished sentences leave the batch (the rest decode on fewer rows), and
    the outputs are exactly those of the plain full-batch loop, sampled ones
    included for the same seed: the noise is drawn for the whole batch."""
    from textvae.config import ModelConfig
    from textvae.nn import build_decoder

    torch.manual_seed(0)
    decoder = build_decoder(ModelConfig(decoder=kind, embed_dim=16, hidden_dim=16, latent_dim=4, num_heads=2),
                            VOCAB + 20, 0).eval()
    with torch.no_grad():  # an eos bias that gives sentences of many lengths
        decoder.output.bias[EOS] += 1.5 if config.strategy == "sample" else {"lstm": 0.6, "transformer": 0.0}[kind]
    z = torch.randn(24, 4, generator=torch.Generator().manual_seed(1))
    seen = []
    select = decoder.select_state
    decoder.select_state = lambda state, index: seen.append(len(index)) or select(state, index)
    ours = generate(decoder, z, 24, BOS, EOS, config, generator=torch.Generator().manual_seed(5))
    reference = plain_decode(decoder, z, BOS, EOS, config, torch.Generator().manual_seed(5))
    assert ours == reference
    lengths = sorted(len(s) for s in ours)
    assert lengths[0] < lengths[-1] and seen and min(seen) < 24  # the batch did shrink
