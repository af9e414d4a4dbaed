"""``textvae serve`` on the command line: start-up errors are one line and
exit 2, and Ctrl-C stops a running server cleanly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

REPO = Path(__file__).resolve().parents[1]


def assert_one_error(result, *words: str) -> None:
    assert result.code == 2 and result.out == ""
    lines = result.err_lines
    assert len(lines) == 1 and lines[0].startswith("textvae: error: "), result.err
    for word in words:
        assert word in lines[0], lines[0]


def test_help_documents_the_address_and_the_limits(capsys):
    from textvae.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["serve", "--help"])
    text = capsys.readouterr().out
    assert stop.value.code == 0
    for flag in ("--host", "--port", "--map-data", "--max-n", "--max-steps", "--max-chars", "--max-sentences",
                 "127.0.0.1", "8000"):
        assert flag in text


def test_missing_run_folder(cli, tmp_path):
    assert_one_error(cli("serve", tmp_path / "nothing", "--port", "0"), "no such folder")


@pytest.mark.parametrize("flags,words", [
    (["--port", "70000"], "--port"),
    (["--port", "-1"], "--port"),
    (["--max-n", "0"], "--max-n"),
    (["--max-steps", "1"], "--max-steps"),
    (["--map-seconds", "nan"], "--map-seconds"),
    (["--host", "no-such-host.invalid", "--port", "0"], "unknown host"),
])
def test_bad_settings(cli, trained_run, flags, words):
    assert_one_error(cli("serve", trained_run, *flags), words)


def test_port_in_use(cli, trained_run):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert_one_error(cli("serve", trained_run, "--port", port), "in use", str(port))


def test_missing_map_data_file(cli, trained_run, tmp_path):
    assert_one_error(cli("serve", trained_run, "--port", "0", "--map-data", tmp_path / "none.txt"), "--map-data")


def test_serves_and_stops_cleanly_on_ctrl_c(trained_run):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "textvae", "serve", str(trained_run), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        seen = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                break
            seen.append(line)
            if "serving" in line:
                break
        url = seen[-1].split(" at ")[1].split()[0] if seen and "serving" in seen[-1] else None
        assert url and url.startswith("http://127.0.0.1:"), "".join(seen)
        with urllib.request.urlopen(url + "api/info", timeout=30) as answer:
            assert json.loads(answer.read())["latent_dim"] == 4
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "textvae: stopped"
