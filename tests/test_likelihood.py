"""The likelihood figures prove their numbers: the importance-weighted NLL
converges to the exact marginal (quadrature) and pools its weights across
chunks, forward()'s ELBO averages to the exact one, perplexity counts words
and eos but not bos or padding (word perplexity too, for a subword model),
the language-model baseline's NLL is the sum of its token losses by hand,
bf16 matches fp32, and the LSTM decoder's states under many samples are
those of the repeated batch (the compiled scoring kernel: test_fused_scoring.py)."""

import math

import pytest
import torch
import torch.nn.functional as F

from textvae.config import TokenizerConfig
from textvae.data import TextBatches, TextSplit, collate
from textvae.evaluation.likelihood import importance_weighted_log_likelihood
from textvae.evaluation.text_eval import EvalSettings, evaluate_text
from textvae.latent import standard_normal_log_prob
from textvae.model import TextVAE, decoder_io
from textvae.tokenization import build_tokenizer
from textvae.runtime import autocast_context, native_bf16

from conftest import TEST, TRAIN, VALID, tiny_config


CPU = torch.device("cpu")
HELD_OUT = VALID + TEST[:3]  # 8 sentences the models never trained on


# ------------------------------------------------- IW-NLL vs quadrature
def one_dim_model(tokenizer) -> TextVAE:
    """A tiny LSTM VAE with a 1-d latent that the decoder leans on (z weights
    and output layer scaled up: the exact posteriors have std ~0.6-0.7), and a
    deliberately poor q(z|x) = N(1, 2^2) for every sentence, so that the ELBO
    lies ~3 nats below log p(x) and importance weighting has a gap to close."""
    torch.manual_seed(0)
    model = TextVAE(tiny_config(model={"latent_dim": 1}), tokenizer).eval()
    decoder = model.decoder
    assert decoder.lstm.weight_ih_l0.shape[1] == 16 + 1  # z is the last input column
    with torch.no_grad():
        decoder.latent_to_cell.weight.mul_(3.0)
        decoder.lstm.weight_ih_l0[:, -1:].mul_(3.0)
        decoder.output.weight.mul_(3.0)
        model.posterior_head.proj.weight.zero_()
        model.posterior_head.proj.bias.copy_(torch.tensor([1.0, math.log(4.0)]))
    return model


