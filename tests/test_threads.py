"""Threads that follow the machine's load (``textvae/threads.py``)."""

import sys
import time

import pytest
import torch

from textvae import threads
from textvae.threads import ThreadGovernor, busy_seconds, threads_for

STAT = """cpu  900 0 300 5000 10 0 5 0 0 0
cpu0 400 0 100 2500 5 0 2 0 0 0
cpu1 500 0 200 2500 5 0 3 0 0 0
intr 1 2 3
ctxt 77
"""


def test_busy_seconds_sums_busy_ticks_of_the_allowed_cpus(tmp_path, monkeypatch):
    path = tmp_path / "stat"
    path.write_text(STAT)
    monkeypatch.setattr(threads.os, "sysconf", lambda name: 100)
    assert busy_seconds(str(path), {0, 1}) == pytest.approx((400 + 100 + 2 + 500 + 200 + 3) / 100)
    assert busy_seconds(str(path), {1}) == pytest.approx(7.03)  # idle and iowait are not busy
    assert busy_seconds(str(path), {5}) is None
    assert busy_seconds(str(tmp_path / "missing"), {0}) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/stat")
def test_busy_seconds_counts_this_process_work():
    before, own = busy_seconds(), time.process_time()
    while time.process_time() - own < 0.3:
        pass
    assert busy_seconds() - before >= 0.2


@pytest.mark.parametrize("others,cores,ceiling,expected", [
    (0.0, 2, 2, 2), (0.3, 2, 2, 2), (0.7, 2, 2, 1), (1.0, 2, 2, 1), (3.0, 2, 2, 1),
    (0.0, 8, 4, 4), (5.2, 8, 4, 3), (0.0, 2, 1, 1),
])
def test_one_thread_per_free_core_within_the_ceiling(others, cores, ceiling, expected):
    assert threads_for(others, cores, ceiling) == expected


class Machine:
    """A fake clock and CPU accounting: this process uses ``ours`` cores, the
    others ``neighbours`` cores."""

    def __init__(self):
        self.now, self.busy, self.own = 0.0, 0.0, 0.0
        self.ours, self.neighbours = 2.0, 0.0
        self.calls = []

    def run(self, seconds):
        self.now += seconds
        self.own += self.ours * seconds
        self.busy += (self.ours + self.neighbours) * seconds

    def governor(self, **kwargs):
        return ThreadGovernor(ceiling=2, cores=2, busy=lambda: self.busy, own=lambda: self.own,
                              clock=lambda: self.now, set_threads=self.calls.append, **kwargs)


def test_the_governor_gives_a_busy_neighbour_its_core_and_takes_it_back():
    machine = Machine()
    governor = machine.governor(first_look=1.0, interval=5.0)
    assert governor.active and governor.tick() == 2
    machine.neighbours, machine.ours = 0.67, 1.33  # a busy process arrives: the kernel shares the cores
    machine.run(0.5)
    assert governor.tick() == 2 and machine.calls == []  # not measured yet
    machine.run(0.5)
    assert governor.tick() == 1 and machine.calls == [1]
    assert governor.others == pytest.approx(0.67)
    machine.neighbours, machine.ours = 1.0, 1.0
    machine.run(4.0)
    assert governor.tick() == 1  # within the interval: no new decision
    machine.run(1.0)
    assert governor.tick() == 1 and machine.calls == [1]
    machine.neighbours, machine.ours = 0.05, 1.0  # it left
    machine.run(5.0)
    assert governor.tick() == 2 and machine.calls == [1, 2]


def test_the_governor_is_inert_where_it_cannot_measure():
    calls = []
    governor = ThreadGovernor(ceiling=2, cores=2, busy=lambda: None, set_threads=calls.append)
    assert not governor.active and governor.tick() == 2 and calls == []


def test_a_fixed_thread_count_or_a_gpu_has_no_governor():
    before = torch.get_num_threads()
    try:
        assert threads.govern(2, torch.device("cpu")) is None
        assert torch.get_num_threads() == 2
        assert threads.govern(0, torch.device("cuda")) is None
        torch.set_num_threads(1)  # a ceiling of one thread leaves nothing to choose
        assert threads.govern(0, torch.device("cpu")) is None
    finally:
        torch.set_num_threads(before)


def test_training_drops_to_one_thread_beside_a_busy_process(word_tokenizer, tmp_path, monkeypatch):
    from test_training import make_trainer

    start = time.monotonic()

    def busy():  # a neighbour that keeps one core busy, on top of this process's own work
        return time.process_time() + (time.monotonic() - start)

    monkeypatch.setattr(threads, "busy_seconds", busy)
    monkeypatch.setattr(threads, "_affinity", lambda: {0, 1})
    monkeypatch.setattr(threads, "FIRST_LOOK", 0.0)
    monkeypatch.setattr(threads, "_process", None)  # the test's governor leaves with it
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        trainer = make_trainer(word_tokenizer, tmp_path / "run", max_steps=3, epochs=100)
        assert trainer.threads is not None
        trainer.fit()
        assert torch.get_num_threads() == 1 and trainer.threads.others == pytest.approx(1.0, abs=0.1)
        assert threads.describe_threads() == "1-2 threads (load-governed)"
        again = threads.govern(0, torch.device("cpu"))  # the next job starts from the same ceiling
        assert again is not None and again.ceiling == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
