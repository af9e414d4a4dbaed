"""The ``textvae`` command end to end on the tiny corpus, in-process.

Results go to stdout only; every user error is one ``textvae: error:`` line
on stderr, a non-zero exit code and no traceback.
"""

import json
import subprocess
import sys

import pytest

from textvae.model import TextVAE

from conftest import TINY_FLAGS, TRAIN, write_corpus


def assert_one_error_line(result, *fragments):
    assert result.code != 0
    assert result.out == ""
    lines = result.err_lines
    assert len(lines) == 1, result.err
    assert lines[0].startswith("textvae: error: ")
    assert "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in lines[0]


# ------------------------------------------------------------------ train
def test_train_writes_a_complete_run(trained_run):
    assert {p.name for p in trained_run.iterdir()} >= {"config.json", "model.safetensors", "tokenizer", "checkpoint",
                                                      "metrics.jsonl"}
    config = json.loads((trained_run / "config.json").read_text())
    assert config["model"]["latent_dim"] == 4 and config["train"]["epochs"] == 3
    splits = {json.loads(line)["split"] for line in (trained_run / "metrics.jsonl").read_text().splitlines()}
    assert splits == {"train", "valid"}


def test_train_on_a_single_file_with_a_config_file(cli, tmp_path):
    data = tmp_path / "sentences.txt"
    data.write_text("\n".join(TRAIN) + "\n")
    config = tmp_path / "tiny.yaml"
    config.write_text("model: {embed_dim: 16, hidden_dim: 16, latent_dim: 3}\n"
                      "train: {batch_size: 8, max_steps: 2, lr: 1e-2, device: cpu}\n")
    result = cli("-q", "train", "--data", data, "--out", tmp_path / "run", "--config", config,
                 "--tokenizer", "bpe", "--set", "tokenizer.vocab_size=300")
    assert result.code == 0 and result.out == ""
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["tokenizer"]["spec"] == "bpe" and saved["model"]["latent_dim"] == 3
    assert saved["train"]["lr"] == 0.01 and saved["data"]["path"] == str(data)


# ------------------------------------------------------------------- use
def test_sample(cli, trained_run):
    result = cli("sample", trained_run, "-n", "3", "--seed", "0")
    assert result.code == 0
    assert len(result.out_lines) == 3 and result.out.endswith("\n")
    assert cli("sample", trained_run, "-n", "3", "--seed", "0").out == result.out
    beam = cli("sample", trained_run, "-n", "2", "--strategy", "beam", "--beam-size", "3", "--max-length", "5")
    assert beam.code == 0 and len(beam.out_lines) == 2
    assert all(len(line.split()) <= 5 for line in beam.out_lines)
    cooled = cli("sample", trained_run, "-n", "8", "--seed", "0", "--prior-temperature", "0.1")
    model = TextVAE.from_pretrained(trained_run)
    assert cooled.code == 0 and cooled.out_lines == model.sample(8, seed=0, prior_temperature=0.1)
    assert cooled.out_lines != model.sample(8, seed=0)
    # The run's own decoding defaults (model.sample_strategy, model.prior_temperature) hold unless a flag says.
    config = json.loads((trained_run / "config.json").read_text())
    kept = (trained_run / "config.json").read_text()
    try:
        config["model"].update(sample_strategy="greedy", prior_temperature=0.1)
        (trained_run / "config.json").write_text(json.dumps(config))
        assert cli("sample", trained_run, "-n", "8", "--seed", "0").out_lines == \
            model.sample(8, seed=0, strategy="greedy", prior_temperature=0.1)
        assert cli("sample", trained_run, "-n", "8", "--seed", "0", "--strategy", "sample",
                   "--prior-temperature", "1").out_lines == model.sample(8, seed=0)
    finally:
        (trained_run / "config.json").write_text(kept)
    for bad in ("0", "-1", "nan"):
        refused = cli("sample", trained_run, "-n", "3", "--prior-temperature", bad)
        assert refused.code != 0 and refused.out == "" and "prior temperature" in refused.err
        assert len(refused.err.strip().splitlines()) == 1 and "Traceback" not in refused.err


def test_reconstruct_arguments_and_stdin(cli, trained_run):
    texts = TRAIN[:3]
    from_args = cli("reconstruct", trained_run, *texts)
    assert from_args.code == 0 and len(from_args.out_lines) == 3
    from_stdin = cli("reconstruct", trained_run, stdin=("\n".join(texts) + "\n").encode())
    assert from_stdin.code == 0 and from_stdin.out == from_args.out


def test_encode_gives_json_lines(cli, trained_run):
    result = cli("encode", trained_run, TRAIN[0], TRAIN[1])
    assert result.code == 0
    rows = [json.loads(line) for line in result.out_lines]
    assert [r["text"] for r in rows] == TRAIN[:2]
    assert all(len(r["mean"]) == len(r["logvar"]) == 4 for r in rows)
    assert rows[0]["mean"] != rows[1]["mean"]


def test_complete_keeps_the_prefix(cli, trained_run):
    result = cli("complete", trained_run, "the dog", "-n", "3", "--seed", "1", "--proposals", "32")
    assert result.code == 0 and len(result.out_lines) == 3
    assert all(line.startswith("the dog") for line in result.out_lines)


