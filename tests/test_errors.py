"""One error line everywhere (issue 16): each damaged file, impossible
argument or interruption ends in ``textvae: error: ...`` and exit status 2
(Ctrl-C or SIGTERM: ``textvae: interrupted`` and 130), never a traceback,
and nothing is left half-written."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from conftest import TINY_FLAGS
from test_cli import assert_one_error_line

ROOT = Path(__file__).resolve().parents[1]


def fails(result, *fragments):
    assert_one_error_line(result, *fragments)
    assert result.code == 2


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    """A copy of the session's trained run, free to damage."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


# ------------------------------------------------------------------ inputs
def test_an_unreadable_data_file(cli, shared_corpus, tmp_path, monkeypatch):
    data = tmp_path / "sentences.txt"
    data.write_text("the cat sat\n" * 20)
    os.chmod(data, 0)
    if os.geteuid() == 0:  # root reads it anyway: make the read fail as it would for anyone else
        real = Path.read_bytes

        def read_bytes(path):
            if path == data:
                raise PermissionError(13, "Permission denied", str(path))
            return real(path)

        monkeypatch.setattr(Path, "read_bytes", read_bytes)
    fails(cli("train", "--data", data, "--out", tmp_path / "run", *TINY_FLAGS), "cannot read data file",
          "Permission denied")
    assert not (tmp_path / "run").exists()


def test_a_folder_given_as_config(cli, shared_corpus, tmp_path):
    fails(cli("train", "--data", shared_corpus, "--out", tmp_path / "run", "--config", tmp_path, *TINY_FLAGS),
          "is a folder")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content, fragment", [
    (b"model:\n  latent_dim: 3  # caf\xe9\n", "not UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b"a: " + b"{b: " * 100_000 + b"1" + b"}" * 100_000, "nested too deeply"),
])
@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_a_config_that_cannot_be_read(cli, shared_corpus, tmp_path, content, fragment, suffix):
    if suffix == ".json" and content.startswith(b"a:"):
        content = b'{"a": ' + b'{"b": ' * 100_000 + b"1" + b"}" * 100_001
    config = tmp_path / f"config{suffix}"
    config.write_bytes(content)
    result = cli("train", "--data", shared_corpus, "--out", tmp_path / "run", "--config", config, *TINY_FLAGS)
    fails(result, str(config))
    if fragment == "not UTF-8" or suffix == ".yaml":
        assert fragment in result.err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("target", ["folder", "missing"])
def test_eval_json_is_checked_before_the_evaluation(cli, run_copy, shared_corpus, tmp_path, monkeypatch, target):
    import textvae.evaluation.text_eval as text_eval

    monkeypatch.setattr(text_eval, "evaluate_text", lambda *a, **k: pytest.fail("evaluated before the check"))
    path = tmp_path if target == "folder" else tmp_path / "nowhere" / "eval.json"
    fails(cli("eval", run_copy, "--data", shared_corpus, "--json", path),
          "is a folder" if target == "folder" else "does not exist")
    assert not list(tmp_path.rglob("*.tmp")) and not (run_copy / "eval_test.json").exists()


def test_mnist_eval_json_is_checked_before_the_evaluation(cli, tmp_path):
    fails(cli("mnist", "eval", tmp_path / "no-run", "--json", tmp_path / "nowhere" / "eval.json"), "does not exist")


@pytest.mark.parametrize("args, fragment", [
    (["sample", "{run}", "--temperature", "nan"], "--temperature must be a finite number"),
    (["sample", "{run}", "--temperature", "inf"], "--temperature must be a finite number"),
    (["sample", "{run}", "--top-p", "nan"], "--top-p must be a finite number"),
    (["complete", "{run}", "the cat", "--length-penalty=-inf"], "--length-penalty must be a finite number"),
    (["reconstruct", "{run}", "the cat", "--temperature=-inf"], "--temperature"),
    (["sample", "{run}", "--seed", str(2**64)], "--seed"),
    (["sample", "{run}", "--seed", "-1"], "--seed"),
    (["sample", "{run}", "--seed", "9" * 5000], "--seed"),
    (["eval", "{run}", "--data", "{run}", "--seed", str(2**70)], "--seed"),
    (["mnist", "sample", "{run}", "--seed", str(2**63)], "--seed"),
    (["sample", "{run}", "-n", "many"], "argument -n"),
    (["sample", "{run}", "--beam-size", "100000", "--strategy", "beam"], "--beam-size"),
    (["complete", "{run}", "the cat", "--proposals", str(10**12)], "--proposals"),
    (["interpolate", "{run}", "the cat", "the dog", "--steps", str(10**9)], "--steps"),
    (["sample"], "RUN"),
])
def test_impossible_arguments(cli, trained_run, args, fragment):
    fails(cli(*[a.format(run=trained_run) for a in args]), fragment)


# ----------------------------------------------------------- damaged files
@pytest.mark.parametrize("content", ['{"specials": {"pad": "<pad>"}}', '{"specials": {}}', "[1, 2]",
                                     '{"specials": {"pad": 1, "bos": 2, "eos": 3, "unk": 4}}', "{not json",
                                     '{"specials": ' * 50_000])
def test_a_malformed_special_tokens_file(cli, run_copy, content):
    (run_copy / "tokenizer" / "special_tokens.json").write_text(content)
    fails(cli("sample", run_copy, "-n", "1"), "special_tokens.json is malformed")


