"""Each posterior-collapse remedy changes what it claims on a tiny model:
free bits, BN-VAE, delta-VAE, aggressive training, autoencoder pretraining,
the collapse monitor, and the KL schedule as the trainer applies it.

(The schedules' shapes and free_bits_kl on hand-made numbers are in
test_latent_objectives.py; here they go through the model and the trainer.)
"""

import copy
import json

import pytest
import torch

from textvae.config import ObjectiveConfig
from textvae.data import TextBatches, collate, tokenize_split
from textvae.model import TextVAE
from textvae.objectives import VAEOutput, elbo_loss
from textvae.training import aggressive
from textvae.training.trainer import Trainer

from conftest import TRAIN, VALID, tiny_config


def build_model(tokenizer, seed: int = 0, **model) -> TextVAE:
    torch.manual_seed(seed)
    return TextVAE(tiny_config(model=model), tokenizer)


def make_trainer(tokenizer, run_dir, model=None, objective=None, texts=TRAIN, prepare=None, **train) -> Trainer:
    """A Trainer on the tiny corpus; ``prepare(model)`` runs before the
    optimiser is built (e.g. to freeze parameters)."""
    config = tiny_config(model=model or {}, objective=objective or {}, train=train)
    torch.manual_seed(config.train.seed)
    vae = TextVAE(config, tokenizer)
    if prepare:
        prepare(vae)
    train_split = tokenize_split("train", texts, tokenizer, config.data.max_length)
    valid_split = tokenize_split("valid", VALID, tokenizer, config.data.max_length)
    train_data = TextBatches(train_split, tokenizer, config.train.batch_size, config.train.seed, True,
                             config.data.bucket_batches)
    valid_data = TextBatches(valid_split, tokenizer, config.train.eval_batch_size, shuffle=False)
    run_dir.mkdir()
    return Trainer(vae, config.train, config.objective, train_data, valid_data, run_dir)


def train_records(run_dir, split: str = "train") -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def random_batch(tokenizer, size: int = 16, seed: int = 0):
    """Random sentences of 1-10 ordinary tokens (no bos/eos/pad/unk inside)."""
    g = torch.Generator().manual_seed(seed)
    specials = {tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id}
    words = torch.tensor([i for i in range(tokenizer.vocab_size) if i not in specials])
    ids = [words[torch.randint(len(words), (int(n),), generator=g)].tolist()
           for n in torch.randint(1, 11, (size,), generator=g)]
    return collate(ids, range(size), tokenizer)


def snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def unchanged(params, before) -> bool:
    return all(torch.equal(p, b) for p, b in zip(params, before))


def all_changed(params, before) -> bool:
    return all(not torch.equal(p, b) for p, b in zip(params, before))


# ------------------------------------------------------------ free bits
def posterior_outputs(model, batch):
    """forward() with q(z|x)'s mean and logvar kept for gradients: (output, q)."""
    captured = {}

    def keep(module, inputs, q):
        captured["q"] = q

    handle = model.posterior_head.register_forward_hook(keep)
    out = model(batch, generator=torch.Generator().manual_seed(0))
    handle.remove()
    return out, captured["q"]


@pytest.mark.parametrize("mode", ["dim_batch", "dim_example", "total"])
def test_free_bits_hold_the_kl_term_at_the_floor(word_tokenizer, mode):
    model = build_model(word_tokenizer).eval()
    with torch.no_grad():  # dimensions 0 and 1 carry information, 2 and 3 stay near the prior
        model.posterior_head.proj.weight[:2] *= 30.0
        model.posterior_head.proj.bias[:2] = torch.tensor([1.5, 0.5])
    out, q = posterior_outputs(model, random_batch(word_tokenizer, 12))
    kl = out.kl_per_dim.detach()  # (B, D)
    if mode == "dim_batch":
        floor = 0.3
        below = (kl.mean(0, keepdim=True) < floor).expand_as(kl)  # whole dimensions
        assert ((kl < floor) & ~below).any()  # examples under the floor in a dimension above it keep their gradient
        expected = kl.mean(0).clamp(min=floor).sum()
    elif mode == "dim_example":
        floor = 0.3
        below = kl < floor
        assert (below & (kl.mean(0) > floor)).any()  # ... even in a dimension whose batch mean is above it
        expected = kl.clamp(min=floor).sum(-1).mean()
    else:
        floor = float(kl.sum(-1).median())  # half the examples under their KL target
        below = (kl.sum(-1) < floor).unsqueeze(1).expand_as(kl)  # whole examples
        expected = kl.sum(-1).clamp(min=floor).mean()
    assert below.any() and not below.all()

    beta = 0.7
    config = ObjectiveConfig(free_bits=floor, free_bits_mode=mode)
    # The reconstruction term is held fixed, so the gradient is the KL term's.
    loss = elbo_loss(VAEOutput(rec=out.rec.detach(), kl=out.kl, kl_per_dim=out.kl_per_dim), beta, config)
    assert float(loss.detach()) == pytest.approx(float(out.rec.detach().mean() + beta * expected), rel=1e-6)
    mean_grad, logvar_grad = torch.autograd.grad(loss, [q.mean, q.logvar], retain_graph=True)
    assert (mean_grad[below] == 0).all() and (logvar_grad[below] == 0).all()
    assert (mean_grad[~below] != 0).all()
    # Without the floor every dimension is pushed towards the prior.
    plain = elbo_loss(VAEOutput(rec=out.rec.detach(), kl=out.kl, kl_per_dim=out.kl_per_dim), beta, ObjectiveConfig(free_bits=0.0))
    assert (torch.autograd.grad(plain, q.mean)[0] != 0).all()


