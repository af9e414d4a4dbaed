"""Each posterior-collapse remedy changes what it claims on a tiny model:
free bits, BN-VAE and delta-VAE, and the KL schedule as the trainer applies
it; trained with the defaults, a model keeps its latent in use where a plain
VAE collapses. The helpers here (``make_trainer``, ``train_records``) serve
the remedies' other files too: aggressive training, autoencoder pretraining
and the collapse monitor.

(The schedules' shapes and free_bits_kl on hand-made numbers are in
test_latent_objectives.py; here they go through the model and the trainer.)
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from textvae.config import ObjectiveConfig
from textvae.data import TextBatches, collate, tokenize_split
from textvae.model import TextVAE, decoder_io
from textvae.objectives import VAEOutput, elbo_loss, mmd_to_normal
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


# ------------------------------------------------------------ bag of words
def test_the_bag_of_words_loss_is_the_heads_nll_of_every_target_token(word_tokenizer):
    """Zhao et al. 2017: one distribution f(z) over the vocabulary per
    sentence; the loss sums -log f(z)[w] over the sentence's targets (eos
    included, padding not), and the training loss adds it with its weight."""
    torch.manual_seed(0)
    config = tiny_config(objective={"bow_weight": 0.5})
    model = TextVAE(config, word_tokenizer)
    batch = random_batch(word_tokenizer)
    z = torch.randn(len(batch.lengths), config.model.latent_dim)
    _, targets, mask = decoder_io(batch)
    got = model.bag_of_words_nll(z, targets, mask)
    for i, length in enumerate(batch.lengths.tolist()):
        log_probs = torch.log_softmax(model.bow_head(z[i]), -1)
        words = batch.tokens[i, 1:length]  # after bos, through eos
        assert got[i].item() == pytest.approx(-log_probs[words].sum().item(), rel=1e-5)
    out = model(batch)
    assert out.bow.shape == out.rec.shape and (out.bow > 0).all()
    expected = (out.rec + 0.7 * out.kl + 0.5 * out.bow).mean()
    assert elbo_loss(out, 0.7, config.objective).item() == pytest.approx(expected.item(), rel=1e-6)
    assert TextVAE(tiny_config(), word_tokenizer)(batch).bow is None  # off by default: no head, no term


def test_training_with_the_bag_of_words_loss_lowers_it_and_keeps_the_head(word_tokenizer, tmp_path):
    trainer = make_trainer(word_tokenizer, tmp_path / "run", max_steps=40, epochs=100, log_every=10,
                           objective={"bow_weight": 1.0})
    trainer.fit()
    bow = [r["bow"] for r in train_records(tmp_path / "run")]
    assert len(bow) == 4 and bow[-1] < 0.9 * bow[0]
    saved = load_file(tmp_path / "run" / "model.safetensors")  # the head is kept with the weights
    assert saved["bow_head.weight"].shape == (word_tokenizer.vocab_size, 4)


# ------------------------------------------------------------------ WAE-MMD
def test_the_mmd_term_pulls_an_autoencoders_codes_onto_the_prior(word_tokenizer, tmp_path):
    """With no KL (an autoencoder), the codes drift wherever reconstruction
    likes; the MMD term (Tolstikhin et al. 2018) brings their distribution to
    N(0, I), measured on the validation sentences' codes."""
    mismatch = {}
    for weight in (0.0, 20.0):
        trainer = make_trainer(word_tokenizer, tmp_path / f"run{weight}", max_steps=60, epochs=100, log_every=20,
                               objective={"kl_weight": 0.0, "mmd_weight": weight})
        trainer.fit()
        texts = VALID * 4
        with torch.no_grad():
            codes = trainer.model.encode(texts).sample(generator=torch.Generator().manual_seed(0))
        mismatch[weight] = mmd_to_normal(codes, generator=torch.Generator().manual_seed(1)).item()
        logged = [r.get("mmd") for r in train_records(tmp_path / f"run{weight}")]
        assert all(m is not None for m in logged) == (weight > 0)
    assert mismatch[20.0] < 0.5 * mismatch[0.0]


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
    """No --config: the default recipe (AE pretraining over the first quarter
    of the run, then a fresh decoder with free bits) keeps KL clear of zero,
    where the plain VAE collapses on the same data and steps (as the PTB
    table's `vae` row did: KL 0.01, no active unit). On 50 sentences the
    decoder can do without z, so no more than that is asked here; the README
    has the short runs on Penn Treebank and WordNet (every unit active)."""
    from textvae.cli import main

    run = tmp_path / "run"
    sizes = ["--set", "model.embed_dim=16", "--set", "model.hidden_dim=16", "--set", "model.latent_dim=4",
             "--set", "train.batch_size=8", "--set", "train.max_steps=40", "--set", "train.eval_every=20",
             "--set", "train.lr=0.01", "--set", "train.log_every=5"]
    sizes += [] if free_bits is None else ["--set", f"objective.free_bits={free_bits}", "--set", "model.bn_vae_gamma=0",
                                           "--set", "train.ae_pretrain_fraction=0"]
    assert main(["-q", "train", "--data", str(shared_corpus), "--out", str(run), *sizes]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in records if r["split"] == "valid"][-1]
    weights = [r["kl_weight"] for r in records if r["split"] == "train"]  # one record per 5 steps
    if in_use:
        assert weights[:2] == [0.0, 0.0] and weights[2:] == [1.0] * 6  # an autoencoder for 10 of 40 steps
        assert final["kl"] > 0.5
    else:
        assert weights == [1.0] * 8
        assert final["kl"] < 0.1 and final["au"] == 0