@torch.no_grad()
def quadrature(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact log p(x) = log int p(x|z) N(z; 0, 1) dz and the exact ELBO
    E_q[log p(x|z)] - KL, both (B,), on a grid of step 0.01 over [-10, 10]."""
    grid, step = torch.linspace(-10.0, 10.0, 2001, dtype=torch.double), 0.01
    z = grid.float().view(-1, 1, 1).expand(-1, len(batch), 1)  # (S, B, 1)
    log_px_given_z = model.log_likelihood(batch, z).double()  # (S, B)
    log_joint = log_px_given_z + standard_normal_log_prob(z).double()
    log_px = torch.logsumexp(log_joint, dim=0) + math.log(step)
    q = model.posterior(batch)
    q_density = q.log_prob(z).double().exp()
    elbo = (q_density * log_px_given_z).sum(0) * step - q.kl_per_dim().sum(-1).double()
    assert torch.allclose(q_density.sum(0) * step, torch.ones(len(batch), dtype=torch.double), atol=1e-6)
    return log_px, elbo


def test_importance_weighted_nll_converges_to_the_exact_marginal(word_tokenizer):
    model = one_dim_model(word_tokenizer)
    batch = model.batch(HELD_OUT)
    exact, elbo = quadrature(model, batch)
    assert float((exact - elbo).mean()) > 2.0  # a real gap for IW to close

    generator = torch.Generator().manual_seed(0)
    means, errors = {}, {}
    for samples, repeats in [(1, 200), (10, 100), (100, 80), (1000, 25)]:
        runs = torch.stack([importance_weighted_log_likelihood(model, batch, samples, chunk=64,
                                                               generator=generator)
                            for _ in range(repeats)]).double()  # (R, B)
        means[samples] = runs.mean(0)  # (B,)
        errors[samples] = float(runs.mean(1).std() / math.sqrt(repeats))  # of the mean over sentences
    gap = {k: float((exact - m).mean()) for k, m in means.items()}  # nats per sentence, >= 0 in expectation

    # K = 1 is the ELBO in expectation; every K is a lower bound on log p(x).
    assert float((means[1] - elbo).mean()) == pytest.approx(0.0, abs=3 * errors[1])
    for k in means:
        assert gap[k] > -3 * errors[k], (k, gap)
    # The bound tightens with K: 1 -> 10 -> 100 -> 1000.
    assert gap[1] > gap[10] > gap[100] > gap[1000], gap
    assert gap[10] < 0.5 * gap[1] and gap[1000] < 0.02
    # K = 1000 is within 0.05 nats of the exact value, sentence by sentence,
    # and -ELBO >= -IW >= exact NLL holds for each.
    assert (means[1000] - exact).abs().max() < 0.05
    assert (means[1000] > elbo + 1.0).all()
    assert (means[100] > elbo + 1.0).all()


def test_importance_weights_are_pooled_across_chunks(tiny_model):
    """K = 20 samples taken 7 at a time are one log-mean-exp over all 20
    weights, not a mean of per-chunk estimates."""
    batch = tiny_model.batch(HELD_OUT[:3])
    estimate = importance_weighted_log_likelihood(tiny_model, batch, 20, chunk=7,
                                                  generator=torch.Generator().manual_seed(4))
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        q = tiny_model.posterior(batch)
        z = torch.cat([q.sample(n, generator=generator) for n in (7, 7, 6)])  # the same draws, (20, B, D)
        log_weights = tiny_model.log_likelihood(batch, z) + standard_normal_log_prob(z) - q.log_prob(z)
    assert torch.allclose(estimate, torch.logsumexp(log_weights, 0) - math.log(20), atol=1e-5)


def test_forward_elbo_matches_the_exact_elbo(word_tokenizer):
    """The one-sample ELBO of forward() (what training and `eval`'s elbo use)
    averages to the quadrature E_q[log p(x|z)] - KL."""
    model = one_dim_model(word_tokenizer)
    batch = model.batch(HELD_OUT)
    _, elbo = quadrature(model, batch)
    repeats = 50
    with torch.no_grad():
        out = model(model.batch(HELD_OUT * repeats), generator=torch.Generator().manual_seed(1))
    draws = out.elbo.double().view(repeats, len(HELD_OUT))  # (R, B)
    error = float(draws.mean(1).std() / math.sqrt(repeats))
    assert float((draws.mean(0) - elbo).mean()) == pytest.approx(0.0, abs=3 * error + 1e-3)


# ------------------------------------------------- perplexity counts
def hand_split(tokenizer) -> TextSplit:
    texts = ["the cat sat", "a dog", "the children played in the park"]
    return TextSplit("test", texts, [tokenizer.encode(t) for t in texts])


SMALL = EvalSettings(iw_samples=3, batch_size=2, num_samples=4)


def test_perplexity_counts_words_and_eos_not_bos_or_padding(tiny_model, word_tokenizer):
    split = hand_split(word_tokenizer)
    assert split.lengths == [3, 2, 6]
    result = evaluate_text(tiny_model, split, SMALL, CPU)
    assert result["sentences"] == 3
    assert result["tokens"] == 14 == (3 + 1) + (2 + 1) + (6 + 1)
    # The same count as the positions the model predicts (bos and padding masked out).
    _, _, mask = decoder_io(collate(split.ids, range(3), word_tokenizer))
    assert int(mask.sum()) == 14
    total = result["nll"] * result["sentences"]
    assert result["ppl"] == pytest.approx(math.exp(total / 14), rel=1e-5)
    assert "ppl_word" not in result  # a word tokenizer: the same figure
    # nll is the importance-weighted estimate, batch by batch with the seeded generator.
    generator = torch.Generator().manual_seed(SMALL.seed)
    expected = -sum(float(importance_weighted_log_likelihood(tiny_model, batch, SMALL.iw_samples, SMALL.iw_chunk,
                                                             generator).double().sum())
                    for batch in TextBatches(split, word_tokenizer, SMALL.batch_size, shuffle=False).iterate())
    assert total == pytest.approx(expected, rel=1e-6)


def test_word_perplexity_of_a_subword_model():
    tokenizer = build_tokenizer(TokenizerConfig(spec="bpe", vocab_size=150), TRAIN)
    torch.manual_seed(0)
    model = TextVAE(tiny_config(), tokenizer).eval()
    split = hand_split(tokenizer)
    result = evaluate_text(model, split, SMALL, CPU)
    assert result["tokens"] == sum(len(ids) + 1 for ids in split.ids) > 14  # subwords + eos
    assert result["words"] == 14  # whitespace words + one eos each
    total = result["nll"] * 3
    assert result["ppl"] == pytest.approx(math.exp(total / result["tokens"]), rel=1e-5)
    assert result["ppl_word"] == pytest.approx(math.exp(total / 14), rel=1e-5)


@pytest.mark.parametrize("decoder", ["lstm", "transformer"])
def test_language_model_nll_is_the_sum_of_its_token_losses(word_tokenizer, decoder):
    torch.manual_seed(0)
    model = TextVAE(tiny_config(model={"latent_dim": 0, "decoder": decoder}), word_tokenizer).eval()
    split = hand_split(word_tokenizer)
    result = evaluate_text(model, split, SMALL, CPU)
    tok = word_tokenizer
    by_hand = []
    with torch.no_grad():
        for ids in split.ids:
            framed = torch.tensor([[tok.bos_id, *ids, tok.eos_id]])
            hidden, _ = model.decoder(framed[:, :-1], model.decoder.initial_state(None, 1))
            log_probs = F.log_softmax(model.decoder.output(hidden)[0], dim=-1)  # (T, V)
            by_hand.append(-float(log_probs.gather(1, framed[0, 1:].unsqueeze(1)).sum()))
    assert result["nll"] == pytest.approx(sum(by_hand) / 3, rel=1e-5)
    assert result["ppl"] == pytest.approx(math.exp(sum(by_hand) / 14), rel=1e-5)
    assert result["rec"] == pytest.approx(result["nll"], rel=1e-5)
    assert result["kl"] == 0.0 and result["elbo"] == pytest.approx(-result["nll"], rel=1e-5)
    assert not {"mi", "au", "bleu"} & set(result)


# ------------------------------------------------------- bf16 vs fp32
@pytest.mark.parametrize("model_options", [
    {},
    {"encoder": "transformer", "decoder": "transformer", "num_heads": 2, "encoder_layers": 2, "decoder_layers": 2},
], ids=["lstm", "transformer"])
def test_bf16_importance_weighted_nll_matches_fp32(word_tokenizer, model_options):
    """Licenses `textvae eval --precision bf16`."""
    torch.manual_seed(0)
    model = TextVAE(tiny_config(model=model_options), word_tokenizer).eval()
    batch = model.batch(HELD_OUT)
    bf16 = autocast_context(CPU, "bf16")
    if not native_bf16(CPU):  # the context falls back to fp32: nothing lowered
        with bf16():
            assert model.decoder.output(torch.zeros(1, 16)).dtype == torch.float32
        pytest.skip("this CPU has no native bf16 (no AVX-512 BF16 or AMX): bf16 runs as fp32")
    with bf16():  # the context really lowers the decoder's precision
        hidden, _ = model.decoder(batch.tokens, model.decoder.initial_state(torch.zeros(len(batch), 4), len(batch)))
        assert model.decoder.output(hidden).dtype == torch.bfloat16
    fp32 = importance_weighted_log_likelihood(model, batch, 50, generator=torch.Generator().manual_seed(0))
    with bf16():
        low = importance_weighted_log_likelihood(model, batch, 50, generator=torch.Generator().manual_seed(0))
    assert low.dtype == torch.float32
    assert (low - fp32).abs().max() < 0.05
    assert abs(float((low - fp32).mean())) < 0.05


# ------------------------------- the LSTM decoder under many samples
@pytest.mark.parametrize("mode", ["both", "init", "input"])
def test_lstm_states_under_samples_are_the_repeated_batch_states(word_tokenizer, mode):
    """states_under_samples shares the words' input gates between samples:
    the hidden states, and log p(x|z), are those of the repeated batch."""
    torch.manual_seed(0)
    model = TextVAE(tiny_config(model={"latent_to_decoder": mode}), word_tokenizer).eval()
    batch = model.batch(HELD_OUT)
    inputs, targets, mask = decoder_io(batch)
    z = torch.randn(3, len(batch), 4)
    with torch.no_grad():
        fast = model.decoder.states_under_samples(inputs, z)
        slow, _ = model.decoder(inputs.repeat(3, 1), model.decoder.initial_state(z.reshape(3 * len(batch), 4),
                                                                                 3 * len(batch)))
        assert fast.shape == slow.shape
        assert torch.allclose(fast, slow, atol=1e-5)
        repeated = model.sequence_log_likelihood(inputs.repeat(3, 1), targets.repeat(3, 1), mask.repeat(3, 1),
                                                 z.reshape(3 * len(batch), 4)).view(3, -1)
        assert torch.allclose(model.log_likelihood(batch, z), repeated, atol=1e-4)
        calls = []
        fast_path = model.decoder.states_under_samples
        model.decoder.states_under_samples = lambda *args: calls.append(1) or fast_path(*args)
        model.log_likelihood(batch, z)
        assert calls  # log_likelihood takes it
        del model.decoder.states_under_samples
        if native_bf16(CPU):  # bf16 autocast: within bf16 rounding of the fused LSTM's states
            with autocast_context(CPU, "bf16")():
                fast = model.decoder.states_under_samples(inputs, z).float()
                slow, _ = model.decoder(inputs.repeat(3, 1), model.decoder.initial_state(
                    z.reshape(3 * len(batch), 4), 3 * len(batch)))
            assert (fast - slow.float()).abs().max() < 2e-2
    assert model.decoder.states_under_samples(inputs, z) is None  # autograd on: the caller decodes the batch
    model.train()
    with torch.no_grad():
        assert model.decoder.states_under_samples(inputs, z) is None  # training: dropout and weight drop apply
    two_layers = TextVAE(tiny_config(model={"decoder_layers": 2}), word_tokenizer).eval()
    with torch.no_grad():
        assert two_layers.decoder.states_under_samples(inputs, z) is None
