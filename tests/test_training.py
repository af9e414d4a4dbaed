"""The trainer: learning, run-folder files, and exact resume."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from textvae.data import TextBatches, tokenize_split
from textvae.run_folder import find_checkpoint
from textvae.training.state import TrainState
from textvae.training.trainer import Trainer

from conftest import TINY_FLAGS, TRAIN, VALID, tiny_config


def records(run_dir, split=None):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if split is None or r["split"] == split]


def make_trainer(tokenizer, run_dir, objective=None, **train):
    from textvae.model import TextVAE

    config = tiny_config(train=train, **({"objective": objective} if objective else {}))
    torch.manual_seed(config.train.seed)
    model = TextVAE(config, tokenizer)
    train_split = tokenize_split("train", TRAIN, tokenizer, config.data.max_length)
    valid_split = tokenize_split("valid", VALID, tokenizer, config.data.max_length)
    train_data = TextBatches(train_split, tokenizer, config.train.batch_size, config.train.seed, True, 2)
    valid_data = TextBatches(valid_split, tokenizer, config.train.eval_batch_size, shuffle=False)
    run_dir.mkdir()
    return Trainer(model, config.train, config.objective, train_data, valid_data, run_dir)


def test_training_loss_falls_and_the_run_folder_is_complete(word_tokenizer, tmp_path):
    trainer = make_trainer(word_tokenizer, tmp_path / "run", max_steps=30, epochs=100, eval_every=10, lr=0.02)
    state = trainer.fit()
    assert state.step == 30 and state.finished and state.stop_reason == "max_steps"
    train = records(tmp_path / "run", "train")
    assert [r["step"] for r in train] == list(range(1, 31))
    assert {"loss", "rec", "kl", "kl_weight", "lr", "epoch"} <= set(train[0])
    first, last = sum(r["loss"] for r in train[:5]) / 5, sum(r["loss"] for r in train[-5:]) / 5
    assert last < 0.8 * first
    valid = records(tmp_path / "run", "valid")
    assert [r["step"] for r in valid] == [10, 20, 30]
    assert {"rec", "kl", "elbo", "mi", "au"} <= set(valid[0])
    assert valid[-1]["elbo"] > valid[0]["elbo"]
    assert (tmp_path / "run" / "model.safetensors").exists()
    checkpoint = find_checkpoint(tmp_path / "run")
    assert {p.name for p in checkpoint.iterdir()} >= {"model.safetensors", "optimizer.pt", "state.json"}
    assert json.loads((checkpoint / "state.json").read_text())["step"] == 30


def test_validation_once_per_epoch_by_default(word_tokenizer, tmp_path):
    trainer = make_trainer(word_tokenizer, tmp_path / "run", epochs=2)
    state = trainer.fit()
    steps_per_epoch = trainer.train_data.num_batches(0)
    assert state.step == 2 * steps_per_epoch and state.epoch == 2
    assert [r["step"] for r in records(tmp_path / "run", "valid")] == [steps_per_epoch, 2 * steps_per_epoch]


def test_best_weights_are_those_of_the_best_validation(word_tokenizer, tmp_path):
    run = tmp_path / "run"
    trainer = make_trainer(word_tokenizer, run, max_steps=12, epochs=100, eval_every=4, lr=0.02)
    trainer.fit()
    best = min(records(run, "valid"), key=lambda r: -r["elbo"])
    from textvae.evaluation.elbo import evaluate_elbo

    load = load_file(run / "model.safetensors")
    trainer.model.load_state_dict(load, strict=False)
    result = evaluate_elbo(trainer.model, trainer.valid_data.iterate(0), torch.device("cpu"))
    assert result["elbo"] == pytest.approx(best["elbo"], rel=1e-5)


def test_a_beta_vae_keeps_the_weights_of_its_own_objective_not_of_the_elbo(word_tokenizer, tmp_path):
    """beta < 1: the best weights minimise rec + beta KL; the -ELBO would pick an early step."""
    run = tmp_path / "run"
    trainer = make_trainer(word_tokenizer, run, objective={"kl_weight": 0.02}, max_steps=40, epochs=100,
                           eval_every=4, lr=0.02)
    trainer.fit()
    valid = records(run, "valid")
    by_objective = min(valid, key=lambda r: r["rec"] + 0.02 * r["kl"])
    assert by_objective["step"] != min(valid, key=lambda r: -r["elbo"])["step"]  # the two disagree here
    assert by_objective["objective"] == pytest.approx(by_objective["rec"] + 0.02 * by_objective["kl"], rel=1e-6)
    from textvae.evaluation.elbo import evaluate_elbo

    trainer.model.load_state_dict(load_file(run / "model.safetensors"), strict=False)
    result = evaluate_elbo(trainer.model, trainer.valid_data.iterate(0), torch.device("cpu"))
    assert result["rec"] == pytest.approx(by_objective["rec"], rel=1e-5)


# ------------------------------------------------------------ exact resume
STEPS = 16  # 50 sentences in batches of 8: 7 steps an epoch, so both halves cross an epoch boundary
RESUME_FLAGS = [*TINY_FLAGS, "--set", "train.epochs=10", "--set", "train.eval_every=5", "--set", "train.seed=3",
                "--set", "train.checkpoint_every=3", "--set", "train.lr_patience=1", "--set", "model.dropout=0.1",
                "--set", "train.log_every=5",  # the run stops at step 8, inside a logging interval
                "--set", "model.word_dropout=0.25", "--set", "objective.kl_schedule=linear",
                "--set", "objective.kl_warmup_steps=10", "-q"]


def train_cli(*args):
    from textvae.cli import main

    args = [str(a) for a in args]
    quiet = ["-q"] if "-q" in args else []
    code = main([*quiet, "train", *[a for a in args if a != "-q"]])
    assert code == 0


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, shared_corpus):
    run = tmp_path_factory.mktemp("resume") / "A"
    train_cli("--data", shared_corpus, "--out", run, *RESUME_FLAGS, "--set", f"train.max_steps={STEPS}")
    return run


def untyped(state: dict) -> dict:
    """A state.json as the trainer wrote it before its state was typed: one flat dict."""
    flat = {k: v for k, v in state.items() if k not in ("best_loss", "plateau", "collapse", "aggressive")}
    flat.update(plateau_best=state["best_loss"], bad_evals=state["plateau"]["bad_evals"],
                decays=state["plateau"]["decays"], collapse_streak=state["collapse"]["streak"],
                collapse_warned=state["collapse"]["warned"], aggressive=state["aggressive"]["active"],
                aggressive_best_mi=state["aggressive"]["best_mi"])
    return flat


@pytest.mark.parametrize("leftover", ["none", "garbage_tmp", "only_old", "untyped_state"])
def test_resume_is_exact(uninterrupted, shared_corpus, tmp_path, leftover):
    run = tmp_path / "B"
    train_cli("--data", shared_corpus, "--out", run, *RESUME_FLAGS, "--set", f"train.max_steps={STEPS // 2}")
    state_file = run / "checkpoint" / "state.json"
    assert json.loads(state_file.read_text())["step"] == STEPS // 2
    if leftover == "untyped_state":  # a run folder written before the state was typed
        state_file.write_text(json.dumps(untyped(json.loads(state_file.read_text())), indent=2))
    elif leftover == "garbage_tmp":  # a checkpoint write killed half-way
        (run / "checkpoint.tmp").mkdir()
        (run / "checkpoint.tmp" / "model.safetensors").write_bytes(b"\x00garbage")
        (run / "checkpoint.tmp" / "state.json").write_text("{not json")
    elif leftover == "only_old":  # killed between the two renames
        (run / "checkpoint").rename(run / "checkpoint.old")
    train_cli("--resume", run, "--set", f"train.max_steps={STEPS}", "-q")
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["step"] == STEPS and state["epoch"] == STEPS // 7
    assert not (run / "checkpoint.tmp").exists() and not (run / "checkpoint.old").exists()
    a = load_file(uninterrupted / "checkpoint" / "model.safetensors")
    b = load_file(run / "checkpoint" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # The log holds each step once, as in the uninterrupted run.
    assert [r["step"] for r in records(run)] == [r["step"] for r in records(uninterrupted)]
    assert [r["loss"] for r in records(run, "train")] == [r["loss"] for r in records(uninterrupted, "train")]
    assert json.loads((run / "config.json").read_text())["train"]["max_steps"] == STEPS


def test_resuming_a_finished_run_trains_no_further(uninterrupted, tmp_path):
    run = tmp_path / "A"
    shutil.copytree(uninterrupted, run)
    train_cli("--resume", run, "-q")
    a = load_file(uninterrupted / "checkpoint" / "model.safetensors")
    b = load_file(run / "checkpoint" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == STEPS


def test_a_signal_stops_with_a_checkpoint_and_names_the_resume_command(word_tokenizer, tmp_path, capsys):
    import signal

    trainer = make_trainer(word_tokenizer, tmp_path / "run", max_steps=30, epochs=100, log_every=4)
    trainer.command = "textvae mnist train"  # what the MNIST command passes
    trainer.signals.handle(signal.SIGTERM, None)  # as if SIGTERM arrived during the first step
    state = trainer.fit()
    assert state.step == 1 and not state.finished and trainer.interrupted
    assert json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())["step"] == 1
    assert f"continue with `textvae mnist train --resume {tmp_path / 'run'}`" in capsys.readouterr().err


def test_a_signal_during_the_final_checkpoint_still_stops_as_interrupted(word_tokenizer, tmp_path, capsys):
    """Ctrl-C after the last step's poll (the final validation or checkpoint)
    is not swallowed: the run ends as interrupted, its checkpoint saved."""
    import signal

    trainer = make_trainer(word_tokenizer, tmp_path / "run", max_steps=3, epochs=100, log_every=4)
    checkpoint = trainer.checkpoint

    def checkpoint_then_signal():
        checkpoint()
        if trainer.state.finished:
            trainer.signals.handle(signal.SIGINT, None)

    trainer.checkpoint = checkpoint_then_signal
    state = trainer.fit()
    assert state.step == 3 and trainer.interrupted
    assert json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())["step"] == 3
    assert "interrupted at step 3; checkpoint saved" in capsys.readouterr().err


def test_training_log_lines_average_over_their_interval(word_tokenizer, tmp_path):
    trainer = make_trainer(word_tokenizer, tmp_path / "run", max_steps=8, epochs=100, log_every=4)
    seen = []
    step_fn = trainer.step_fn
    trainer.step_fn = lambda batch, beta: seen.append(step_fn(batch, beta)) or seen[-1]
    trainer.fit()
    logged = records(tmp_path / "run", "train")
    assert [r["step"] for r in logged] == [4, 8]
    for record, window in zip(logged, (seen[:4], seen[4:])):
        assert record["rec"] == pytest.approx(sum(s["rec"] for s in window) / 4)


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_the_optimiser_is_fused_and_updates_like_the_plain_one(name):
    from textvae.config import TrainConfig
    from textvae.training.trainer import build_optimizer

    torch.manual_seed(0)
    fused_model, plain_model = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)
    plain_model.load_state_dict(fused_model.state_dict())
    config = TrainConfig(optimizer=name, lr=0.01, momentum=0.9 if name == "sgd" else 0.0)
    fused = build_optimizer(fused_model, config)
    assert fused.defaults["fused"] is True
    plain = (torch.optim.SGD(plain_model.parameters(), lr=0.01, momentum=0.9) if name == "sgd"
             else torch.optim.Adam(plain_model.parameters(), lr=0.01))
    x = torch.randn(16, 8)
    for _ in range(3):
        for model, optimizer in ((fused_model, fused), (plain_model, plain)):
            optimizer.zero_grad()
            model(x).pow(2).sum().backward()
            optimizer.step()
    for a, b in zip(fused_model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b)


def test_a_checkpoint_of_an_unfused_optimiser_resumes_with_the_fused_kernels(tmp_path):
    from textvae.config import TrainConfig
    from textvae.training.checkpoint import load_checkpoint, save_checkpoint
    from textvae.training.trainer import build_optimizer

    model = torch.nn.Linear(4, 2)
    old = torch.optim.Adam(model.parameters(), lr=0.01)  # as written before the fused kernels
    model(torch.randn(3, 4)).sum().backward()
    old.step()
    save_checkpoint(tmp_path, model, old, TrainState(step=1))
    assert old.param_groups[0]["fused"] is None
    resumed = build_optimizer(model, TrainConfig(lr=0.01))
    assert load_checkpoint(find_checkpoint(tmp_path), model, resumed) == TrainState(step=1)
    assert resumed.param_groups[0]["fused"] is True
    torch.testing.assert_close(resumed.state[model.weight]["exp_avg"], old.state[model.weight]["exp_avg"])
    resumed.step()  # the fused kernel accepts the restored state


# ------------------------------------------------------- kill -9, at random
def wait_until(condition, process, seconds):
    """Poll ``condition`` for up to ``seconds`` while ``process`` runs; whether it came true."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        if condition():
            return True
        time.sleep(0.01)
    return False


