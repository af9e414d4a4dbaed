"""The run folder's lock (issue 16): one process trains a folder at a time;
the lock is released at the end, and one left by a dead process is taken
over with a note; ``textvae train`` (new, ``--resume`` or ``--overwrite``)
or ``textvae mnist train`` on a folder being trained is one error line and
changes nothing there."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from textvae.errors import TextVAEError
from textvae.run_lock import LOCK_FILE, RunLock, holder

from conftest import TINY_FLAGS
from test_cli import assert_one_error_line
from test_training import records


ROOT = Path(__file__).resolve().parents[1]


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


def test_the_mnist_command_takes_the_lock_too(cli, tmp_path):
    from test_image_model import TINY_FLAGS as IMAGE_FLAGS

    run = tmp_path / "mnist"
    run.mkdir()
    with RunLock(run):
        for flags in ([], ["--overwrite"]):
            result = cli("mnist", "train", "--out", run, *IMAGE_FLAGS, *flags)
            assert_one_error_line(result, f"is being trained by process {os.getpid()}")
        assert [p.name for p in run.iterdir()] == [LOCK_FILE]
