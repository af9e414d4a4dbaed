"""Hugging Face backbones (nn/hf.py) on tiny random GPT-2 and BERT models
saved to disk, with the real gpt2 and bert-base-uncased tokenizers from
../shared/data/tokenizers (skipped without them). Offline throughout."""

import shutil

import pytest
import torch

from textvae.config import ModelConfig, TokenizerConfig
from textvae.errors import TextVAEError
from textvae.generation import GenerationConfig, generate
from textvae.model import TextVAE, decoder_io
from textvae.nn import build_decoder, build_encoder
from textvae.tokenization import build_tokenizer, train_tokenizer

from conftest import SHARED_TOKENIZERS, TINY_FLAGS, TRAIN, tiny_config

pytestmark = pytest.mark.skipif(not (SHARED_TOKENIZERS / "gpt2").is_dir()
                                or not (SHARED_TOKENIZERS / "bert-base-uncased").is_dir(),
                                reason="no shared gpt2 / bert-base-uncased tokenizers")


def save_backbone(model, folder, tokenizer_name: str):
    """A tiny backbone plus its tokenizer's files, as a hub snapshot would be."""
    model.save_pretrained(folder)
    for file in (SHARED_TOKENIZERS / tokenizer_name).iterdir():
        shutil.copy(file, folder / file.name)
    return folder


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    root = tmp_path_factory.mktemp("backbones")
    torch.manual_seed(0)
    gpt2 = GPT2Config(n_embd=16, n_layer=2, n_head=2, n_positions=64)
    bert = BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                      max_position_embeddings=64)
    return {
        "gpt2": save_backbone(GPT2LMHeadModel(gpt2), root / "gpt2", "gpt2"),
        "bert": save_backbone(BertModel(bert), root / "bert", "bert-base-uncased"),
        # GPT-2's tokenizer files beside a model with BERT's vocabulary size
        "odd": save_backbone(GPT2LMHeadModel(GPT2Config(vocab_size=30522, n_embd=16, n_layer=1, n_head=2,
                                                        n_positions=64)), root / "odd", "gpt2"),
    }


@pytest.fixture(scope="module")
def gpt2_tokenizer(backbones):
    return build_tokenizer(TokenizerConfig(spec=str(backbones["gpt2"])))


@pytest.fixture(scope="module")
def bert_tokenizer(backbones):
    return build_tokenizer(TokenizerConfig(spec=str(backbones["bert"])))


def hf_config(**changes) -> ModelConfig:
    return ModelConfig(**{"embed_dim": 16, "hidden_dim": 16, "num_heads": 2, "encoder_layers": 1,
                          "latent_dim": 4, "memory_vectors": 2, **changes})


INJECTIONS = {"embedding": {"latent_injection": "embedding"}, "memory": {"latent_injection": "memory"},
              "both": {"latent_injection": "both"}, "lm": {"latent_dim": 0}}


def gpt2_decoder(backbones, tokenizer, **changes):
    torch.manual_seed(0)
    config = hf_config(decoder=f"hf:{backbones['gpt2']}", **changes)
    return build_decoder(config, tokenizer.vocab_size, tokenizer.pad_id).eval(), config.latent_dim


def some_z(latent: int, batch: int):
    return torch.randn(batch, latent, generator=torch.Generator().manual_seed(1)) if latent else None


