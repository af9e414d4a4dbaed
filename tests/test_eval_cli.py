"""The ``eval``, ``compare`` and ``plot`` commands on the tiny trained run:
``eval`` prints its table and stores the figures with their provenance,
``compare`` prints a Markdown table of the runs, ``plot`` writes PNG files
and prints their paths, and bad input to any of them is one error line."""

import contextlib
import io
import json
import math
import re
import shutil

import pytest

from conftest import TEST


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
    assert re.fullmatch(r"cpu, \d+ threads?, .+ \((no )?native bf16\)", stored["device"])
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


def test_a_long_evaluation_logs_its_progress_where_no_bar_shows(caplog):
    """In a log file (no terminal) the IW-NLL pass says how far it is and how
    long is left, once per tenth of the work, not once per batch."""
    import logging

    from textvae.evaluation.progress import LogProgress

    now = [0.0]
    progress = LogProgress(1000, "IW-NLL (500 samples)", "tokens", clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="textvae"):
        for _ in range(50):  # 50 batches of 20 tokens, 6 s each
            now[0] += 6.0
            progress.update(20)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 10
    assert lines[0] == "IW-NLL (500 samples): 100/1,000 tokens (10%), 0.5 min, about 4.5 min left"
    assert lines[-1] == "IW-NLL (500 samples): 1,000/1,000 tokens (100%), 5.0 min, about 0.0 min left"


def test_the_text_evaluation_counts_its_progress_in_tokens(evaluated, shared_corpus, monkeypatch):
    """The IW-NLL pass of ``evaluate_text`` reports every token of the split
    once (the batches come sorted by length, so sentences would mislead)."""
    import torch

    from textvae.data import load_splits
    from textvae.evaluation import text_eval
    from textvae.model import TextVAE

    seen = {}

    class Recorder:
        def __init__(self, total, desc, unit):
            seen.update(total=total, unit=unit, done=0)

        def update(self, n):
            seen["done"] += n

        def close(self):
            pass

    monkeypatch.setattr(text_eval, "progress", Recorder)
    run = evaluated[0]
    model = TextVAE.from_pretrained(run)
    split = load_splits(str(shared_corpus), model.tokenizer, ["valid"], model.config.data.max_length)["valid"]
    settings = text_eval.EvalSettings(iw_samples=2, batch_size=4, num_samples=2)
    result = text_eval.evaluate_text(model, split, settings, torch.device("cpu"))
    assert seen == {"total": result["tokens"], "unit": "tokens", "done": result["tokens"]}
