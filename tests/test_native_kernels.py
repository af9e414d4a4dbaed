"""The native kernels of large bf16 IW estimates (nn/native_kernels.py): the
output layer's log-softmax and the LSTM decoder's steps, each in one pass
over bf16 products on CPUs with AVX-512 BF16 and no AMX. They give the
values of the same arithmetic in torch, are packed again when the weights
change, keep their library in the user's cache folder (a file others may
write is not loaded), and step aside, with one line in the log, where they
cannot be built."""

import stat

import pytest
import torch
from torch import nn

from textvae.evaluation import likelihood
from textvae.model import TextVAE, decoder_io
from textvae.nn import fused_scoring, native_kernels
from textvae.nn.native_kernels import NativeKernels
from textvae.nn.output import token_log_likelihood

from conftest import TEST, VALID, tiny_config

CPU = torch.device("cpu")
HELD_OUT = VALID + TEST[:3]


@pytest.fixture
def kernels(monkeypatch):
    """The library, built or loaded (skips where this CPU or machine cannot
    run it), and a record of each native scoring call's row count."""
    if not native_kernels.cpu_supported():
        pytest.skip("the native kernels need AVX-512 BF16 without AMX")
    if native_kernels.library() is None:
        pytest.skip("the native kernels could not be built here (no C++ compiler?)")
    calls, score = [], native_kernels.score_tokens

    def spy(hidden, output, targets, mask):
        result = score(hidden, output, targets, mask)
        if result is not None:
            calls.append(len(result))
        return result

    monkeypatch.setattr(native_kernels, "score_tokens", spy)
    return calls


def reference(hidden, output, targets, mask):
    """(B,) sums of log p(target) in fp32 from bf16-rounded states, weights
    and bias: the arithmetic the kernel does, in torch."""
    weight = output.weight.detach().bfloat16().float()
    bias = output.bias.detach().bfloat16().float() if output.bias is not None else None
    logits = torch.nn.functional.linear(hidden.bfloat16().float(), weight, bias)  # (B, T, V)
    log_probs = logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (log_probs * mask).sum(1)


def scored(hidden, output, targets, mask, native=True):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), fused_scoring.fused_scoring():
        NativeKernels.enabled = native
        try:
            return token_log_likelihood(hidden, output, targets, mask)
        finally:
            NativeKernels.enabled = True


@pytest.mark.parametrize("vocab, width, scale, bias", [(1001, 34, 1.0, True), (50, 16, 1.0, False),
                                                       (48, 256, 0.1, True), (97, 32, 30.0, True)])
def test_scoring_gives_the_log_softmax_of_the_bf16_product(kernels, vocab, width, scale, bias):
    """Vocabularies that are and are not whole tiles (48 columns), widths
    with and without a tail of the gold logit's dot product, no bias, and
    logits in the hundreds (each row's maximum grows tile after tile):
    every sentence within 1e-4 nats a token of the same arithmetic in torch."""
    torch.manual_seed(0)
    output = nn.Linear(width, vocab, bias=bias)
    with torch.no_grad():
        output.weight.mul_(scale)
    lengths = torch.tensor([7, 3, 5, 1])
    mask = torch.arange(7).unsqueeze(0) < lengths.unsqueeze(1)  # (4, 7), padding after each sentence
    hidden, targets = torch.randn(4, 7, width), torch.randint(0, vocab, (4, 7))
    got = scored(hidden, output, targets, mask)
    assert kernels == [int(lengths.sum())]
    want = reference(hidden, output, targets, mask)
    assert (got - want).abs().max() <= 1e-4 * lengths.max()
    if scale == 30.0:
        assert want.abs().max() > 100  # the rescaling path was needed


def test_a_changed_weight_is_packed_again(kernels):
    torch.manual_seed(1)
    output = nn.Linear(16, 60)
    hidden, targets, mask = torch.randn(2, 5, 16), torch.randint(0, 60, (2, 5)), torch.ones(2, 5, dtype=torch.bool)
    before = scored(hidden, output, targets, mask)
    with torch.no_grad():
        output.weight.mul_(3.0)  # in place: the same tensor, a new version
    after = scored(hidden, output, targets, mask)
    assert (after - reference(hidden, output, targets, mask)).abs().max() < 1e-3
    assert (after - before).abs().max() > 0.1
    assert len(kernels) == 2


