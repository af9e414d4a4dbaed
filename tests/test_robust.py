"""Nothing lost, nothing hangs (issue 16): the finite-loss guard, the run
folder's lock, recovery after a crash, failed writes (disk full, read-only
folder) and what ``--resume --set`` does with each override."""

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import textvae.training.trainer as trainer_module
from textvae.errors import TextVAEError
from textvae.run_folder import find_checkpoint, save_weights
from textvae.run_lock import LOCK_FILE, RunLock, holder
from textvae.training.checkpoint import save_checkpoint
from textvae.training.state import CollapseState, PlateauState, TrainState

from conftest import TINY_FLAGS
from test_cli import assert_one_error_line
from test_training import RESUME_FLAGS, STEPS, make_trainer, records, train_cli, uninterrupted  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


def weights_equal(a: Path, b: Path) -> bool:
    x, y = load_file(a), load_file(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def no_tmp_left(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


# --------------------------------------------------------------- the guard
def poison(monkeypatch, trainer, bad_steps):
    """Make the loss NaN at the (1-based) ``bad_steps``; returns the weights seen at the start of each step."""
    real, seen = trainer_module.elbo_loss, {}

    def loss(out, beta, objective):
        step = trainer.state.step + 1
        seen[step] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        value = real(out, beta, objective)
        return value * float("nan") if step in bad_steps else value

    monkeypatch.setattr(trainer_module, "elbo_loss", loss)
    return seen


def test_a_non_finite_loss_skips_the_step_and_is_counted(word_tokenizer, tmp_path, monkeypatch):
    run = tmp_path / "run"
    trainer = make_trainer(word_tokenizer, run, max_steps=8, epochs=100, eval_every=4, checkpoint_every=4)
    seen = poison(monkeypatch, trainer, {2, 3, 5})
    state = trainer.fit()
    assert state.step == 8 and state.stop_reason == "max_steps"
    for step in (2, 3, 5):  # a skipped step leaves the weights as they were
        assert all(torch.equal(seen[step][k], seen[step + 1][k]) for k in seen[step])
    assert not all(torch.equal(seen[1][k], seen[2][k]) for k in seen[1])  # a good step moves them
    assert (state.guard.skipped, state.guard.streak) == (3, 0)
    train = {r["step"]: r for r in records(run, "train")}
    assert math.isnan(train[2]["loss"]) and math.isfinite(train[4]["loss"])
    assert "skipped_steps" not in train[1] and train[3]["skipped_steps"] == 2 and train[8]["skipped_steps"] == 3
    saved = json.loads((find_checkpoint(run) / "state.json").read_text())
    assert saved["guard"] == {"streak": 0, "skipped": 3}  # a resumed run goes on counting
    assert TrainState.from_dict(saved).guard.skipped == 3


def test_steps_non_finite_in_a_row_stop_the_run_keeping_the_checkpoint(word_tokenizer, tmp_path, monkeypatch):
    run = tmp_path / "run"
    trainer = make_trainer(word_tokenizer, run, max_steps=50, epochs=100, checkpoint_every=2, max_nonfinite_steps=4)
    poison(monkeypatch, trainer, set(range(3, 100)))
    with pytest.raises(TextVAEError, match="training diverged: 4 steps in a row .* the last at step 6"):
        trainer.fit()
    saved = json.loads((find_checkpoint(run) / "state.json").read_text())
    assert saved["step"] == 4 and saved["guard"] == {"streak": 2, "skipped": 2}
    weights = load_file(find_checkpoint(run) / "model.safetensors")
    assert all(bool(torch.isfinite(t).all()) for t in weights.values())


def test_non_finite_validation_decides_nothing(word_tokenizer, tmp_path, monkeypatch):
    run = tmp_path / "run"
    trainer = make_trainer(word_tokenizer, run, max_steps=8, epochs=100, eval_every=2, lr_patience=1,
                           early_stop_patience=1)
    nan = float("nan")
    monkeypatch.setattr(trainer, "evaluate", lambda: {"elbo": nan, "rec": nan, "kl": nan, "mi": nan, "au": 0,
                                                      "au_variances": [0.0] * 4})
    state = trainer.fit()
    assert state.step == 8 and state.stop_reason == "max_steps"  # no early stop
    assert state.since_best == 0 and state.best_loss == math.inf and state.saved_best == math.inf
    assert state.plateau == PlateauState() and state.lr == 0.01  # no decay
    assert state.collapse == CollapseState()  # no collapse warning
    assert not (run / "model.safetensors").exists()  # no NaN "best" weights
    assert len(records(run, "valid")) == 5  # logged all the same (4 validations and the final one)


def test_weights_that_are_not_finite_are_never_written(tmp_path):
    model = torch.nn.Linear(3, 2)
    save_weights(model, tmp_path / "model.safetensors")
    optimizer = torch.optim.Adam(model.parameters())
    save_checkpoint(tmp_path, model, optimizer, TrainState(step=1))
    before = (tmp_path / "model.safetensors").read_bytes(), (tmp_path / "checkpoint" / "model.safetensors").read_bytes()
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    with pytest.raises(TextVAEError, match="weight weight is not finite"):
        save_weights(model, tmp_path / "model.safetensors")
    with pytest.raises(TextVAEError, match="the last one is kept"):
        save_checkpoint(tmp_path, model, optimizer, TrainState(step=2))
    after = (tmp_path / "model.safetensors").read_bytes(), (tmp_path / "checkpoint" / "model.safetensors").read_bytes()
    assert after == before and no_tmp_left(tmp_path)


def test_a_diverging_run_is_one_error_line(cli, shared_corpus, tmp_path):
    run = tmp_path / "run"
    result = cli("train", "--data", shared_corpus, "--out", run, *TINY_FLAGS, "--set", "train.lr=1e30",
                 "--set", "train.optimizer=sgd", "--set", "train.grad_clip=0", "--set", "train.max_nonfinite_steps=5",
                 "--set", "train.checkpoint_every=2", "--set", "train.epochs=50")
    assert_one_error_line(result, "training diverged", "train.lr")
    assert result.code == 2
    for path in [run / "model.safetensors", find_checkpoint(run) / "model.safetensors"]:
        if path.exists():
            assert all(bool(torch.isfinite(t).all()) for t in load_file(path).values())


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1e400"])
def test_an_infinite_learning_rate_is_refused(cli, shared_corpus, tmp_path, value):
    result = cli("train", "--data", shared_corpus, "--out", tmp_path / "run", *TINY_FLAGS, "--set", f"train.lr={value}")
    assert_one_error_line(result, "train.lr")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------- the lock
def test_a_lock_is_exclusive_and_released(tmp_path):
    with RunLock(tmp_path):
        assert holder(tmp_path)["pid"] == os.getpid()
        with pytest.raises(TextVAEError, match=f"is being trained by process {os.getpid()}"):
            RunLock(tmp_path).acquire()
    assert holder(tmp_path) is None and not (tmp_path / LOCK_FILE).exists()
    with RunLock(tmp_path):  # taken again after release
        pass


def test_a_stale_lock_is_taken_over_with_a_note(tmp_path, caplog):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 2**22 + 17, "host": "elsewhere"}))  # its process is gone
    with caplog.at_level("INFO", logger="textvae"), RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert f"taking over the lock left by process {2**22 + 17} on host elsewhere" in caplog.text