# --------------------------------------------------------------- BN-VAE
def bn_vae_bound(model, batch, gamma: float) -> None:
    """In training mode each dimension's batch mean of mean_d^2 is at least
    gamma^2 var/(var + eps) (var: the batch variance before the normalisation),
    and since KL_d = 0.5 (mean_d^2 + v - log v - 1) >= 0.5 mean_d^2, the batch
    mean KL is at least sum_d of half of that, about D gamma^2 / 2."""
    raw = {}
    handle = model.posterior_head.proj.register_forward_hook(lambda m, i, o: raw.update(out=o.detach()))
    model.train()
    with torch.no_grad():
        out = model(batch, generator=torch.Generator().manual_seed(0))
    handle.remove()
    pre_bn = raw["out"].float()[:, :model.latent_dim]
    variance = pre_bn.var(0, unbiased=False)
    eps = model.posterior_head.mean_norm.eps
    floor = gamma ** 2 * variance / (variance + eps)  # (D,)
    square = out.mean.pow(2).mean(0)  # (D,)
    assert (square >= floor * (1 - 1e-4)).all(), (square, floor)
    assert (floor > 0.95 * gamma ** 2).all()  # eps matters little here
    assert float(out.kl.mean()) >= 0.5 * float(square.sum()) - 1e-5
    assert float(out.kl.mean()) >= 0.95 * model.latent_dim * gamma ** 2 / 2


def test_bn_vae_keeps_the_kl_above_its_bound(word_tokenizer, tmp_path):
    gamma = 0.6
    batch = random_batch(word_tokenizer, 16)
    plain = build_model(word_tokenizer).train()
    with torch.no_grad():
        assert float(plain(batch).kl.mean()) < 0.5 * 4 * gamma ** 2 / 2  # without BN: far below the bound
    bn_vae_bound(build_model(word_tokenizer, bn_vae_gamma=gamma), batch, gamma)

    trainer = make_trainer(word_tokenizer, tmp_path / "run", model={"bn_vae_gamma": gamma}, max_steps=6, epochs=10)
    trainer.fit()
    assert trainer.model.posterior_head.mean_shift.abs().sum() > 0  # the learned shift has moved
    bn_vae_bound(trainer.model, random_batch(word_tokenizer, 16, seed=1), gamma)
    bn_vae_bound(trainer.model, collate([word_tokenizer.encode(t) for t in TRAIN[:8]], range(8), word_tokenizer),
                 gamma)


def test_bn_vae_trains_through_a_batch_of_one(word_tokenizer, tmp_path):
    """49 sentences in batches of 8 end with a batch of one, which has no batch
    statistics: the running ones normalise it instead of BatchNorm raising."""
    model = build_model(word_tokenizer, bn_vae_gamma=0.5).train()
    one = model.batch(TRAIN[:1])
    out = model(one)
    head = model.posterior_head
    raw_mean = head.proj(model.encoder(one.tokens, one.lengths))[:, :model.latent_dim]
    expected = head.bn_gamma * head.mean_norm.eval()(raw_mean) + head.mean_shift
    assert torch.allclose(out.mean, expected, atol=1e-6)

    trainer = make_trainer(word_tokenizer, tmp_path / "run", model={"bn_vae_gamma": 0.5}, texts=TRAIN[:49], epochs=1)
    sizes = [len(b) for b in trainer.train_data.iterate(0)]
    assert 1 in sizes
    assert trainer.fit().step == len(sizes)


