"""The Transformer encoder and decoder (nn/transformer.py) on tiny models
(width 16, 2 heads, 2 layers): cache == full forward, no leakage through
padding or later tokens, generation, training, save/load, and the CLI."""

import pytest
import torch

from textvae.config import ModelConfig, build_config, list_presets
from textvae.errors import TextVAEError
from textvae.generation import GenerationConfig, generate
from textvae.model import TextVAE, decoder_io
from textvae.nn import build_decoder, build_encoder
from textvae.objectives import elbo_loss

from conftest import TINY_FLAGS, TRAIN, tiny_config

VOCAB, PAD = 40, 0
TINY = {"embed_dim": 16, "hidden_dim": 16, "num_heads": 2, "encoder_layers": 2, "decoder_layers": 2,
        "latent_dim": 4, "memory_vectors": 2}

# Every decoder that goes through the shared generation engine, by its settings.
DECODERS = {
    "lstm": {"decoder": "lstm"},
    "transformer-embedding": {"decoder": "transformer", "latent_injection": "embedding"},
    "transformer-memory": {"decoder": "transformer", "latent_injection": "memory"},
    "transformer-both": {"decoder": "transformer", "latent_injection": "both"},
    "transformer-sinusoidal": {"decoder": "transformer", "positions": "sinusoidal"},
    "transformer-lm": {"decoder": "transformer", "latent_dim": 0},
}


def model_config(**changes) -> ModelConfig:
    return ModelConfig(**{**TINY, **changes})


def tiny_decoder(name: str):
    torch.manual_seed(0)
    config = model_config(**DECODERS[name])
    return build_decoder(config, VOCAB, PAD).eval(), config.latent_dim


def random_z(latent_dim: int, batch: int):
    return torch.randn(batch, latent_dim, generator=torch.Generator().manual_seed(1)) if latent_dim else None