def some_tokens(batch: int, length: int, high: int = 50257) -> torch.Tensor:
    return torch.randint(0, high, (batch, length), generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("injection", INJECTIONS)
def test_gpt2_cached_steps_equal_full_forward(backbones, gpt2_tokenizer, injection):
    decoder, latent = gpt2_decoder(backbones, gpt2_tokenizer, **INJECTIONS[injection])
    assert decoder.output.weight.shape[0] == gpt2_tokenizer.vocab_size  # resized for <pad> and <unk>
    z, tokens = some_z(latent, 3), some_tokens(3, 8)
    with torch.no_grad():
        full, _ = decoder(tokens, decoder.initial_state(z, 3))
        hidden, state = decoder(tokens[:, :3], decoder.initial_state(z, 3))
        pieces = [hidden]
        for t in range(3, 8):
            hidden, state = decoder(tokens[:, t: t + 1], state)
            pieces.append(hidden)
    torch.testing.assert_close(decoder.output(torch.cat(pieces, 1)), decoder.output(full), atol=1e-5, rtol=0)
    if latent:  # z does reach the outputs
        other, _ = decoder(tokens, decoder.initial_state(z + 1.0, 3))
        assert not torch.allclose(other, full)


def test_gpt2_later_tokens_and_padding_never_change_earlier_outputs(backbones, gpt2_tokenizer):
    decoder, latent = gpt2_decoder(backbones, gpt2_tokenizer)
    z, tokens = some_z(latent, 2), some_tokens(2, 8)
    changed = tokens.clone()
    changed[:, 5:] = 7
    padded = torch.cat([tokens, torch.full((2, 3), gpt2_tokenizer.pad_id)], dim=1)
    with torch.no_grad():
        base, _ = decoder(tokens, decoder.initial_state(z, 2))
        after_change, _ = decoder(changed, decoder.initial_state(z, 2))
        after_padding, _ = decoder(padded, decoder.initial_state(z, 2))
    torch.testing.assert_close(after_change[:, :5], base[:, :5], atol=1e-6, rtol=0)
    torch.testing.assert_close(after_padding[:, :8], base, atol=1e-6, rtol=0)


@pytest.mark.parametrize("pooling", ["first", "mean", "attention"])
def test_bert_encoder_features_ignore_padding(backbones, bert_tokenizer, pooling):
    torch.manual_seed(0)
    encoder = build_encoder(hf_config(encoder=f"hf:{backbones['bert']}", pooling=pooling),
                            bert_tokenizer.vocab_size, bert_tokenizer.pad_id).eval()
    assert encoder.output_dim == 16
    lengths = torch.tensor([6, 4])
    tokens = some_tokens(2, 6, high=30522)
    tokens[torch.arange(6) >= lengths.unsqueeze(1)] = bert_tokenizer.pad_id
    padded = torch.cat([tokens, torch.full((2, 4), bert_tokenizer.pad_id)], dim=1)
    with torch.no_grad():
        features = encoder(tokens, lengths)
        torch.testing.assert_close(encoder(padded, lengths), features, atol=1e-5, rtol=0)
        torch.testing.assert_close(encoder(tokens[1:, :4], lengths[1:]), features[1:], atol=1e-5, rtol=0)


def test_gpt2_generation_strategies_agree(backbones, gpt2_tokenizer):
    decoder, latent = gpt2_decoder(backbones, gpt2_tokenizer)
    tok = gpt2_tokenizer

    def run(seed=None, prefixes=None, **settings):
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        settings = GenerationConfig(max_length=8, **settings)
        return generate(decoder, some_z(latent, 3), 3, tok.bos_id, tok.eos_id, settings, prefixes, generator)

    greedy = run()
    assert run(strategy="beam", beam_size=1) == greedy
    assert run(strategy="sample", top_k=1, seed=0) == greedy
    assert run(strategy="sample", seed=4) == run(strategy="sample", seed=4)
    prefixes = [[464, 3797], [32], [464, 3290, 3332]]
    assert all(row[: len(p)] == p for row, p in zip(run(prefixes=prefixes), prefixes))
    assert len(run(strategy="beam", beam_size=3)) == 3


def train_steps(model, tokenizer, steps: int) -> list[float]:
    from textvae.data import collate
    from textvae.objectives import elbo_loss

    ids = tokenizer.encode_batch(TRAIN)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    losses = []
    model.train()
    for _ in range(steps):
        rows = torch.randperm(len(ids), generator=generator)[:16].tolist()
        loss = elbo_loss(model(collate([ids[i] for i in rows], rows, tokenizer), generator=generator), 0.1,
                         tiny_config().objective)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


@pytest.mark.parametrize("pair", ["transformer+gpt2", "bert+lstm"])
def test_tiny_backbone_vae_trains_and_reloads_offline(backbones, gpt2_tokenizer, bert_tokenizer, tmp_path, pair):
    """Trains; save_pretrained, then from_pretrained with the backbone folder
    gone (config from the run, weights from its safetensors): same outputs."""
    encoder, decoder = pair.split("+")
    name = "gpt2" if decoder == "gpt2" else "bert"
    tokenizer = gpt2_tokenizer if name == "gpt2" else bert_tokenizer
    folder = shutil.copytree(backbones[name], tmp_path / name)
    spec = {"encoder": encoder if encoder != "bert" else f"hf:{folder}",
            "decoder": decoder if decoder != "gpt2" else f"hf:{folder}"}
    torch.manual_seed(0)
    model = TextVAE(tiny_config(model={**hf_config().__dict__, **spec}), tokenizer)
    losses = train_steps(model, tokenizer, 15)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0
    model.save_pretrained(tmp_path / "run")
    shutil.rmtree(folder)
    loaded = TextVAE.from_pretrained(tmp_path / "run")
    batch = model.batch(TRAIN[:4])
    inputs, targets, mask = decoder_io(batch)
    with torch.no_grad():
        z = model.encode(TRAIN[:4]).mean
        torch.testing.assert_close(loaded.encode(TRAIN[:4]).mean, z)
        torch.testing.assert_close(loaded.sequence_log_likelihood(inputs, targets, mask, z),
                                   model.sequence_log_likelihood(inputs, targets, mask, z))
    assert loaded.sample(2, seed=0, max_length=6) == model.sample(2, seed=0, max_length=6)


def test_freeze_backbone_trains_only_the_latent_projections(backbones, gpt2_tokenizer):
    torch.manual_seed(0)
    config = tiny_config(model={**hf_config().__dict__, "encoder": "transformer",
                                "decoder": f"hf:{backbones['gpt2']}", "freeze_backbone": True})
    model = TextVAE(config, gpt2_tokenizer)
    backbone = {k: v.clone() for k, v in model.decoder.backbone.state_dict().items()}
    assert not any(p.requires_grad for p in model.decoder.backbone.parameters())
    assert model.decoder.latent_to_memory.weight.requires_grad
    before = model.decoder.latent_to_embedding.weight.clone()
    train_steps(model, gpt2_tokenizer, 2)
    assert all(torch.equal(v, model.decoder.backbone.state_dict()[k]) for k, v in backbone.items())
    assert not torch.equal(before, model.decoder.latent_to_embedding.weight)


def test_wrong_tokenizer_is_refused(backbones, gpt2_tokenizer, bert_tokenizer):
    gpt2, bert, odd = (f"hf:{backbones[k]}" for k in ("gpt2", "bert", "odd"))
    word = train_tokenizer("word", TRAIN, TokenizerConfig())
    cases = [({"decoder": gpt2}, bert_tokenizer, "30,522 tokens and the backbone 50,257"),  # too few ids
             ({"decoder": gpt2}, word, "needs the backbone's own tokenizer"),
             ({"encoder": bert}, gpt2_tokenizer, "ordinary tokens"),  # more ids, and not just added specials
             ({"decoder": odd}, bert_tokenizer, "other ids")]  # same size, another vocabulary
    for spec, tokenizer, message in cases:
        with pytest.raises(TextVAEError, match=message):
            TextVAE(tiny_config(model={**hf_config().__dict__, **spec}), tokenizer)


def test_bad_backbone_names(tmp_path, gpt2_tokenizer):
    with pytest.raises(TextVAEError, match="names no backbone"):
        TextVAE(tiny_config(model={"decoder": "hf:"}), gpt2_tokenizer)
    with pytest.raises(TextVAEError, match="cannot load model.decoder=hf:"):
        TextVAE(tiny_config(model={"decoder": f"hf:{tmp_path / 'missing'}"}), gpt2_tokenizer)


def test_cli_gpt2_run_reloads_offline(cli, corpus_dir, backbones, tmp_path):
    folder = shutil.copytree(backbones["gpt2"], tmp_path / "gpt2")
    run = tmp_path / "run"
    result = cli("-q", "train", "--data", corpus_dir, "--out", run, *TINY_FLAGS, "--tokenizer", folder,
                 "--set", f"model.decoder=hf:{folder}", "--set", "model.encoder=transformer",
                 "--set", "model.num_heads=2", "--set", "train.epochs=1")
    assert result.code == 0, result.err
    assert (run / "backbone_decoder" / "config.json").exists()
    shutil.rmtree(folder)
    sampled = cli("sample", run, "-n", "2", "--seed", "0", "--max-length", "6")
    assert sampled.code == 0 and len(sampled.out_lines) == 2, sampled.err
    completed = cli("complete", run, "the cat", "-n", "2", "--seed", "0", "--proposals", "8", "--max-length", "6")
    assert completed.code == 0 and all(line.startswith("the cat") for line in completed.out_lines)


def test_a_pretrained_decoder_gets_no_fresh_decoder_by_default(backbones, gpt2_tokenizer):
    """The default AE phase (train.ae_pretrain_fraction) would wipe the pretrained weights: it does not apply."""
    hf = TextVAE(tiny_config(model={**hf_config().__dict__, "encoder": "transformer",
                                    "decoder": f"hf:{backbones['gpt2']}"}), gpt2_tokenizer)
    ours = TextVAE(tiny_config(model=hf_config(decoder="transformer").__dict__), gpt2_tokenizer)
    assert not hf.fresh_decoder_helps and ours.fresh_decoder_helps
