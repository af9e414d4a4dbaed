"""The compiled kernels of large IW estimates (nn/fused_scoring.py): each
chunk of token_log_likelihood is one compiled kernel inside fused_scoring(),
with the eager values, and so is each step of the LSTM decoder's recurrence
under the samples; the IW driver uses them from FUSED_MIN_SAMPLES samples;
they step aside when they cannot compile. The native kernels, which take
their place in bf16 on CPUs with AVX-512 BF16, are off here
(test_native_kernels.py tests them)."""

import shutil

import pytest
import torch

from textvae.evaluation.likelihood import importance_weighted_log_likelihood
from textvae.model import TextVAE, decoder_io
from textvae.runtime import autocast_context, native_bf16

from conftest import TEST, VALID, tiny_config

CPU = torch.device("cpu")
HELD_OUT = VALID + TEST[:3]  # 8 sentences the models never trained on


@pytest.fixture(autouse=True)
def without_native_kernels(monkeypatch):
    from textvae.nn.native_kernels import NativeKernels

    monkeypatch.setattr(NativeKernels, "enabled", False)


@pytest.fixture
def kernel_calls(monkeypatch):
    """A fresh kernel state (nothing compiled or broken before) and a record
    of each chunk the compiled kernel scores: (rows, dtype of the states)."""
    from textvae.nn import fused_scoring, lstm

    for kernel in (fused_scoring.SCORING, lstm.CELL):
        monkeypatch.setattr(kernel, "compiled", None)
        monkeypatch.setattr(kernel, "broken", False)
    calls, run = [], fused_scoring.run

    def spy(kernel, states, weight, bias, gold, rows):
        calls.append((len(states), states.dtype))
        return run(kernel, states, weight, bias, gold, rows)

    monkeypatch.setattr(fused_scoring, "run", spy)
    return calls


