"""Nothing lost after a crash or a failed write (issue 16): a run killed
before its first checkpoint trains again exactly, one killed while being set
up is replaced with ``--overwrite`` (which replaces run folders and nothing
else), a torn last line of metrics.jsonl is skipped with a note, and a full
disk (faked, or a real tmpfs) or a read-only folder is one error line that
keeps the last checkpoint and weights and leaves no half-written file."""

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import textvae.training.trainer as trainer_module
from textvae.errors import TextVAEError
from textvae.run_folder import save_weights
from textvae.run_lock import LOCK_FILE

from conftest import TINY_FLAGS, no_tmp_left
from test_cli import assert_one_error_line
from test_training import RESUME_FLAGS, STEPS, records, train_cli, uninterrupted  # noqa: F401


def weights_equal(a: Path, b: Path) -> bool:
    x, y = load_file(a), load_file(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


# ------------------------------------------------------------------ recovery
def test_a_run_killed_before_its_first_checkpoint_starts_again_exactly(uninterrupted, shared_corpus, tmp_path, cli,  # noqa: F811
                                                                         caplog):
    run = tmp_path / "B"
    train_cli("--data", shared_corpus, "--out", run, *RESUME_FLAGS, "--set", "train.max_steps=2")
    for path in (run / "checkpoint").iterdir():  # as if killed before writing it ...
        path.unlink()
    (run / "checkpoint").rmdir()
    with open(run / "metrics.jsonl", "a") as handle:  # ... in the middle of a log line
        handle.write('{"step": 3, "split": "tra')
    (run / LOCK_FILE).write_text(json.dumps({"pid": 2**22 + 17}))  # and its lock left behind
    refused = cli("train", "--data", shared_corpus, "--out", run, *[f for f in RESUME_FLAGS if f != "-q"])
    assert_one_error_line(refused, "stopped before its first checkpoint", f"--resume {run}", "--overwrite")
    with caplog.at_level("INFO", logger="textvae"):
        train_cli("--resume", run, "--set", f"train.max_steps={STEPS}", "-q")
    assert "training it again from step 0 with its saved config" in caplog.text
    assert weights_equal(uninterrupted / "checkpoint" / "model.safetensors", run / "checkpoint" / "model.safetensors")
    assert [r["step"] for r in records(run)] == [r["step"] for r in records(uninterrupted)]


def test_a_run_killed_while_being_set_up_is_replaced_with_overwrite(cli, shared_corpus, tmp_path):
    run = tmp_path / "run"
    (run / "tokenizer").mkdir(parents=True)  # killed after the tokenizer, before config.json
    (run / LOCK_FILE).write_text(json.dumps({"pid": 2**22 + 17}))
    assert_one_error_line(cli("train", "--resume", run), "stopped while it was being set up", "--overwrite")
    refused = cli("train", "--data", shared_corpus, "--out", run, *TINY_FLAGS)
    assert_one_error_line(refused, "stopped before its first checkpoint", "--overwrite")
    assert "--resume" not in refused.err
    result = cli("-q", "train", "--data", shared_corpus, "--out", run, "--overwrite", *TINY_FLAGS,
                 "--set", "train.max_steps=2")
    assert result.code == 0, result.err


def test_overwrite_replaces_a_run_folder_and_nothing_else(cli, shared_corpus, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "notes.txt").write_text("an older run")
    result = cli("-q", "train", "--data", shared_corpus, "--out", run, "--overwrite", *TINY_FLAGS,
                 "--set", "train.max_steps=2")
    assert result.code == 0, result.err
    assert not (run / "notes.txt").exists() and (run / "checkpoint").is_dir() and not (run / LOCK_FILE).exists()
    other = tmp_path / "papers"
    other.mkdir()
    (other / "draft.tex").write_text("mine")
    assert_one_error_line(cli("train", "--data", shared_corpus, "--out", other, "--overwrite", *TINY_FLAGS),
                          "is not a run folder")
    assert (other / "draft.tex").read_text() == "mine"


def test_a_torn_last_metrics_line_is_skipped_with_a_note(trained_run, tmp_path, caplog):
    import shutil

    from textvae.run_folder import read_metrics, truncate_metrics

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    whole = read_metrics(run)
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 99, "spl')
    with caplog.at_level("WARNING", logger="textvae"):
        assert read_metrics(run) == whole
    assert "skipping its last line" in caplog.text
    truncate_metrics(run, 10**9)
    assert (run / "metrics.jsonl").read_text().endswith("}\n") and read_metrics(run) == whole
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines[:2] + ["{torn"] + lines[2:]) + "\n")
    with pytest.raises(TextVAEError, match="line 3 is not a JSON record"):  # damage inside is not a torn end
        read_metrics(run)