def random_tokens(batch: int, length: int, seed: int = 2) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", DECODERS)
def test_cached_steps_equal_full_forward(name):
    """Logits of every step through the state (a 3-token prefix, then one
    token at a time, as generate() calls it) equal one full forward."""
    decoder, latent = tiny_decoder(name)
    z, tokens = random_z(latent, 3), random_tokens(3, 9)
    with torch.no_grad():
        full, _ = decoder(tokens, decoder.initial_state(z, 3))
        hidden, state = decoder(tokens[:, :3], decoder.initial_state(z, 3))
        pieces = [hidden]
        for t in range(3, tokens.shape[1]):
            hidden, state = decoder(tokens[:, t: t + 1], state)
            pieces.append(hidden)
    stepwise = torch.cat(pieces, dim=1)
    torch.testing.assert_close(decoder.output(stepwise), decoder.output(full), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", DECODERS)
def test_later_tokens_and_padding_never_change_earlier_outputs(name):
    decoder, latent = tiny_decoder(name)
    z, tokens = random_z(latent, 2), random_tokens(2, 8)
    changed = tokens.clone()
    changed[:, 5:] = (changed[:, 5:] + 7) % (VOCAB - 1) + 1
    padded = torch.cat([tokens, torch.full((2, 4), PAD)], dim=1)
    with torch.no_grad():
        base, _ = decoder(tokens, decoder.initial_state(z, 2))
        after_change, _ = decoder(changed, decoder.initial_state(z, 2))
        after_padding, _ = decoder(padded, decoder.initial_state(z, 2))
    torch.testing.assert_close(after_change[:, :5], base[:, :5], atol=1e-6, rtol=0)
    assert not torch.allclose(after_change[:, 5:], base[:, 5:])
    torch.testing.assert_close(after_padding[:, :8], base, atol=1e-6, rtol=0)


@pytest.mark.parametrize("pooling", ["mean", "first", "attention"])
def test_encoder_features_ignore_padding(pooling):
    torch.manual_seed(0)
    encoder = build_encoder(model_config(encoder="transformer", pooling=pooling), VOCAB, PAD).eval()
    lengths = torch.tensor([7, 5, 3])
    tokens = random_tokens(3, 7)
    tokens[torch.arange(7) >= lengths.unsqueeze(1)] = PAD
    padded = torch.cat([tokens, torch.full((3, 5), PAD)], dim=1)
    garbage = padded.clone()
    garbage[:, 7:] = 3  # even non-pad ids after each length are ignored
    with torch.no_grad():
        features = encoder(tokens, lengths)
        assert features.shape == (3, encoder.output_dim)
        torch.testing.assert_close(encoder(padded, lengths), features, atol=1e-5, rtol=0)
        torch.testing.assert_close(encoder(garbage, lengths), features, atol=1e-5, rtol=0)
        alone = encoder(tokens[1:2, :5], lengths[1:2])  # the row without any padding at all
    torch.testing.assert_close(alone, features[1:2], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["lstm", "transformer-both", "transformer-lm"])
def test_generation_strategies_agree(name):
    """Beam width 1 and top-k 1 are greedy; a seeded sample repeats; a forced
    prefix is kept; wider beams reorder the cache without error."""
    decoder, latent = tiny_decoder(name)
    z = random_z(latent, 3)
    args = (decoder, z, 3, 1, 2)  # bos 1, eos 2

    def run(prefixes=None, seed=None, **settings):
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        return generate(*args, GenerationConfig(max_length=12, **settings), prefixes, generator)

    greedy = run()
    assert run(strategy="beam", beam_size=1) == greedy
    assert run(strategy="sample", top_k=1, seed=3) == greedy
    assert run(strategy="sample", seed=5) == run(strategy="sample", seed=5)
    prefixes = [[5, 6], [7], [8, 9, 10]]
    completed = run(prefixes)
    assert all(row[: len(p)] == p for row, p in zip(completed, prefixes))
    assert run(prefixes, strategy="beam", beam_size=1) == completed
    wide = run(strategy="beam", beam_size=3)
    assert len(wide) == 3 and all(len(row) <= 12 for row in wide)


def test_select_state_reorders_every_cached_tensor():
    decoder, latent = tiny_decoder("transformer-both")
    state = decoder.initial_state(random_z(latent, 3), 3)
    _, state = decoder(random_tokens(3, 4), state)
    picked = decoder.select_state(state, torch.tensor([2, 0]))
    assert picked["offset"] == 4
    for layer in range(2):
        assert picked["keys"][layer].shape[:1] == (2,)
        torch.testing.assert_close(picked["keys"][layer][0], state["keys"][layer][2])
        torch.testing.assert_close(picked["values"][layer][1], state["values"][layer][0])
    torch.testing.assert_close(picked["latent"], state["latent"][[2, 0]])


def test_bad_settings_fail_clearly():
    with pytest.raises(TextVAEError, match="num_heads"):
        build_decoder(model_config(decoder="transformer", num_heads=3), VOCAB, PAD)
    decoder = build_decoder(model_config(decoder="transformer", max_positions=8), VOCAB, PAD)
    with pytest.raises(TextVAEError, match="max_positions"):
        decoder(random_tokens(1, 9), decoder.initial_state(None, 1))
    with pytest.raises(TextVAEError, match="tie_embeddings"):
        build_decoder(model_config(decoder="transformer", embed_dim=8, tie_embeddings=True), VOCAB, PAD)


def train_briefly(model, tokenizer, steps: int = 25) -> tuple[float, float]:
    """Adam on the ELBO over the tiny corpus; mean loss of the first and last 5 steps."""
    from textvae.data import collate

    ids = tokenizer.encode_batch(TRAIN)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    losses = []
    model.train()
    for step in range(steps):
        rows = torch.randperm(len(ids), generator=generator)[:16].tolist()
        out = model(collate([ids[i] for i in rows], rows, tokenizer), generator=generator)
        loss = elbo_loss(out, 0.1, tiny_config().objective)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    return sum(losses[:5]) / 5, sum(losses[-5:]) / 5


@pytest.mark.parametrize("encoder,decoder", [("transformer", "transformer"), ("lstm", "transformer"),
                                             ("transformer", "lstm")])
def test_tiny_vae_trains_saves_and_loads(tmp_path, word_tokenizer, encoder, decoder):
    torch.manual_seed(0)
    config = tiny_config(model={**TINY, "encoder": encoder, "decoder": decoder, "pooling": "attention"})
    model = TextVAE(config, word_tokenizer)
    first, last = train_briefly(model, word_tokenizer)
    assert last < first - 1.0
    model.save_pretrained(tmp_path / "run")
    loaded = TextVAE.from_pretrained(tmp_path / "run")
    batch = model.batch(TRAIN[:4])
    inputs, targets, mask = decoder_io(batch)
    z = model.encode(TRAIN[:4]).mean
    with torch.no_grad():
        expected = model.sequence_log_likelihood(inputs, targets, mask, z)
        torch.testing.assert_close(loaded.sequence_log_likelihood(inputs, targets, mask, z), expected)
    assert loaded.reconstruct(TRAIN[:4]) == model.reconstruct(TRAIN[:4])
    assert loaded.sample(3, seed=1) == model.sample(3, seed=1)


def test_cli_transformer_run(cli, corpus_dir, tmp_path):
    run = tmp_path / "run"
    result = cli("-q", "train", "--data", corpus_dir, "--out", run, *TINY_FLAGS,
                 "--set", "model.encoder=transformer", "--set", "model.decoder=transformer",
                 "--set", "model.num_heads=2", "--set", "model.encoder_layers=2", "--set", "model.decoder_layers=2",
                 "--set", "train.epochs=2")
    assert result.code == 0, result.err
    assert TextVAE.from_pretrained(run).config.model.decoder == "transformer"
    sampled = cli("sample", run, "-n", "3", "--seed", "0")
    assert sampled.code == 0 and len(sampled.out_lines) == 3
    completed = cli("complete", run, "the cat", "-n", "2", "--seed", "0", "--proposals", "16")
    assert completed.code == 0 and all(line.startswith("the cat") for line in completed.out_lines)
    interpolated = cli("interpolate", run, "the cat sat on the mat", "the dog ran to the park", "--steps", "4")
    assert interpolated.code == 0 and len(interpolated.out_lines) == 4
    beam = cli("reconstruct", run, "the cat sat on the mat", "--strategy", "beam", "--beam-size", "3")
    assert beam.code == 0 and len(beam.out_lines) == 1


@pytest.mark.parametrize("preset", ["ptb-lstm", "transformer-small", "hf-backbone"])
def test_presets(preset, word_tokenizer):
    assert preset in list_presets()
    config = build_config(preset)
    if not config.model.decoder.startswith("hf:"):  # the hf preset needs gpt2 from the hub
        config.model.embed_dim = config.model.hidden_dim = 16
        TextVAE(config, word_tokenizer)
