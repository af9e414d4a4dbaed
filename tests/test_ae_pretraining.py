"""Autoencoder pretraining: the first ``ae_pretrain_epochs`` (or the first
``ae_pretrain_fraction`` of the run) train with no KL term; then the decoder
is re-initialised, the encoder kept, the optimiser made afresh and the KL
schedule started from its beginning. A text model's default has it; a run
saved before the fraction existed, and an image model, do not."""

import copy

import pytest
import torch

from test_aggressive import snapshot
from test_remedies import make_trainer, train_records


def test_ae_pretraining_then_fresh_decoder_and_kept_encoder(word_tokenizer, tmp_path):
    trainer = make_trainer(word_tokenizer, tmp_path / "run", objective={"kl_schedule": "linear", "kl_warmup_steps": 4},
                           epochs=2, ae_pretrain_epochs=1)
    model, first_optimizer = trainer.model, trainer.optimizer
    encoder = [p for n, p in model.named_parameters() if not n.startswith("decoder.")]
    decoder = list(model.decoder.parameters())
    resets = []
    original = model.reset_decoder

    def reset_and_record():
        before = (snapshot(encoder), snapshot(decoder))
        original()
        resets.append((copy.deepcopy(trainer.state), before, (snapshot(encoder), snapshot(decoder))))

    model.reset_decoder = reset_and_record
    trainer.fit()
    per_epoch = trainer.steps_per_epoch

    assert len(resets) == 1
    state, (encoder_before, decoder_before), (encoder_after, decoder_after) = resets[0]
    assert (state.epoch, state.batch, state.step) == (1, 0, per_epoch)
    assert all(not torch.equal(a, b) for a, b in zip(decoder_after, decoder_before))  # re-initialised ...
    assert all(torch.equal(a, b) for a, b in zip(encoder_after, encoder_before))  # ... the encoder kept
    assert trainer.optimizer is not first_optimizer  # fresh Adam state for the VAE phase
    weights = {r["step"]: r["kl_weight"] for r in train_records(tmp_path / "run")}
    assert [weights[s] for s in range(1, per_epoch + 1)] == [0.0] * per_epoch  # epoch 1: no KL term
    # Epoch 2: the schedule starts from its beginning (linear over 4 steps).
    assert [weights[per_epoch + 1 + i] for i in range(per_epoch)] == \
        pytest.approx([min(1.0, i / 4) for i in range(per_epoch)])
    assert trainer.state.phase_start == per_epoch


@pytest.mark.parametrize("fraction, switch", [(0.3, 3), (0.25, 3), (0.5, 5)])
def test_a_fraction_of_the_run_as_an_autoencoder(word_tokenizer, tmp_path, fraction, switch):
    trainer = make_trainer(word_tokenizer, tmp_path / "run", objective={"kl_schedule": "linear", "kl_warmup_steps": 4},
                           epochs=10, max_steps=10, ae_pretrain_fraction=fraction)
    resets = []
    original = trainer.model.reset_decoder
    trainer.model.reset_decoder = lambda: (resets.append(trainer.state.step), original())
    trainer.fit()
    assert resets == [switch] and trainer.state.phase_start == switch  # once, where progress reached the fraction
    weights = [r["kl_weight"] for r in train_records(tmp_path / "run")]
    assert weights == pytest.approx([0.0] * switch + [min(1.0, i / 4) for i in range(10 - switch)])


def test_the_text_default_has_the_phase_and_old_runs_and_images_do_not():
    from textvae.config import Config
    from textvae.errors import TextVAEError
    from textvae.image.config import ImageConfig

    assert Config().train.ae_pretrain_fraction == 0.25 and Config.from_dict({}).train.ae_pretrain_fraction == 0.25
    assert ImageConfig().train.ae_pretrain_fraction == 0.0
    saved = Config.from_dict({"train": {"ae_pretrain_epochs": 0, "lr": 0.01}})  # a config.json written before
    assert saved.train.ae_pretrain_fraction == 0.0
    with pytest.raises(TextVAEError, match="ae_pretrain_fraction"):
        Config.from_dict({"train": {"ae_pretrain_fraction": 1.0}})


def test_no_autoencoder_phase_for_a_language_model(word_tokenizer, tmp_path):
    trainer = make_trainer(word_tokenizer, tmp_path / "run", model={"latent_dim": 0}, epochs=10, max_steps=8,
                           ae_pretrain_fraction=0.5)
    trainer.model.reset_decoder = lambda: pytest.fail("a language model's decoder was reset")
    trainer.fit()
    assert trainer.state.phase_start == 0 and trainer.state.step == 8


def test_the_fraction_counts_the_limit_that_ends_the_run_first(word_tokenizer, tmp_path):
    trainer = make_trainer(word_tokenizer, tmp_path / "run", epochs=2, max_steps=1000, ae_pretrain_fraction=0.5)
    trainer.fit()
    per_epoch = trainer.steps_per_epoch
    assert trainer.total_steps == 2 * per_epoch and trainer.state.step == 2 * per_epoch
    assert trainer.state.phase_start == per_epoch  # half of the two epochs, not of the 1,000 steps


def test_the_autoencoders_validations_neither_decay_nor_stop(word_tokenizer, tmp_path):
    trainer = make_trainer(word_tokenizer, tmp_path / "run", model={"latent_dim": 32}, objective={"free_bits": 0.25},
                           epochs=10, max_steps=12, eval_every=1, lr_patience=1,
                           max_lr_decays=1, early_stop_patience=2, ae_pretrain_fraction=0.5)
    seen = []
    original = trainer.model.reset_decoder
    trainer.model.reset_decoder = lambda: (seen.append((trainer.state.lr, trainer.state.plateau.decays)), original())
    trainer.fit()
    assert seen == [(0.01, 0)]  # six validations of the autoencoder, the rate untouched
    assert trainer.state.phase_start == 6 and trainer.state.stop_reason in ("max_steps", "early_stop", "lr_decays")
    assert trainer.state.step > 6  # the VAE phase ran