def test_the_kernels_stay_out_of_autograd_fp32_and_odd_widths(kernels):
    torch.manual_seed(2)
    output = nn.Linear(15, 40)
    hidden, targets, mask = torch.randn(2, 4, 15), torch.randint(0, 40, (2, 4)), torch.ones(2, 4, dtype=torch.bool)
    scored(hidden, output, targets, mask)  # an odd width: the compiled kernel serves
    even = nn.Linear(16, 40)
    with torch.no_grad(), fused_scoring.fused_scoring():  # fp32
        token_log_likelihood(torch.randn(2, 4, 16), even, targets, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16), fused_scoring.fused_scoring():  # autograd on
        token_log_likelihood(torch.randn(2, 4, 16, requires_grad=True), even, targets, mask)
    assert kernels == []


@pytest.mark.parametrize("latent_to_decoder, latent, width", [("both", 4, 16), ("input", 3, 32), ("init", 4, 48)])
def test_the_lstm_steps_give_the_compiled_states(kernels, word_tokenizer, latent_to_decoder, latent, width):
    """states_under_samples under bf16: the native steps against the same
    recurrence in torch, within bf16 rounding of h (an odd latent size is
    padded; with z only in the initial state there are no z columns; two and
    three groups of 16 units)."""
    torch.manual_seed(0)
    config = tiny_config(model={"latent_to_decoder": latent_to_decoder, "latent_dim": latent, "hidden_dim": width})
    model = TextVAE(config, word_tokenizer).eval()
    inputs = decoder_io(model.batch(HELD_OUT))[0]
    z = torch.randn(5, len(HELD_OUT), latent)
    states = {}
    for native in (True, False):
        NativeKernels.enabled = native
        try:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), fused_scoring.fused_scoring():
                states[native] = model.decoder.states_under_samples(inputs, z).float()
        finally:
            NativeKernels.enabled = True
    difference = (states[True] - states[False]).abs()
    assert 0 < difference.max() < 2e-2 and difference.mean() < 1e-3  # 0: the native steps did not run


def test_the_estimate_agrees_with_the_compiled_kernels(kernels, tiny_model):
    """importance_weighted_nll in bf16 from FUSED_MIN_SAMPLES samples, native
    kernels on and off: the same estimate within 1e-3 nats a sentence."""
    batches = [tiny_model.batch(HELD_OUT[:4]), tiny_model.batch(HELD_OUT[4:])]
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    samples = likelihood.FUSED_MIN_SAMPLES
    native = likelihood.importance_weighted_nll(tiny_model, batches, samples, CPU, autocast=autocast)
    assert kernels
    NativeKernels.enabled = False
    try:
        compiled = likelihood.importance_weighted_nll(tiny_model, batches, samples, CPU, autocast=autocast)
    finally:
        NativeKernels.enabled = True
    assert (native - compiled).abs().max() < 1e-3


@pytest.fixture
def fresh_library(monkeypatch, tmp_path):
    """No library loaded in this process, and a cache folder of the test's own."""
    if not native_kernels.cpu_supported():
        pytest.skip("the native kernels need AVX-512 BF16 without AMX")
    monkeypatch.setattr(NativeKernels, "library", None)
    monkeypatch.setattr(NativeKernels, "failed", False)
    monkeypatch.setenv("TEXTVAE_CACHE_DIR", str(tmp_path))
    builds, compile_ = [], native_kernels._compile
    monkeypatch.setattr(native_kernels, "_compile", lambda *args: builds.append(args) or compile_(*args))
    return builds


