"""Autoencoder pretraining: the first ``ae_pretrain_epochs`` train with no KL
term; then the decoder is re-initialised, the encoder kept, the optimiser
made afresh and the KL schedule started from its beginning."""

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