def wait_for(condition, timeout=180.0, process=None):
    deadline = time.monotonic() + timeout
    while not condition():
        assert process is None or process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_second_process_cannot_train_a_folder_being_trained(cli, shared_corpus, tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "textvae", "-q", "train", "--data", str(shared_corpus), "--out",
                              str(run), *TINY_FLAGS, "--set", "train.epochs=100000"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        wait_for(lambda: (run / "metrics.jsonl").exists() and (run / "metrics.jsonl").stat().st_size > 0, process=first)
        config = (run / "config.json").read_bytes()
        for args in (["--data", shared_corpus, "--out", run, *TINY_FLAGS], ["--resume", run],
                     ["--data", shared_corpus, "--out", run, "--overwrite", *TINY_FLAGS]):
            result = cli("train", *args)
            assert_one_error_line(result, f"{run} is being trained by process {first.pid}")
            assert result.code == 2
        assert (run / "config.json").read_bytes() == config
        steps = [r["step"] for r in records(run, "train")]
        assert steps == list(range(1, len(steps) + 1))  # one run's records, in order
    finally:
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=120)
    assert first.returncode == 130 and b"Traceback" not in err
    assert not (run / LOCK_FILE).exists() and holder(run) is None


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


# ------------------------------------------------------- resume overrides
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


def test_the_mnist_command_takes_the_lock_too(cli, tmp_path):
    from test_image_model import TINY_FLAGS as IMAGE_FLAGS

    run = tmp_path / "mnist"
    run.mkdir()
    with RunLock(run):
        for flags in ([], ["--overwrite"]):
            result = cli("mnist", "train", "--out", run, *IMAGE_FLAGS, *flags)
            assert_one_error_line(result, f"is being trained by process {os.getpid()}")
        assert [p.name for p in run.iterdir()] == [LOCK_FILE]
