"""The evaluation suite proves its numbers: IW-NLL against exact quadrature,
MI against a closed form, active units, token counts and perplexity, the
language-model baseline by hand, bf16 against fp32, the text metrics, and
the ``eval`` / ``compare`` / ``plot`` commands."""

import contextlib
import io
import json
import math
import re
import shutil

import pytest
import torch
import torch.nn.functional as F

from textvae.config import TokenizerConfig
from textvae.data import TextBatches, TextSplit, collate
from textvae.evaluation.latent_stats import active_units, mutual_information
from textvae.evaluation.likelihood import importance_weighted_log_likelihood
from textvae.evaluation.text_eval import EvalSettings, evaluate_text
from textvae.evaluation.text_metrics import corpus_bleu, distinct_n, self_bleu
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


# ------------------------------------------------ MI and active units
def test_mutual_information_of_a_linear_gaussian_encoder():
    """x ~ N(0, 1) per dimension and q(z|x) = N(a x, s^2): then q(z) = N(0,
    a^2 + s^2) and I(x; z) = sum_d 0.5 log((a_d^2 + s_d^2) / s_d^2), here
    0.75 + 0.25 = 1 nat."""
    count = 2000
    s = torch.tensor([1.0, 0.5])
    a = torch.tensor([math.sqrt(math.exp(1.5) - 1.0), 0.5 * math.sqrt(math.exp(0.5) - 1.0)])
    exact = float((0.5 * torch.log((a ** 2 + s ** 2) / s ** 2)).sum())
    assert exact == pytest.approx(1.0)
    x = torch.randn(count, 2, generator=torch.Generator().manual_seed(7))
    means, logvars = a * x, (2 * torch.log(s)).expand(count, 2)
    estimate = mutual_information(means, logvars, torch.Generator().manual_seed(0))
    assert estimate == pytest.approx(exact, abs=0.05)
    # Chunking the aggregate posterior changes nothing.
    small_chunks = mutual_information(means, logvars, torch.Generator().manual_seed(0), chunk=7)
    assert small_chunks == pytest.approx(estimate, abs=1e-9)


def test_mutual_information_is_zero_when_q_ignores_x():
    count = 500
    means, logvars = torch.full((count, 3), 0.3), torch.full((count, 3), -0.5)
    for seed in range(3):
        assert abs(mutual_information(means, logvars, torch.Generator().manual_seed(seed))) < 0.02


def test_active_units_are_the_dimensions_whose_means_vary():
    g = torch.Generator().manual_seed(0)
    means = torch.full((50, 5), 0.7) + 0.005 * torch.randn(50, 5, generator=g)  # variance ~2.5e-5
    means[:, 1] += torch.randn(50, generator=g)
    means[:, 3] += 0.5 * torch.randn(50, generator=g)
    count, variances = active_units(means)
    assert count == 2
    assert (variances > 0.01).nonzero().flatten().tolist() == [1, 3]
    assert variances.shape == (5,)
    assert torch.allclose(variances, means.var(dim=0), rtol=1e-5)
    assert active_units(means, threshold=10.0)[0] == 0
    assert active_units(means[:1])[0] == 0  # one example: nothing varies


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


# ------------------------------------------------------ text metrics
def test_exact_match_ignores_case_and_spacing_only():
    from textvae.evaluation.text_eval import exact_match

    assert exact_match(["The cat  sat", "a dog ran", "a dog"], ["the cat sat", "a dog ran ", "a dog ran"]) == 2 / 3
    assert exact_match(["the cats sat"], ["the cat sat"]) == 0.0


def test_bleu_of_perfect_reconstructions_is_100():
    score, signature = corpus_bleu(TEST, TEST)
    assert score == pytest.approx(100.0)
    assert "nrefs:1" in signature and "tok:13a" in signature
    assert corpus_bleu(["the dog sat by the door", *TEST[1:]], TEST)[0] < 100.0


def test_distinct_n_by_hand():
    sentences = ["a b a b", "a c"]
    assert distinct_n(sentences, 1) == pytest.approx(3 / 6)  # a, b, c of 6 words
    assert distinct_n(sentences, 2) == pytest.approx(3 / 4)  # (a b), (b a), (a c) of 4 bigrams
    assert distinct_n(["a"], 2) == 0.0 and distinct_n([], 1) == 0.0


def test_self_bleu_of_identical_and_disjoint_samples():
    assert self_bleu(["the cat sat on the mat"] * 4) == pytest.approx(100.0)
    disjoint = ["the cat sat on the mat", "a dog ran to a park", "birds fly over green hills", "we drank cold water"]
    assert self_bleu(disjoint) < 5.0
    assert self_bleu(["only one"]) == 0.0