# ------------------------------------------------------------ delta-VAE
def test_delta_vae_keeps_every_dimension_above_delta(word_tokenizer):
    delta = 0.2
    batch = random_batch(word_tokenizer, 16)
    with torch.no_grad():
        plain = build_model(word_tokenizer).eval()(batch).kl_per_dim
        assert (plain < delta).any()  # without the remedy some dimensions sit near the prior
        model = build_model(word_tokenizer, delta=delta)
        for mode in (model.train, model.eval):
            mode()
            assert (model(batch).kl_per_dim >= delta - 1e-4).all()
        for scale in (100.0, -100.0):  # saturate the variance at either end of its interval
            model.posterior_head.proj.weight.mul_(scale)
            kl = model(batch).kl_per_dim
            assert (kl >= delta - 1e-4).all()
            model.posterior_head.proj.weight.div_(scale)
        model.posterior_head.proj.weight.zero_()
        model.posterior_head.proj.bias.fill_(50.0)  # mean far out, variance at its upper end
        model.posterior_head.proj.bias[:4] = 0.0  # mean 0: the KL is exactly the committed rate
        assert model(batch).kl_per_dim == pytest.approx(torch.full((16, 4), delta), abs=1e-4)


# ------------------------------------------------------ aggressive training
def test_aggressive_training_runs_encoder_only_inner_loops(word_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(aggressive, "CHECK_EVERY", 2)
    trainer = make_trainer(word_tokenizer, tmp_path / "run", max_steps=4, epochs=10, aggressive=True,
                           aggressive_max_inner=10)
    state = trainer.fit()
    inner = [r["inner_steps"] for r in train_records(tmp_path / "run")]
    assert len(inner) == 4 and state.aggressive.inner_steps == sum(inner) > 0
    # Each outer step: at least two windows of CHECK_EVERY steps (the first
    # always improves on nothing), whole windows only, at most the maximum.
    assert all(4 <= n <= 10 and (n % 2 == 0 or n == 10) for n in inner), inner
    assert min(inner) < 10  # some inner loop stopped when its loss stopped falling
    assert state.aggressive.active  # no validation yet: the phase goes on


@pytest.fixture
def aggressive_trainer(word_tokenizer, tmp_path):
    return make_trainer(word_tokenizer, tmp_path / "run", aggressive=True, aggressive_max_inner=3)


@pytest.mark.parametrize("losses, expected", [
    ([5, 5, 4, 4, 3, 3, 3.5, 3.5, 1, 1, 1, 1], 8),  # the fourth window's mean rose: stop after it
    ([5, 5, 4, 4, 4, 4, 1, 1], 6),  # a flat window also stops
    ([9, 8, 7, 6, 5, 4, 3, 2, 1, 0, -1, -2, -3], 10),  # always falling: the maximum
])
def test_inner_loop_stops_when_the_loss_stops_falling(aggressive_trainer, monkeypatch, losses, expected):
    monkeypatch.setattr(aggressive, "CHECK_EVERY", 2)
    aggressive_trainer.config.aggressive_max_inner = 10
    steps = aggressive_trainer.aggressive
    scripted = iter(losses)
    monkeypatch.setattr(steps, "_next_batch", lambda: None)
    monkeypatch.setattr(aggressive_trainer, "train_step", lambda batch, beta, frozen=(): {"loss": next(scripted)})
    assert steps.update_encoder(1.0) == expected


def test_aggressive_updates_touch_only_their_own_parameters(aggressive_trainer):
    steps = aggressive_trainer.aggressive
    assert steps.decoder_params and steps.encoder_params
    names = {id(p): n for n, p in aggressive_trainer.model.named_parameters()}
    assert all(names[id(p)].startswith("decoder.") for p in steps.decoder_params)
    assert any(names[id(p)].startswith("posterior_head.") for p in steps.encoder_params)

    encoder, decoder = snapshot(steps.encoder_params), snapshot(steps.decoder_params)
    assert steps.update_encoder(1.0) == 3  # CHECK_EVERY = 15 > max: runs to the maximum
    assert unchanged(steps.decoder_params, decoder)
    assert all_changed(steps.encoder_params, encoder)

    encoder, decoder = snapshot(steps.encoder_params), snapshot(steps.decoder_params)
    batch = next(aggressive_trainer.train_data.iterate(0))
    aggressive_trainer.train_step(batch, 1.0, frozen=steps.encoder_params)  # the outer decoder step
    assert unchanged(steps.encoder_params, encoder)
    assert all_changed([p for p in steps.decoder_params if p.grad is not None],
                       [d for p, d in zip(steps.decoder_params, decoder) if p.grad is not None])


def test_aggressive_phase_ends_when_validation_mi_falls(aggressive_trainer):
    trainer, steps = aggressive_trainer, aggressive_trainer.aggressive
    for mi in (0.5, 0.7, 0.7):
        steps.after_validation({"mi": mi})
        assert trainer.state.aggressive.active
    steps.after_validation({"elbo": -10.0})  # no MI (a language model): no decision
    assert trainer.state.aggressive.active
    steps.after_validation({"mi": 0.6})
    assert not trainer.state.aggressive.active
    before = trainer.state.aggressive.inner_steps
    logs = steps.step(next(trainer.train_data.iterate(0)), 1.0)  # now a plain joint step
    assert "inner_steps" not in logs and trainer.state.aggressive.inner_steps == before


def test_aggressive_phase_validates_at_its_own_cadence(word_tokenizer, tmp_path, monkeypatch):
    """Validation every aggressive_eval_every steps while the phase lasts, then
    once an epoch (eval_every=0): 50 sentences in batches of 8 are 7 steps an epoch."""
    monkeypatch.setattr(aggressive, "CHECK_EVERY", 1)
    trainer = make_trainer(word_tokenizer, tmp_path / "run", epochs=3, aggressive=True, aggressive_max_inner=2,
                           aggressive_eval_every=2)
    mis = iter([0.5, 0.7, 0.6, 0.9, 0.9, 0.9])  # the third validation ends the phase
    monkeypatch.setattr(trainer, "evaluate", lambda: {"elbo": -50.0, "rec": 45.0, "kl": 5.0, "au": 4,
                                                         "au_variances": [1.0] * 4, "mi": next(mis)})
    trainer.fit()
    valid_steps = [r["step"] for r in train_records(tmp_path / "run", "valid")]
    assert valid_steps == [2, 4, 6, 7, 14, 21]
    assert not trainer.state.aggressive.active


def test_aggressive_phase_ends_at_its_step_cap(word_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(aggressive, "CHECK_EVERY", 1)
    trainer = make_trainer(word_tokenizer, tmp_path / "run", max_steps=6, epochs=10, aggressive=True,
                           aggressive_max_inner=2, aggressive_max_steps=3)
    state = trainer.fit()
    assert not state.aggressive.active
    assert [r.get("inner_steps") for r in train_records(tmp_path / "run")] == [2, 2, 2, None, None, None]


# --------------------------------------------------- autoencoder pretraining
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


# ------------------------------------------------------- collapse monitor
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


# -------------------------------------------------- the schedule in training
def test_cyclical_kl_weight_restarts_each_cycle_of_the_run(word_tokenizer, tmp_path):
    trainer = make_trainer(word_tokenizer, tmp_path / "run", max_steps=8, epochs=10,
                           objective={"kl_schedule": "cyclical", "kl_cycles": 2, "kl_cycle_ratio": 0.5})
    trainer.fit()
    # max_steps=8 and 2 cycles: 4 steps each, rising over the first 2.
    assert [r["kl_weight"] for r in train_records(tmp_path / "run")] == \
        pytest.approx([0.0, 0.5, 1.0, 1.0, 0.0, 0.5, 1.0, 1.0])


@pytest.mark.parametrize("free_bits, in_use", [(None, True), (0.0, False)], ids=["defaults", "plain-vae"])
def test_a_model_trained_with_the_defaults_keeps_its_latent_in_use(shared_corpus, tmp_path, free_bits, in_use):
    """No --config: the default recipe (BN-VAE + free bits) keeps KL clear of zero,
    where the plain VAE collapses on the same data and steps (as the PTB
    table's `vae` row did: KL 0.01, no active unit)."""
    from textvae.cli import main

    run = tmp_path / "run"
    sizes = ["--set", "model.embed_dim=16", "--set", "model.hidden_dim=16", "--set", "model.latent_dim=4",
             "--set", "train.batch_size=8", "--set", "train.max_steps=40", "--set", "train.eval_every=20",
             "--set", "train.lr=0.01", "--set", "train.log_every=5"]
    sizes += [] if free_bits is None else ["--set", f"objective.free_bits={free_bits}", "--set", "model.bn_vae_gamma=0"]
    assert main(["-q", "train", "--data", str(shared_corpus), "--out", str(run), *sizes]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in records if r["split"] == "valid"][-1]
    if in_use:
        assert final["kl"] > 0.5 and final["au"] >= 2
    else:
        assert final["kl"] < 0.1 and final["au"] == 0
