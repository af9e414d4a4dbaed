"""Names that need the Hugging Face hub fail fast and in one line offline."""

import time

import pytest

from textvae import hub

from conftest import TINY_FLAGS


def test_the_probe_answers_within_its_timeout():
    start = time.monotonic()
    assert hub.hub_reachable("https://hub.invalid", timeout=1.0) is False  # .invalid never resolves
    assert time.monotonic() - start < 3.0


def test_hf_hub_offline_means_unreachable(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.hub_reachable.cache_clear()
    try:
        assert hub.hub_reachable() is False and hub.local_only("some-org/some-model")
        assert not hub.local_only(".")  # a path is never looked up on the hub
    finally:
        hub.hub_reachable.cache_clear()


@pytest.mark.parametrize("flags, message", [
    (["--tokenizer", "some-org/no-such-tokenizer"], "unknown tokenizer 'some-org/no-such-tokenizer': not a local path"),
    (["--set", "model.decoder=hf:some-org/no-such-model"], "cannot load model.decoder=hf:some-org/no-such-model: not a "
                                                           "local folder"),
])
def test_an_unreachable_hub_is_one_error_line_in_seconds(cli, shared_corpus, tmp_path, monkeypatch, flags, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.hub_reachable.cache_clear()
    cli("train", "--data", shared_corpus, "--out", tmp_path / "warm", *TINY_FLAGS, *flags)  # imports are not timed
    start = time.monotonic()
    try:
        result = cli("train", "--data", shared_corpus, "--out", tmp_path / "run", *TINY_FLAGS, *flags)
    finally:
        hub.hub_reachable.cache_clear()
    assert time.monotonic() - start < 5.0
    assert result.code == 2 and result.err_lines[-1].startswith(f"textvae: error: {message}")
    assert not (tmp_path / "run").exists()
