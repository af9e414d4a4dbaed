"""TextVAE: output shapes, the per-sentence terms, padding, variants, persistence.

The contract tests run over every encoder and decoder in ``textvae.nn``'s
tables, so a new kind is checked by the same tests.
"""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from textvae.errors import TextVAEError
from textvae.model import TextVAE, decoder_io
from textvae.nn import DECODERS, ENCODERS

from conftest import TRAIN, tiny_config

KINDS = sorted({(e, "lstm") for e in ENCODERS} | {("lstm", d) for d in DECODERS})
SHORT, LONG = "the cat sat", "the children played in the park by the old house"


def build(tokenizer, seed: int = 0, **model) -> TextVAE:
    torch.manual_seed(seed)
    return TextVAE(tiny_config(model=model), tokenizer).eval()


@pytest.fixture(params=KINDS, ids=lambda k: f"{k[0]}-{k[1]}")
def any_model(request, word_tokenizer):
    encoder, decoder = request.param
    return build(word_tokenizer, encoder=encoder, decoder=decoder)


@pytest.mark.parametrize("size", [1, 5])
def test_forward_shapes(any_model, size):
    batch = any_model.batch(TRAIN[:size])
    out = any_model(batch, generator=torch.Generator().manual_seed(0))
    for field in (out.rec, out.kl, out.tokens):
        assert field.shape == (size,)
    for field in (out.kl_per_dim, out.mean, out.logvar):
        assert field.shape == (size, 4)
    assert torch.equal(out.tokens, batch.lengths - 1)  # words + eos
    assert (out.rec > 0).all() and (out.kl >= 0).all()
    assert torch.allclose(out.kl, out.kl_per_dim.sum(-1))
    assert torch.allclose(out.elbo, -(out.rec + out.kl))


def manual_rec(model: TextVAE, text: str, z: torch.Tensor) -> float:
    """-log p(x|z) of one unpadded sentence: the decoder run on bos + words,
    scored on words + eos."""
    tok = model.tokenizer
    framed = torch.tensor([[tok.bos_id, *tok.encode(text), tok.eos_id]])
    hidden, _ = model.decoder(framed[:, :-1], model.decoder.initial_state(z.view(1, -1), 1))
    log_probs = F.log_softmax(model.decoder.output(hidden).float(), -1)[0]  # (T, V)
    return -float(log_probs.gather(1, framed[0, 1:].unsqueeze(1)).sum().detach())


def test_rec_is_the_sum_of_token_losses_including_eos(any_model):
    texts = [SHORT, LONG, "a dog"]
    batch = any_model.batch(texts)
    out = any_model(batch, generator=torch.Generator().manual_seed(3))
    # The same draw of z as the forward pass took.
    q = any_model.posterior(batch)
    z = q.mean + q.std * torch.randn(q.mean.shape, generator=torch.Generator().manual_seed(3))
    for row, text in enumerate(texts):
        assert out.rec[row].item() == pytest.approx(manual_rec(any_model, text, z[row]), rel=1e-5, abs=1e-4)


def test_decoder_io_counts_eos_and_not_bos_or_pad(word_tokenizer):
    model = build(word_tokenizer)
    batch = model.batch([SHORT, "a dog"])
    inputs, targets, mask = decoder_io(batch)
    tok = word_tokenizer
    assert mask.sum(1).tolist() == [4, 3]
    assert (targets[mask] != tok.pad_id).all() and (targets[mask] != tok.bos_id).all()
    assert (targets[mask] == tok.eos_id).sum() == 2
    assert (inputs[:, 0] == tok.bos_id).all()


def test_padding_does_not_change_another_sentence(any_model):
    alone = any_model.batch([SHORT])
    padded = any_model.batch([SHORT, LONG])
    assert padded.tokens.shape[1] > alone.tokens.shape[1]
    q_alone, q_padded = any_model.posterior(alone), any_model.posterior(padded)
    assert torch.allclose(q_alone.mean[0], q_padded.mean[0], atol=1e-5)
    assert torch.allclose(q_alone.logvar[0], q_padded.logvar[0], atol=1e-5)
    z = torch.randn(2, 2, 4, generator=torch.Generator().manual_seed(1))  # (S, B, D)
    ll_alone = any_model.log_likelihood(alone, z[:, :1])
    ll_padded = any_model.log_likelihood(padded, z)
    assert ll_padded.shape == (2, 2)
    assert torch.allclose(ll_alone[:, 0], ll_padded[:, 0], atol=1e-4)


@pytest.mark.parametrize("decoder", sorted(DECODERS))
def test_language_model_without_latent(word_tokenizer, decoder):
    model = build(word_tokenizer, latent_dim=0, decoder=decoder)
    assert not hasattr(model, "encoder")
    batch = model.batch(TRAIN[:3])
    out = model(batch)
    assert out.rec.shape == (3,) and (out.rec > 0).all()
    assert torch.equal(out.kl, torch.zeros(3))
    assert out.kl_per_dim is None and out.mean is None
    assert torch.equal(model(batch).rec, out.rec)  # nothing random without z
    with pytest.raises(TextVAEError, match="latent_dim=0"):
        model.posterior(batch)


@pytest.mark.parametrize("latent_to_decoder", ["init", "input", "both"])
@pytest.mark.parametrize("bidirectional, layers", [(False, 1), (True, 1), (True, 2)])
def test_lstm_variants_use_z(word_tokenizer, latent_to_decoder, bidirectional, layers):
    model = build(word_tokenizer, latent_to_decoder=latent_to_decoder, bidirectional=bidirectional,
                  encoder_layers=layers, decoder_layers=layers)
    batch = model.batch(TRAIN[:4])
    out = model(batch)
    assert out.rec.shape == (4,) and out.mean.shape == (4, 4)
    z = torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(0))
    ll = model.log_likelihood(batch, z)
    assert not torch.allclose(ll[0], ll[1])  # the decoder reads z
    # Gradients reach the encoder through the reparameterised sample.
    model.train()
    (out := model(batch)).rec.mean().add(out.kl.mean()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.lstm.parameters())