def test_compiled_scoring_gives_the_eager_values(tiny_model, kernel_calls):
    """Inside fused_scoring() each chunk of token_log_likelihood is one
    compiled kernel (padded to one shape; the last chunk ragged), with or
    without a bias, in fp32 and under bf16 autocast (inputs lowered); the
    values are the eager ones; outside it, nothing is compiled."""
    from textvae.nn import fused_scoring
    from textvae.nn.output import token_log_likelihood

    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler: torch.compile's CPU kernels cannot be built here")
    batch = tiny_model.batch(HELD_OUT)
    inputs, targets, mask = decoder_io(batch)
    output = tiny_model.decoder.output
    no_bias = torch.nn.Linear(output.in_features, output.out_features, bias=False)
    with torch.no_grad():
        no_bias.weight.copy_(output.weight)
        hidden, _ = tiny_model.decoder(inputs, tiny_model.decoder.initial_state(torch.zeros(len(batch), 4), len(batch)))
        rows = int(mask.sum())
        for layer in (output, no_bias):
            eager = token_log_likelihood(hidden, layer, targets, mask, chunk_tokens=7)
            assert not kernel_calls
            with fused_scoring.fused_scoring():
                fused = token_log_likelihood(hidden, layer, targets, mask, chunk_tokens=7)
            assert [n for n, _ in kernel_calls] == [7] * (rows // 7) + ([rows % 7] if rows % 7 else [])
            assert not fused_scoring.unavailable()
            assert torch.allclose(fused, eager, atol=1e-4)
            kernel_calls.clear()
        if native_bf16(CPU):
            with autocast_context(CPU, "bf16")():
                low = token_log_likelihood(hidden, output, targets, mask, chunk_tokens=7)
                with fused_scoring.fused_scoring():
                    fused_low = token_log_likelihood(hidden, output, targets, mask, chunk_tokens=7)
            assert {dtype for _, dtype in kernel_calls} == {torch.bfloat16}
            assert (fused_low - low).abs().max() < 0.05


def test_the_estimate_uses_the_kernel_from_enough_samples(tiny_model, kernel_calls, monkeypatch):
    """importance_weighted_nll enters fused_scoring() from FUSED_MIN_SAMPLES
    samples, for a model with a latent: the estimate is the eager one."""
    from textvae.evaluation import likelihood

    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler: torch.compile's CPU kernels cannot be built here")
    batches = [tiny_model.batch(HELD_OUT[:4]), tiny_model.batch(HELD_OUT[4:])]
    samples = likelihood.FUSED_MIN_SAMPLES
    with monkeypatch.context() as patch:
        patch.setattr(likelihood, "FUSED_MIN_SAMPLES", samples + 1)
        plain = likelihood.importance_weighted_nll(tiny_model, batches, samples, CPU)
    assert not kernel_calls
    fused = likelihood.importance_weighted_nll(tiny_model, batches, samples, CPU)
    assert kernel_calls
    assert torch.allclose(fused, plain, atol=1e-4)


def test_scoring_falls_back_to_eager_when_compiling_fails(tiny_model, monkeypatch, caplog):
    from textvae.nn import fused_scoring, lstm

    def broken(*args):
        raise RuntimeError("no C++ compiler found\nmore detail")

    for kernel in (fused_scoring.SCORING, lstm.CELL):
        monkeypatch.setattr(kernel, "compiled", broken)
        monkeypatch.setattr(kernel, "broken", False)
    batch = tiny_model.batch(HELD_OUT)
    plain = importance_weighted_log_likelihood(tiny_model, batch, 6, generator=torch.Generator().manual_seed(0))
    with fused_scoring.fused_scoring(), caplog.at_level("INFO", logger="textvae"):
        fallback = importance_weighted_log_likelihood(tiny_model, batch, 6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(fallback, plain)
    assert fused_scoring.unavailable() and "more detail" not in caplog.text
    assert "compiled scoring kernel is unavailable (no C++ compiler found); computing in eager mode" in caplog.text
    assert "compiled LSTM cell is unavailable (no C++ compiler found); computing in eager mode" in caplog.text
    assert lstm.CELL.broken and caplog.text.count("is unavailable") == 2  # once each, not once a call


def test_the_compiled_lstm_cell_gives_the_eager_states(word_tokenizer, kernel_calls, monkeypatch):
    """Inside fused_scoring() the recurrence of states_under_samples runs the
    compiled cell, a step at a time, with the eager cell's states (fp32 within
    1e-5, bf16 within its rounding); outside it the cell stays eager. A second
    shape makes the sizes symbolic: later batch sizes, sample counts and
    sentence lengths compile nothing more (one sentence at a time, a size
    torch specialises, compiles once, whatever its length)."""
    from torch._dynamo.utils import counters

    from textvae.nn import fused_scoring, lstm

    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler: torch.compile's CPU kernels cannot be built here")
    steps, cell = [], lstm.CELL
    monkeypatch.setattr(lstm, "CELL", lambda *args: steps.append(args[0].shape) or cell(*args))
    torch.manual_seed(0)
    model = TextVAE(tiny_config(model={"latent_to_decoder": "both"}), word_tokenizer).eval()
    inputs = decoder_io(model.batch(HELD_OUT))[0]
    z = torch.randn(3, len(HELD_OUT), 4)

    def compiled_matches_eager(texts, samples):
        other = decoder_io(model.batch(texts))[0]
        z_other = torch.randn(samples, len(texts), 4)
        with fused_scoring.fused_scoring():
            fused = model.decoder.states_under_samples(other, z_other)
        assert torch.allclose(fused, cell_free(model, other, z_other), atol=1e-5)
        return counters["stats"]["unique_graphs"]

    with torch.no_grad():
        eager = model.decoder.states_under_samples(inputs, z)
        assert not steps
        with fused_scoring.fused_scoring():
            fused = model.decoder.states_under_samples(inputs, z)
        assert steps == [(3 * len(HELD_OUT), 4 * model.decoder.hidden_dim)] * inputs.shape[1]
        assert not cell.broken and torch.allclose(fused, eager, atol=1e-5)
        settled = compiled_matches_eager(HELD_OUT[:3], 5)  # the second shape: sizes become symbolic
        assert compiled_matches_eager(HELD_OUT[3:7], 2) == settled  # other sizes and lengths: no compile
        single = compiled_matches_eager(HELD_OUT[3:4], 2)
        assert compiled_matches_eager(HELD_OUT[4:5], 2) == single  # another length, one sentence
        if native_bf16(CPU):
            with autocast_context(CPU, "bf16")():
                low = model.decoder.states_under_samples(inputs, z)
                with fused_scoring.fused_scoring():
                    fused_low = model.decoder.states_under_samples(inputs, z)
            assert fused_low.dtype == low.dtype == torch.bfloat16
            assert (fused_low.float() - low.float()).abs().max() < 2e-2


def cell_free(model, inputs, z):
    """states_under_samples outside fused_scoring(): the eager cell."""
    from textvae.nn import fused_scoring

    with fused_scoring.fused_scoring(False):
        return model.decoder.states_under_samples(inputs, z)