def test_the_library_is_kept_and_a_file_others_may_write_is_rebuilt(fresh_library, monkeypatch, tmp_path):
    if native_kernels.library() is None:
        pytest.skip("the native kernels could not be built here (no C++ compiler?)")
    [kept] = tmp_path.glob("kernels-*.so")
    assert len(fresh_library) == 1 and not kept.stat().st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    assert not list(tmp_path.glob("*.tmp"))
    monkeypatch.setattr(NativeKernels, "library", None)
    assert native_kernels.library() is not None and len(fresh_library) == 1  # loaded from the cache
    kept.chmod(0o666)
    monkeypatch.setattr(NativeKernels, "library", None)
    assert native_kernels.library() is not None and len(fresh_library) == 2  # not trusted: built again
    assert not kept.stat().st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def test_without_a_compiler_the_compiled_path_serves(fresh_library, monkeypatch, caplog, tiny_model):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    torch.manual_seed(3)
    output = nn.Linear(16, 30)
    hidden, targets, mask = torch.randn(2, 4, 16), torch.randint(0, 30, (2, 4)), torch.ones(2, 4, dtype=torch.bool)
    with caplog.at_level("INFO", logger="textvae"):
        first = scored(hidden, output, targets, mask)
        scored(hidden, output, targets, mask)
    assert NativeKernels.failed and NativeKernels.library is None
    assert caplog.text.count("the native kernels are unavailable") == 1
    assert (first - reference(hidden, output, targets, mask)).abs().max() < 1e-2  # the compiled or eager path


def test_a_library_in_a_folder_others_may_write_is_not_loaded(fresh_library, monkeypatch, tmp_path):
    if native_kernels.library() is None:
        pytest.skip("the native kernels could not be built here (no C++ compiler?)")
    tmp_path.chmod(0o777)  # anyone could swap the file after the check
    monkeypatch.setattr(NativeKernels, "library", None)
    assert native_kernels.library() is not None and len(fresh_library) == 2  # built again, not loaded


def test_no_rows_score_nothing(kernels):
    output = nn.Linear(16, 40)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    got = scored(torch.randn(2, 3, 16), output, torch.randint(0, 40, (2, 3)), mask)
    assert torch.equal(got, torch.zeros(2)) and kernels == [0]


def test_eval_records_whether_the_native_kernels_ran(kernels, cli, trained_run, shared_corpus, tmp_path):
    """`textvae eval` in bf16 from 100 samples runs them, and says so in its
    results; in fp32 it does not."""
    import json
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    for precision, ran in (("bf16", True), ("fp32", False)):
        out = tmp_path / f"{precision}.json"
        result = cli("-q", "eval", run, "--data", shared_corpus, "--iw-samples", "100", "--samples", "5",
                     "--precision", precision, "--json", out)
        assert result.code == 0, result.err
        assert json.loads(out.read_text())["settings"]["native_kernels"] is ran


def test_a_nan_stays_a_nan(kernels, word_tokenizer):
    """A NaN weight or state gives NaN, as torch does, not a finite figure
    that would hide a diverged model."""
    torch.manual_seed(4)
    output = nn.Linear(16, 60)
    with torch.no_grad():
        output.weight[7, 0] = float("nan")  # not a gold entry: only the log-sum-exp sees it
    hidden, mask = torch.randn(2, 3, 16), torch.ones(2, 3, dtype=torch.bool)
    targets = torch.randint(8, 60, (2, 3))
    assert scored(hidden, output, targets, mask).isnan().all()
    model = TextVAE(tiny_config(model={"latent_to_decoder": "both"}), word_tokenizer).eval()
    with torch.no_grad():
        model.decoder.lstm.weight_hh_l0[0, 0] = float("nan")
    inputs = decoder_io(model.batch(HELD_OUT[:2]))[0]
    calls = NativeKernels.calls
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), fused_scoring.fused_scoring():
        states = model.decoder.states_under_samples(inputs, torch.randn(3, 2, 4))
    assert NativeKernels.calls == calls + 1 and states.float().isnan().any()


def test_shapes_that_do_not_fit_are_left_to_torch(kernels):
    output = nn.Linear(16, 40)
    targets, mask = torch.randint(0, 40, (2, 4)), torch.ones(2, 4, dtype=torch.bool)
    with pytest.raises(RuntimeError):  # torch's shape error, not a read past the weights
        scored(torch.randn(2, 4, 18), output, targets, mask)
    assert kernels == []