def test_word_dropout_only_in_training(word_tokenizer):
    plain = build(word_tokenizer)
    dropped = build(word_tokenizer, word_dropout=0.5)
    dropped.load_state_dict(plain.state_dict())
    batch = plain.batch(TRAIN[:8])

    def rec(model):
        return model(batch, generator=torch.Generator().manual_seed(0)).rec

    assert torch.equal(rec(dropped), rec(dropped))
    assert torch.equal(rec(dropped), rec(plain))  # eval: no dropout at all
    dropped.train()
    assert not torch.equal(rec(dropped), rec(plain))


@pytest.mark.parametrize("shape", [{}, {"bidirectional": True, "encoder_layers": 2, "decoder_layers": 2}],
                         ids=["one-layer", "bidirectional-two-layers"])
def test_weight_drop_masks_recurrent_weights_in_training_only(word_tokenizer, shape):
    plain = build(word_tokenizer, **shape)
    dropped = build(word_tokenizer, weight_drop=0.5, **shape)
    dropped.load_state_dict(plain.state_dict())  # the same parameters, the same keys
    batch = plain.batch(TRAIN[:8])

    def rec(model):
        return model(batch, generator=torch.Generator().manual_seed(0)).rec

    assert torch.equal(rec(dropped), rec(plain))  # eval: whole weights
    dropped.train()
    torch.manual_seed(1)
    first = rec(dropped)
    assert not torch.allclose(first, rec(dropped))  # a fresh mask each pass
    first.sum().backward()
    for lstm in (dropped.encoder.lstm, dropped.decoder.lstm):
        for name in (n for n in lstm._flat_weights_names if n.startswith("weight_hh")):
            grad = getattr(lstm, name).grad  # reaches the parameter, zero where the mask dropped it
            assert grad is not None and 0.3 < (grad == 0).float().mean() < 0.7, name
        # the fused kernel's weight list is the parameters again, so updates reach it
        assert all(w is getattr(lstm, n) for w, n in zip(lstm._flat_weights, lstm._flat_weights_names))
    dropped.eval()
    assert torch.equal(rec(dropped), rec(plain))


def test_batch_validates_text(word_tokenizer):
    model = build(word_tokenizer)
    with pytest.raises(TextVAEError, match="empty"):
        model.batch(["the cat", "  "])
    with pytest.raises(TextVAEError, match="unknown"):
        model.batch(["zebra giraffe"])
    long = " ".join(["the cat"] * 30)
    assert model.batch([long]).lengths.tolist() == [model.config.data.max_length + 2]


def test_save_and_load_give_identical_outputs(any_model, tmp_path):
    any_model.save_pretrained(tmp_path / "run")
    loaded = TextVAE.from_pretrained(tmp_path / "run")
    assert loaded.config == any_model.config
    batch = any_model.batch(TRAIN[:4])
    for name, tensor in any_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    a = any_model(batch, generator=torch.Generator().manual_seed(0))
    b = loaded(batch, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.rec, b.rec) and torch.equal(a.mean, b.mean) and torch.equal(a.logvar, b.logvar)


@pytest.mark.parametrize("damage", ["no_dir", "empty_dir", "no_weights", "no_tokenizer", "bad_json", "image_model",
                                    "other_shape"])
def test_from_pretrained_rejects_what_is_not_a_run(word_tokenizer, tmp_path, damage):
    run = tmp_path / "run"
    build(word_tokenizer).save_pretrained(run)
    if damage == "no_dir":
        run = tmp_path / "missing"
    elif damage == "empty_dir":
        run = tmp_path / "empty"
        run.mkdir()
    elif damage == "no_weights":
        (run / "model.safetensors").unlink()
    elif damage == "no_tokenizer":
        shutil.rmtree(run / "tokenizer")
    elif damage == "bad_json":
        (run / "config.json").write_text("{oops")
    elif damage == "image_model":
        raw = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps({**raw, "kind": "image"}))
    elif damage == "other_shape":  # weights that do not fit the config
        raw = json.loads((run / "config.json").read_text())
        raw["model"]["latent_dim"] = 6
        (run / "config.json").write_text(json.dumps(raw))
    with pytest.raises(TextVAEError):
        TextVAE.from_pretrained(run)


def test_unknown_encoder_name_raises(word_tokenizer):
    with pytest.raises(TextVAEError, match="model.encoder"):
        TextVAE(tiny_config(model={"encoder": "gru"}), word_tokenizer)


def test_dropout_keeps_one_minus_p_scales_the_kept_and_is_the_identity_in_eval():
    from textvae.nn.dropout import Dropout

    torch.manual_seed(0)
    layer = Dropout(0.3)
    x = torch.rand(400, 500) + 0.5  # no zeros of its own
    x.requires_grad_(True)
    y = layer(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.005
    torch.testing.assert_close(y[kept], (x / 0.7)[kept])
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x.bfloat16()).dtype == torch.bfloat16
    layer.eval()
    assert layer(x) is x
    assert Dropout(1.0)(x).abs().sum() == 0


@pytest.mark.parametrize("decoder", sorted(DECODERS))
def test_tied_embeddings_of_another_width_are_a_user_error(word_tokenizer, decoder):
    """Every decoder refuses the same bad config with the one error type (a CLI line, not a traceback)."""
    with pytest.raises(TextVAEError, match="tie_embeddings"):
        build(word_tokenizer, decoder=decoder, tie_embeddings=True, embed_dim=8)