@pytest.mark.parametrize("content, fragment", [
    ("{not json", "not valid JSON"),
    ('{"step": "x"}', "step cannot be 'x'"),
    ('{"step": -5}', "step cannot be"),
    ('{"log_sums": {"rec": "a lot"}}', "log_sums"),
    ('{"plateau": {"decays": true}}', "plateau.decays"),
    ('{"stop_reason": 7}', "stop_reason"),
    ("[]", "must be a JSON object"),
    ('{"shiny": 1}', "unknown fields shiny"),
    ("[" * 100_000, "not valid JSON"),
])
@pytest.mark.parametrize("command", ["resume", "info"])
def test_a_malformed_state_file(cli, run_copy, content, fragment, command):
    (run_copy / "checkpoint" / "state.json").write_text(content)
    before = (run_copy / "config.json").read_bytes()
    args = ["train", "--resume", run_copy, "--set", "train.epochs=5"] if command == "resume" else ["info", run_copy]
    fails(cli(*args), fragment)
    assert (run_copy / "config.json").read_bytes() == before


def test_a_malformed_optimizer_file(cli, run_copy):
    (run_copy / "checkpoint" / "optimizer.pt").write_bytes(b"\x00not a torch file")
    fails(cli("train", "--resume", run_copy, "--set", "train.epochs=5"), "optimizer.pt")


@pytest.mark.parametrize("content, fragment", [
    ('{"nll": ', "not valid JSON"),
    ('{"nll": "low", "unit": "nats per sentence"}', "'nll' is 'low', not a number"),
    ('{"nll": 3.5, "unit": 7}', "'unit' is not text"),
    ('"just text"', "does not hold an evaluation"),
])
def test_a_malformed_evaluation_file(cli, run_copy, content, fragment):
    (run_copy / "eval_test.json").write_text(content)
    fails(cli("compare", run_copy), fragment)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("command", [["sample", "-n", "2"], ["reconstruct", "the cat"], ["encode", "the cat"],
                                     ["eval", "--data", "{data}", "--iw-samples", "2", "--samples", "2"]])
def test_weights_that_are_not_finite(cli, run_copy, shared_corpus, value, command):
    weights = load_file(run_copy / "model.safetensors")
    name = sorted(weights)[0]
    weights[name].view(-1)[0] = value
    save_file(weights, run_copy / "model.safetensors")
    result = cli(command[0], run_copy, *[a.format(data=shared_corpus) for a in command[1:]])
    fails(result, "model.safetensors", f"weight {name} is not finite")


def test_a_checkpoint_whose_weights_are_not_finite_does_not_resume(cli, run_copy):
    path = run_copy / "checkpoint" / "model.safetensors"
    weights = load_file(path)
    next(iter(weights.values())).view(-1)[0] = float("nan")
    save_file(weights, path)
    fails(cli("train", "--resume", run_copy, "--set", "train.epochs=5"), "is not finite")


# ------------------------------------------------------------- interrupts
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_during_start_up(shared_corpus, tmp_path, sig):
    """The signal arrives while torch is being imported (its library just
    mapped): one line, exit 130, no folder left.

    The child is frozen (SIGSTOP) for each look at its memory map, so the
    signal lands where the look saw it, however starved this test process is
    (a child left running could finish its tiny training between the look
    and the signal); and it must have become the command (its cmdline), for
    between fork and exec it is a copy of this process, torch mapped, and a
    signal caught there vanishes with the exec. The child starts with SIGINT
    at its default: a test run in the background (`pytest &`) inherits it
    ignored, as the shell wants, and Python then never turns it into
    KeyboardInterrupt."""
    run = tmp_path / "run"
    args = [sys.executable, "-m", "textvae", "train", "--data", str(shared_corpus), "--out", str(run), *TINY_FLAGS]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    proc, command = Path(f"/proc/{process.pid}"), "\0".join(args).encode() + b"\0"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        process.send_signal(signal.SIGSTOP)
        while process.poll() is None and (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] not in "tT":
            time.sleep(0.001)
        if process.poll() is not None:
            break
        seen = (proc / "cmdline").read_bytes() == command and "libtorch" in (proc / "maps").read_text()
        if seen:
            process.send_signal(sig)  # pending until the child runs again
        process.send_signal(signal.SIGCONT)
        if seen:
            break
        time.sleep(0.005)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err.decode()
    assert err.decode() == "textvae: interrupted\n" and out == b""
    assert not run.exists()


def test_a_large_config_file_is_refused_unread(cli, shared_corpus, tmp_path):
    config = tmp_path / "huge.yaml"
    with open(config, "wb") as handle:
        handle.truncate(64 * 2**20)  # sparse: 64 MiB of nothing
    fails(cli("train", "--data", shared_corpus, "--out", tmp_path / "run", "--config", config, *TINY_FLAGS),
          "over 16 MiB")


def test_info_and_plot_say_one_line_for_a_damaged_metrics_file(cli, run_copy):
    lines = (run_copy / "metrics.jsonl").read_text().splitlines()
    (run_copy / "metrics.jsonl").write_text("\n".join(lines[:1] + ["garbage"] + lines[1:]) + "\n")
    for command in ("plot", "info"):
        fails(cli(command, run_copy), "line 2 is not a JSON record")
