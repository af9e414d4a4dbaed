"""Built-in models by name wherever a RUN is accepted (builtin.py): an
existing path wins, an unknown name is one error listing them, and they are
read-only."""

import json
import shutil

import pytest

from textvae import builtin
from textvae.errors import TextVAEError
from textvae.model import TextVAE


@pytest.fixture
def builtins(trained_run, tmp_path, monkeypatch):
    """A package folder of built-in models holding one, ``tiny``."""
    folder = tmp_path / "pretrained"
    shutil.copytree(trained_run, folder / "tiny", ignore=shutil.ignore_patterns("checkpoint*", "metrics.jsonl"))
    (folder / "tiny" / "card.json").write_text(json.dumps({"description": "a tiny test model",
                                                          "figures": {"exact match": "0.0%"}}))
    monkeypatch.setattr(builtin, "PRETRAINED_DIR", folder)
    return folder


def test_a_builtin_name_works_wherever_a_run_is_accepted(cli, builtins, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = TextVAE.from_pretrained("tiny")
    assert model.latent_dim == 4
    for args in (["sample", "tiny", "-n", "2", "--seed", "0"], ["reconstruct", "tiny", "the cat sat on the mat"],
                 ["encode", "tiny", "the cat"], ["complete", "tiny", "the man", "-n", "2", "--seed", "0"],
                 ["interpolate", "tiny", "the cat sat", "the dog ran", "--steps", "3"]):
        result = cli("-q", *args)
        assert result.code == 0 and result.out_lines, (args, result.err)
    listed = cli("models")
    assert listed.code == 0 and "tiny: a tiny test model" in listed.out and "exact match: 0.0%" in listed.out
    assert json.loads(cli("models", "--json").out_lines[0])["name"] == "tiny"


def test_an_existing_path_wins_over_a_builtin_name(cli, builtins, trained_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()  # a folder named like the built-in model, but not a run
    result = cli("sample", "tiny", "-n", "1")
    assert result.code == 2 and "tiny is not a textvae run directory" in result.err


def test_an_unknown_name_is_one_error_listing_the_builtin_models(cli, builtins, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("sample", "wordnett", "-n", "1")
    assert result.code == 2
    assert result.err_lines == ["textvae: error: wordnett is neither a run folder nor a built-in model "
                                "(built-in models: tiny)"]
    with pytest.raises(TextVAEError, match="built-in models: tiny"):
        TextVAE.from_pretrained("nope")


def test_builtin_models_are_read_only_for_fit_prior(cli, builtins, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for run in (builtins / "tiny", "tiny"):  # by its folder or by its name
        result = cli("fit-prior", run, "--kind", "exemplar")
        assert result.code == 2 and result.err_lines == ["textvae: error: built-in models are read-only; "
                                                         "copy the folder to fit a new prior"]


def test_info_reports_on_a_builtin_model_by_name(cli, builtins, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("info", "tiny", "--get", "weights")
    assert result.code == 0 and result.out_lines == ["true"]
    assert cli("info", "runs/none").code == 2  # a path that does not exist stays a path


def test_a_missing_path_is_a_missing_folder_not_a_model_name(cli, builtins, tmp_path):
    result = cli("sample", tmp_path / "nothing", "-n", "1")
    assert result.code == 2 and result.err_lines == [f"textvae: error: {tmp_path / 'nothing'} is not a run "
                                                     "directory (no such folder)"]


def test_a_config_that_does_not_fit_its_weights_fails_before_building(cli, trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = json.loads((run / "config.json").read_text())
    config["model"]["hidden_dim"] = 30000  # would need gigabytes if built
    (run / "config.json").write_text(json.dumps(config))
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = cli("sample", run, "-n", "1")
    assert result.code == 2 and "does not fit its weights" in result.err_lines[-1]
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000  # KiB: nothing of 30000 built