@pytest.mark.parametrize("method", ["linear", "slerp"])
def test_interpolate(cli, trained_run, method):
    result = cli("interpolate", trained_run, TRAIN[0], TRAIN[9], "--steps", "4", "--method", method)
    assert result.code == 0 and len(result.out_lines) == 4
    ends = cli("reconstruct", trained_run, TRAIN[0], TRAIN[9]).out_lines
    assert [result.out_lines[0], result.out_lines[-1]] == ends


# ------------------------------------------------------------- bad input
@pytest.mark.parametrize("problem, fragment", [
    ("missing_file", "does not exist"),
    ("empty_file", "is empty"),
    ("no_train_split", "no train split"),
    ("latin1_file", "not UTF-8"),
])
def test_train_rejects_bad_data(cli, tmp_path, problem, fragment):
    folder = write_corpus(tmp_path / "corpus")
    data = folder
    if problem == "missing_file":
        data = tmp_path / "nothing.txt"
    elif problem == "empty_file":
        data = tmp_path / "empty.txt"
        data.write_text("")
    elif problem == "no_train_split":
        (folder / "train.txt").unlink()
    elif problem == "latin1_file":
        (folder / "train.txt").write_bytes("the caf\xe9 sat\n".encode("latin-1"))
    result = cli("train", "--data", data, "--out", tmp_path / "run", *TINY_FLAGS)
    assert_one_error_line(result, fragment)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, fragment", [
    (["--tokenizer", "nonexistent_tokenizer_xyz"], "nonexistent_tokenizer_xyz"),
    (["--set", "model.latent_size=3"], "model.latent_size"),
    (["--set", "train.optimizer=rmsprop"], "train.optimizer"),
    (["--set", "model.embed_dim=-1"], "model.embed_dim"),
    (["--set", "model.encoder=gru"], "model.encoder"),
    (["--config", "no_such_preset"], "no_such_preset"),
])
def test_train_rejects_bad_settings(cli, shared_corpus, tmp_path, flags, fragment):
    result = cli("train", "--data", shared_corpus, "--out", tmp_path / "run", *TINY_FLAGS, *flags)
    assert_one_error_line(result, fragment)
    assert not (tmp_path / "run").exists()


def test_train_refuses_an_existing_run(cli, shared_corpus, trained_run):
    before = {p: p.stat().st_mtime_ns for p in trained_run.rglob("*")}
    result = cli("train", "--data", shared_corpus, "--out", trained_run, *TINY_FLAGS)
    assert_one_error_line(result, "already exists", "--resume")
    assert {p: p.stat().st_mtime_ns for p in trained_run.rglob("*")} == before


@pytest.mark.parametrize("args, fragment", [
    (["--resume", "{tmp}"], "not a textvae run"),
    (["--resume", "{run}", "--set", "model.latent_dim=8"], "train.*"),
    (["--resume", "{run}", "--out", "{tmp}/other"], "--resume"),
    (["--data", "{tmp}"], "--out"),
])
def test_train_rejects_bad_resume_and_missing_flags(cli, trained_run, tmp_path, args, fragment):
    args = [a.format(tmp=tmp_path, run=trained_run) for a in args]
    assert_one_error_line(cli("train", *args), fragment)


@pytest.mark.parametrize("command", [["sample"], ["reconstruct", "the cat"], ["encode", "the cat"],
                                     ["complete", "the cat"], ["interpolate", "the cat", "the dog"]])
def test_commands_reject_a_folder_that_is_not_a_run(cli, tmp_path, command):
    (tmp_path / "notes.txt").write_text("hello\n")
    result = cli(command[0], tmp_path, *command[1:])
    assert_one_error_line(result, "not a textvae run directory")


@pytest.mark.parametrize("args, stdin, fragment", [
    (["reconstruct", "{run}", ""], None, "empty"),
    (["reconstruct", "{run}", "zebra giraffe"], None, "unknown"),
    (["encode", "{run}", "the cat", "   "], None, "empty"),
    (["reconstruct", "{run}"], b"the cat sat\n\xff\xfe broken\n", "not UTF-8"),
    (["encode", "{run}"], b"", "no sentences"),
    (["interpolate", "{run}", "", "the dog"], None, "empty"),
    (["interpolate", "{run}", "the cat", "the dog", "--steps", "1"], None, "--steps"),
    (["complete", "{run}", " "], None, "empty"),
    (["sample", "{run}", "-n", "0"], None, "-n"),
    (["sample", "{run}", "--top-p", "0"], None, "--top-p"),
])
def test_commands_reject_bad_text(cli, trained_run, args, stdin, fragment):
    result = cli(*[a.format(run=trained_run) for a in args], stdin=stdin)
    assert_one_error_line(result, fragment)


def test_a_real_process_keeps_stdout_for_results(trained_run):
    """Outside pytest's capture of logging: results alone on stdout."""
    result = subprocess.run([sys.executable, "-m", "textvae", "sample", str(trained_run), "-n", "3", "--seed", "0"],
                            capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    assert len(result.stdout.decode().splitlines()) == 3
    assert b"Traceback" not in result.stderr