# ------------------------------------------------------------ failed writes
def full_disk(path):
    """What a write into a full disk does: part of the file, then ENOSPC."""
    Path(path).write_bytes(b"\x00" * 100)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_during_a_checkpoint_keeps_the_last_one(cli, shared_corpus, tmp_path, monkeypatch):
    import textvae.training.checkpoint as checkpoint_module

    run = tmp_path / "run"
    real_save, calls = checkpoint_module.torch.save, []

    def save(obj, path, *args, **kwargs):
        calls.append(path)
        return real_save(obj, path, *args, **kwargs) if len(calls) == 1 else full_disk(path)

    monkeypatch.setattr(checkpoint_module.torch, "save", save)
    result = cli("train", "--data", shared_corpus, "--out", run, *TINY_FLAGS, "--set", "train.checkpoint_every=3",
                 "--set", "train.max_steps=20")
    assert_one_error_line(result, "cannot write a checkpoint", "No space left on device", "is kept")
    assert result.code == 2
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 3 and no_tmp_left(run)


def test_a_full_disk_during_a_weights_write_keeps_the_last_weights(tmp_path, monkeypatch):
    import textvae.run_folder as run_folder

    model = torch.nn.Linear(3, 2)
    save_weights(model, tmp_path / "model.safetensors")
    before = (tmp_path / "model.safetensors").read_bytes()
    monkeypatch.setattr(run_folder, "save_model", lambda model, path: full_disk(path))
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(TextVAEError, match="cannot write .*model.safetensors: No space left on device"):
        save_weights(model, tmp_path / "model.safetensors")
    assert (tmp_path / "model.safetensors").read_bytes() == before and no_tmp_left(tmp_path)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 2 MiB tmpfs of our own (root only), or a skip that says why."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("problem", ["full", "read-only"])
def test_a_real_full_or_read_only_disk_is_one_line(cli, shared_corpus, small_tmpfs, monkeypatch, problem):
    """After the first checkpoint the tmpfs is filled (leaving 16 KiB: log
    lines fit, a checkpoint does not) or remounted read-only."""
    run = small_tmpfs / "run"
    real, calls = trainer_module.save_checkpoint, []

    def checkpoint(*args):
        real(*args)
        calls.append(1)
        if len(calls) == 1 and problem == "full":
            free = os.statvfs(small_tmpfs).f_bavail * os.statvfs(small_tmpfs).f_frsize
            (small_tmpfs / "filler").write_bytes(b"\x00" * (free - 16 * 1024))
        elif len(calls) == 1:
            subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)

    monkeypatch.setattr(trainer_module, "save_checkpoint", checkpoint)
    result = cli("train", "--data", shared_corpus, "--out", run, *TINY_FLAGS, "--set", "train.checkpoint_every=3",
                 "--set", "train.max_steps=20")
    why = "No space left on device" if problem == "full" else "Read-only file system"
    assert_one_error_line(result, "cannot write", why)
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 3 and no_tmp_left(run)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders (the tmpfs test covers root)")
def test_a_read_only_run_folder_is_one_line(cli, trained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    os.chmod(run, 0o555)
    try:
        result = cli("train", "--resume", run, "--set", "train.epochs=4")
        assert_one_error_line(result, str(run))
    finally:
        os.chmod(run, 0o755)
    assert no_tmp_left(run)
