"""The collapse monitor: two collapsed validations in a row (KL near zero or
no active unit) give one warning a run, which suggests only the remedies not
in use; a healthy model, autoencoder pretraining (KL weight 0) and collapsed
validations that are not in a row give none, and a run forced to collapse
warns once."""

import pytest

from test_remedies import make_trainer


COLLAPSED = [{"kl": 0.01, "au": 0}, {"kl": 0.05, "au": 2}, {"kl": 3.0, "au": 0}]
HEALTHY = {"kl": 5.0, "au": 4}


def collapse_warnings(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if "posterior collapse" in line]


@pytest.mark.parametrize("collapsed", COLLAPSED, ids=["kl-and-au", "kl", "au"])
def test_collapse_warning_after_two_collapsed_evaluations_and_only_once(word_tokenizer, tmp_path, capsys, collapsed):
    trainer = make_trainer(word_tokenizer, tmp_path / "run")
    capsys.readouterr()
    for result in (HEALTHY, HEALTHY, collapsed, HEALTHY, collapsed):  # never two in a row
        trainer.collapse_monitor.after_validation(result)
    assert collapse_warnings(capsys) == []
    trainer.collapse_monitor.after_validation(collapsed)  # the second in a row
    warnings = collapse_warnings(capsys)
    assert len(warnings) == 1
    assert warnings[0].startswith("textvae: warning: posterior collapse at step 0: ")
    assert f"KL {collapsed['kl']:.3f} nats per example, {collapsed['au']} active units" in warnings[0]
    assert "model.bn_vae_gamma" in warnings[0] and "train.aggressive=true" in warnings[0]
    for result in (collapsed, collapsed, HEALTHY, collapsed, collapsed):
        trainer.collapse_monitor.after_validation(result)
    assert collapse_warnings(capsys) == []  # only once per run


def test_no_collapse_warning_for_a_healthy_model_or_during_ae_pretraining(word_tokenizer, tmp_path, capsys):
    healthy = make_trainer(word_tokenizer, tmp_path / "a")
    pretraining = make_trainer(word_tokenizer, tmp_path / "b", ae_pretrain_epochs=1)
    capsys.readouterr()
    for _ in range(5):
        healthy.collapse_monitor.after_validation(HEALTHY)
        pretraining.collapse_monitor.after_validation(COLLAPSED[0])  # the KL weight is 0: collapse is expected
    assert collapse_warnings(capsys) == []


def test_collapse_warning_suggests_only_remedies_not_in_use(word_tokenizer, tmp_path, capsys):
    trainer = make_trainer(word_tokenizer, tmp_path / "run", model={"bn_vae_gamma": 0.5},
                           objective={"free_bits": 0.5})
    capsys.readouterr()
    for _ in range(2):
        trainer.collapse_monitor.after_validation(COLLAPSED[0])
    (warning,) = collapse_warnings(capsys)
    assert "train.aggressive=true" in warning and "model.word_dropout" in warning
    assert "bn_vae_gamma" not in warning and "free_bits" not in warning


def test_a_run_forced_to_collapse_warns_once(word_tokenizer, tmp_path, capsys):
    def prior_encoder(model):  # q(z|x) = N(0, I) whatever x: KL 0, no active unit
        for param in model.posterior_head.parameters():
            param.data.zero_()
            param.requires_grad_(False)

    trainer = make_trainer(word_tokenizer, tmp_path / "run", prepare=prior_encoder, max_steps=6, epochs=10,
                           eval_every=2)
    capsys.readouterr()
    trainer.fit()
    warnings = collapse_warnings(capsys)
    assert len(warnings) == 1 and "at step 4: KL 0.000 nats per example, 0 active units" in warnings[0]
