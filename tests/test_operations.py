"""The operations on the generation engine, as the model offers them
(textvae.operations): seeded sampling is reproducible, completion keeps its
prefix and starts a new word unless asked, interpolation starts and ends at
the reconstructions and slerp keeps to the sphere, a language model samples
and completes but has no latent to interpolate, sampling streams in chunks
from one random stream, lengths are bounded, a prior temperature scales
the prior's draw, and the run's config decides how sample decodes unless told."""

import pytest
import torch

from textvae.errors import TextVAEError
from textvae.generation import GenerationConfig, generate
from textvae.operations import slerp

from conftest import TRAIN


def decode(model, strategy="greedy", seed=None, n=4, **options):
    return model.sample(n, strategy=strategy, seed=seed, **options)


def test_seeded_sampling_is_reproducible(tiny_model):
    first = decode(tiny_model, "sample", seed=7, n=6)
    assert decode(tiny_model, "sample", seed=7, n=6) == first
    assert decode(tiny_model, "sample", seed=8, n=6) != first
    assert len(decode(tiny_model, "sample", seed=1, n=1)) == 1


def test_prior_temperature_decodes_the_cooled_draw(tiny_model, monkeypatch):
    """sample(prior_temperature=T) decodes T times the prior's draw (the same
    random stream), and T = 1 the plain draw."""
    from textvae import operations

    drawn, plain = [], operations._decode
    monkeypatch.setattr(operations, "_decode", lambda model, z, *a, **k: drawn.append(z) or plain(model, z, *a, **k))
    eps = torch.randn(5, tiny_model.latent_dim, generator=torch.Generator().manual_seed(3))
    cooled = decode(tiny_model, seed=3, n=5, prior_temperature=0.3)
    full = decode(tiny_model, seed=3, n=5)
    assert torch.allclose(drawn[0], 0.3 * eps) and torch.equal(drawn[1], eps)
    assert cooled == operations.decode(tiny_model, 0.3 * eps) and full == operations.decode(tiny_model, eps)
    with pytest.raises(TextVAEError, match="prior temperature"):
        decode(tiny_model, n=2, prior_temperature=0)


def test_the_run_decides_how_sample_and_complete_decode_unless_told(tiny_model):
    """model.sample_strategy and model.prior_temperature are the defaults of
    sample (and the strategy of complete); a keyword argument wins."""
    import dataclasses

    plain = tiny_model.config.model
    try:
        tiny_model.config.model = dataclasses.replace(plain, sample_strategy="greedy", prior_temperature=0.5)
        chosen = tiny_model.sample(6, seed=4)
        assert chosen == tiny_model.sample(6, seed=4, strategy="greedy", prior_temperature=0.5)
        assert chosen != tiny_model.sample(6, seed=4, strategy="sample", prior_temperature=1.0)
        greedy = tiny_model.complete("the dog", n=3, seed=2, proposals=16)
        assert greedy == tiny_model.complete("the dog", n=3, seed=2, proposals=16, strategy="greedy")
    finally:
        tiny_model.config.model = plain
    assert tiny_model.sample(6, seed=4) == tiny_model.sample(6, seed=4, strategy="sample", prior_temperature=1.0)


def test_complete_keeps_the_prefix(tiny_model):
    for strategy in ("sample", "greedy", "beam"):
        outputs = tiny_model.complete("the dog", n=3, strategy=strategy, seed=0, proposals=32)
        assert len(outputs) == 3
        assert all(text.startswith("the dog") for text in outputs)
    # A prefix longer than max_length is kept whole.
    long_prefix = "the dog sat on the mat"
    assert all(t.startswith(long_prefix) for t in tiny_model.complete(long_prefix, n=2, max_length=2, proposals=8))
    # A word outside the vocabulary keeps the user's spelling.
    assert all(t.startswith("the zebra") for t in tiny_model.complete("the zebra", n=2, seed=0, proposals=16))
    with pytest.raises(TextVAEError):
        tiny_model.complete("  ")


def test_interpolation_starts_and_ends_at_the_reconstructions(tiny_model):
    a, b = TRAIN[0], TRAIN[8]
    ends = tiny_model.reconstruct([a, b])
    for method in ("linear", "slerp"):
        path = tiny_model.interpolate(a, b, steps=5, method=method)
        assert len(path) == 5
        assert [path[0], path[-1]] == ends
    with pytest.raises(TextVAEError):
        tiny_model.interpolate(a, b, steps=1)
    with pytest.raises(TextVAEError):
        tiny_model.interpolate(a, b, method="cubic")