# ---------------------------------------------------------------- CLI
EVAL_KEYS = {"elbo", "rec", "kl", "nll", "ppl", "tokens", "sentences", "mi", "au", "au_variances", "bleu",
             "exact_match", "bleu_signature", "distinct_1", "distinct_2", "self_bleu", "mean_length", "data_mean_length"}


def copy_run(source, target):
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("eval_*.json", "plots"))
    return target


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, trained_run, shared_corpus):
    """A copy of the trained run after `textvae eval ... --json F`: (run, F, stdout)."""
    from textvae.cli import main

    folder = tmp_path_factory.mktemp("evaluated")
    run = copy_run(trained_run, folder / "A")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["-q", "eval", str(run), "--data", str(shared_corpus), "--iw-samples", "5", "--samples", "5",
                     "--json", str(folder / "figures.json")])
    assert code == 0
    return run, folder / "figures.json", stdout.getvalue()


def test_eval_prints_the_table_and_writes_the_figures(evaluated):
    run, json_file, stdout = evaluated
    stored = json.loads((run / "eval_test.json").read_text())
    assert json.loads(json_file.read_text()) == stored
    assert EVAL_KEYS <= set(stored)
    assert stored["sentences"] == len(TEST)
    # Provenance: the command as typed and what ran it.
    assert stored["command"].startswith(f"textvae -q eval {run} --data ") and "--iw-samples 5" in stored["command"]
    assert re.fullmatch(r"cpu, \d+ threads?", stored["device"])
    from textvae.tokenization import Tokenizer

    tok = Tokenizer.load(run / "tokenizer")
    assert stored["tokens"] == sum(len(tok.encode(t)) + 1 for t in TEST)
    assert stored["ppl"] == pytest.approx(math.exp(stored["nll"] * stored["sentences"] / stored["tokens"]), rel=1e-5)
    assert len(stored["au_variances"]) == 4 and 0 <= stored["au"] <= 4
    assert stored["settings"]["iw_samples"] == 5 and stored["settings"]["num_samples"] == 5
    lines = stdout.splitlines()
    assert lines[0].startswith(f"test: {len(TEST)} sentences, {stored['tokens']} tokens, 5 importance samples")
    for label in ("NLL (IW)", "PPL", "ELBO", "KL", "MI", "AU", "BLEU", "distinct-2", "self-BLEU"):
        assert any(line.split()[:len(label.split())] == label.split() for line in lines[1:]), label
    assert f"{stored['nll']:.3f}" in stdout
    assert lines[-1].startswith("  BLEU signature: nrefs:1")


def test_compare_prints_a_markdown_table_of_the_runs(cli, evaluated, tmp_path):
    run, _, _ = evaluated
    other = tmp_path / "B"
    shutil.copytree(run, other)
    figures = json.loads((other / "eval_test.json").read_text())
    figures["nll"] = 123.456
    (other / "eval_test.json").write_text(json.dumps(figures))
    result = cli("compare", run, other)
    assert result.code == 0
    lines = result.out_lines
    assert lines[0].startswith("| run | NLL | PPL | ELBO |") and lines[1].startswith("|---|")
    assert len(lines) == 4
    assert lines[2].startswith("| A | ") and lines[3].startswith("| B | 123.46 | ")
    assert all(line.count("|") == lines[0].count("|") for line in lines)


def test_plot_writes_png_files_and_prints_their_paths(cli, trained_run, tmp_path):
    result = cli("plot", trained_run, "--out", tmp_path / "figures")
    assert result.code == 0
    paths = [tmp_path / "figures" / p.split("/")[-1] for p in result.out_lines]
    assert {str(p) for p in paths} == set(result.out_lines)
    assert len(paths) >= 4 and {p.name for p in paths} >= {"reconstruction.png", "kl.png", "latent_use.png"}
    assert sorted(paths) == sorted((tmp_path / "figures").iterdir())
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def one_error_line(result, fragment):
    assert result.code != 0 and result.out == ""
    assert len(result.err_lines) == 1, result.err
    assert result.err_lines[0].startswith("textvae: error: ") and fragment in result.err_lines[0]


def test_eval_compare_and_plot_reject_bad_input(cli, trained_run, shared_corpus, tmp_path):
    (tmp_path / "notes.txt").write_text("not a run\n")
    one_error_line(cli("eval", tmp_path, "--data", shared_corpus), "not a textvae run directory")
    run = copy_run(trained_run, tmp_path / "fresh")
    one_error_line(cli("compare", run), "has no stored evaluation")
    one_error_line(cli("plot", tmp_path), "no metrics.jsonl")
    one_error_line(cli("eval", run, "--data", shared_corpus, "--iw-samples", "0"), "--iw-samples")
    only_train = tmp_path / "only_train"
    only_train.mkdir()
    (only_train / "train.txt").write_text("the cat sat\n")
    one_error_line(cli("eval", run, "--data", only_train), "has no test split")
