"""What ``textvae train --resume RUN --set ...`` does with each override
(issue 16): a new learning rate is honoured from the step the run resumes
at, and logged; a change it cannot honour (model, tokenizer, data length,
batch size, optimizer, seed) is one error line that leaves the run as it
was; and an unchanged fixed field is accepted."""

import json

import pytest

from conftest import TINY_FLAGS
from test_cli import assert_one_error_line
from test_training import records


def test_resume_honours_a_new_learning_rate(cli, shared_corpus, tmp_path, caplog):
    run = tmp_path / "run"
    assert cli("-q", "train", "--data", shared_corpus, "--out", run, *TINY_FLAGS, "--set", "train.max_steps=4",
               "--set", "train.checkpoint_every=2").code == 0
    with caplog.at_level("INFO", logger="textvae"):
        result = cli("train", "--resume", run, "--set", "train.lr=0.002", "--set", "train.max_steps=7")
    assert result.code == 0, result.err
    assert "settings changed from step 4 on: train.max_steps 4 -> 7, train.lr 0.01 -> 0.002" in caplog.text
    lrs = {r["step"]: r["lr"] for r in records(run, "train")}
    assert lrs[4] == 0.01 and lrs[5] == lrs[7] == 0.002
    assert json.loads((run / "config.json").read_text())["train"]["lr"] == 0.002


@pytest.mark.parametrize("override, fragment", [
    ("model.hidden_dim=32", "model.hidden_dim cannot change"),
    ("tokenizer.spec=bpe", "tokenizer.spec cannot change"),
    ("data.max_length=5", "data.max_length cannot change"),
    ("train.batch_size=4", "train.batch_size cannot change"),
    ("train.optimizer=sgd", "train.optimizer cannot change"),
    ("train.seed=5", "train.seed cannot change"),
    ("train.ae_pretrain_fraction=0.5", "train.ae_pretrain_fraction cannot change"),
])
def test_resume_refuses_what_it_cannot_honour(cli, trained_run, override, fragment):
    before = {p: p.read_bytes() for p in trained_run.rglob("*") if p.is_file()}
    assert_one_error_line(cli("train", "--resume", trained_run, "--set", override), fragment)
    assert {p: p.read_bytes() for p in trained_run.rglob("*") if p.is_file()} == before


def test_resume_accepts_an_unchanged_fixed_field(cli, trained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert cli("-q", "train", "--resume", run, "--set", "train.batch_size=8", "--set", "train.seed=1").code == 0