def test_slerp():
    a, b = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 2.0])
    path = slerp(a, b, torch.linspace(0, 1, 5))
    assert torch.allclose(path[0], a, atol=1e-6) and torch.allclose(path[-1], b, atol=1e-6)
    assert torch.allclose(path.norm(dim=1), torch.full((5,), 2.0))  # stays on the sphere
    angles = torch.atan2(path[:, 1], path[:, 0])
    assert torch.allclose(angles.diff(), torch.full((4,), torch.pi / 8), atol=1e-5)  # constant angular speed
    assert torch.allclose(slerp(a, 3 * a, torch.tensor([0.5])), torch.tensor([[4.0, 0.0]]))  # parallel: linear


def test_language_model_samples_but_has_no_latent(word_tokenizer):
    from textvae.model import TextVAE

    from conftest import tiny_config

    torch.manual_seed(0)
    lm = TextVAE(tiny_config(model={"latent_dim": 0}), word_tokenizer).eval()
    assert len(lm.sample(3, seed=0)) == 3
    assert all(t.startswith("the cat") for t in lm.complete("the cat", n=2, seed=0))
    with pytest.raises(TextVAEError):
        lm.interpolate(TRAIN[0], TRAIN[1])


def test_completion_starts_a_new_word_unless_asked(tmp_path):
    """A byte-level BPE model must not turn the prefix's last word into
    another word ("the man" -> "the manner") unless ``continue_word``."""
    from textvae.config import TokenizerConfig
    from textvae.model import TextVAE
    from textvae.tokenization import build_tokenizer

    from conftest import tiny_config

    tok = build_tokenizer(TokenizerConfig(spec="bpe", vocab_size=300), TRAIN)
    torch.manual_seed(0)
    model = TextVAE(tiny_config(tokenizer={"spec": "bpe", "vocab_size": 300}), tok).eval()
    pieces = torch.tensor(tok.word_pieces)
    with torch.no_grad():  # make the word pieces by far the likeliest tokens
        model.decoder.output.bias[pieces] += 20.0
    prefix = tok.encode("the dog")
    for strategy in ("sample", "greedy", "beam"):
        z = torch.zeros(6, 4)
        config = GenerationConfig(strategy=strategy, max_length=8)
        out = generate(model.decoder, z, 6, tok.bos_id, tok.eos_id, config, [prefix] * 6, torch.Generator().manual_seed(0),
                       tok.never_generated, tok.word_pieces)
        assert all(row[:len(prefix)] == prefix and row[len(prefix)] not in tok.word_pieces for row in out)
        assert any(i in tok.word_pieces for row in out for i in row[len(prefix) + 1:])  # only the first is held
    words = model.complete("the dog", n=6, seed=0, proposals=8)
    glued_on = lambda text: text[len("the dog"):][:1].isalnum() or not text[len("the dog"):][:1].isascii()  # noqa: E731
    assert all(text.startswith("the dog") and not glued_on(text) for text in words), words
    glued = model.complete("the dog", n=6, seed=0, proposals=8, continue_word=True)
    assert all(text.startswith("the dog") and glued_on(text) for text in glued), glued


def test_sampling_streams_in_chunks_from_one_random_stream(tiny_model):
    from textvae.operations import sample_stream

    chunks = list(sample_stream(tiny_model, 10, seed=3, chunk=4, max_length=8))
    assert [len(c) for c in chunks] == [4, 4, 2]
    assert chunks[0] == tiny_model.sample(4, seed=3, max_length=8)  # the first chunk is plain sample's
    again = [s for c in sample_stream(tiny_model, 10, seed=3, chunk=4, max_length=8) for s in c]
    assert again == [s for c in chunks for s in c]  # reproducible from the seed
    assert len(set(again)) > 1


def test_lengths_are_bounded(tiny_model):
    from textvae.errors import TextVAEError
    from textvae.operations import MAX_GENERATED

    long = tiny_model.sample(2, seed=0, max_length=10**8, strategy="greedy")  # capped, not run until killed
    assert all(len(s.split()) <= MAX_GENERATED for s in long)
    with pytest.raises(TextVAEError, match="prefix has"):
        tiny_model.complete("the cat " * 600, n=1, seed=0)