def logged_step(run) -> int:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return json.loads(lines[-1])["step"] if lines else 0
    except (OSError, ValueError, KeyError):
        return 0  # not there yet, or a line being written


@pytest.mark.parametrize("kills", [3, pytest.param(20, marks=pytest.mark.slow)])
def test_kill_9_at_random_moments_then_resume_ends_bitwise_equal(uninterrupted, shared_corpus, tmp_path, kills):
    """A training process killed with SIGKILL ``kills`` times at random
    moments (start-up, training steps, checkpoint and log writes), each time
    continued (`--resume`, or `--overwrite` when it died before writing its
    config), ends with the weights and log of the uninterrupted run."""
    import os
    import random
    import subprocess
    import sys
    import time

    rng = random.Random(kills)
    run = tmp_path / "K"
    flags = [str(f) for f in RESUME_FLAGS if f != "-q"]
    start = [sys.executable, "-m", "textvae", "-q", "train", "--data", str(shared_corpus), "--out", str(run), *flags,
             "--set", f"train.max_steps={STEPS}", "--overwrite"]
    resume = [sys.executable, "-m", "textvae", "-q", "train", "--resume", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    moments = []
    for attempt in range(kills + 1):
        command = resume if (run / "config.json").exists() else start
        err_file = tmp_path / f"stderr{attempt}"
        with open(err_file, "wb") as err:
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=env)
        if attempt < kills:
            if rng.random() < 0.5:  # a moment of the training itself: after a random logged step
                target = rng.randint(logged_step(run) + 1, STEPS)
                wait_until(lambda: logged_step(run) >= target, process, 300)
            else:  # any moment: start-up, data, the first steps
                time.sleep(rng.uniform(0.0, 4.0))
            moments.append(logged_step(run))
            process.kill()
            process.wait()
        else:
            process.wait(timeout=600)
            assert process.returncode == 0, err_file.read_text()
            assert "Traceback" not in err_file.read_text()
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")] and not (run / "train.lock").exists()
    for name in ("checkpoint/model.safetensors", "model.safetensors"):
        a, b = load_file(uninterrupted / name), load_file(run / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (name, moments)
    assert [(r["step"], r["split"]) for r in records(run)] == [(r["step"], r["split"]) for r in records(uninterrupted)]
    assert [r["loss"] for r in records(run, "train")] == [r["loss"] for r in records(uninterrupted, "train")]
