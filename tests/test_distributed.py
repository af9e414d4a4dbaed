"""Data-parallel training under torchrun: two CPU processes on gloo.

One torchrun launch runs ``textvae train`` four times in each process (a
language model; a VAE, then resumed; the same VAE without the break) through
``textvae.cli.main``. The launched script, written here, wraps ``Trainer.fit``
so that every rank saves its own final weights next to the run folder; the
library itself knows nothing of this. The tests then check that the ranks
agree, that the language model's weights are what plain gradient averaging
gives (computed here in one process from the two ranks' batches), that
resuming is exact, and that rank 0 alone wrote the run folder.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from conftest import TINY_FLAGS

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

LAUNCHED = '''
import json, os, sys
from safetensors.torch import save_file
import textvae.cli.train as train_cli
from textvae.cli import main
from textvae.training import distributed

# The runs share one process group: torch cannot reliably create the
# default group again in a torchrun worker (stale rendezvous keys), so the
# group that the first run creates is closed only at the end.
shutdown, distributed.shutdown = distributed.shutdown, lambda: None

fit = train_cli.Trainer.fit

def fit_and_save(self):
    state = fit(self)
    weights = {k: v.detach().clone().contiguous() for k, v in self.model.state_dict().items()}
    name = f"{self.run_dir.name}-step{state.step}-rank{os.environ['RANK']}.safetensors"
    save_file(weights, str(self.run_dir.parent / name))
    return state

train_cli.Trainer.fit = fit_and_save
for argv in json.loads(open(sys.argv[1]).read()):
    code = main(argv)
    if code:
        sys.exit(code)
shutdown()
'''

STEPS = 4  # language model: steps of 2 x 4 sentences (each rank has 6 batches an epoch)
SMALL = TINY_FLAGS + ["--set", "train.batch_size=4", "--set", "train.max_lr_decays=0"]
LM_FLAGS = ["--set", "model.latent_dim=0", "--set", "train.optimizer=sgd", "--set", "train.lr=1.0",
            "--set", "train.grad_clip=0", "--set", f"train.max_steps={STEPS}"]
# A VAE with everything that draws random numbers or keeps buffers: dropout, word
# dropout, BN-VAE, and autoencoder pretraining (the decoder is re-initialised at
# step 6 from each rank's own random stream); bf16 autocast on CPU.
VAE_FLAGS = ["--set", "model.dropout=0.2", "--set", "model.word_dropout=0.3", "--set", "model.bn_vae_gamma=0.6",
             "--set", "train.ae_pretrain_epochs=1", "--set", "train.precision=bf16",
             "--set", "train.max_steps=8", "--set", "train.eval_every=4"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory, shared_corpus) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    runs = [
        ["-q", "train", "--data", str(shared_corpus), "--out", str(root / "lm"), *SMALL, *LM_FLAGS],
        ["-q", "train", "--data", str(shared_corpus), "--out", str(root / "vae"), *SMALL, *VAE_FLAGS],
        ["-q", "train", "--resume", str(root / "vae"), "--set", "train.max_steps=10"],
        ["-q", "train", "--data", str(shared_corpus), "--out", str(root / "full"), *SMALL, *VAE_FLAGS,
         "--set", "train.max_steps=10"],
    ]
    (root / "runs.json").write_text(json.dumps(runs))
    (root / "launched.py").write_text(LAUNCHED)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
               str(root / "launched.py"), str(root / "runs.json")]
    with subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as process:
        try:
            output, _ = process.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            process.terminate()  # torchrun passes SIGTERM on to its workers (and kills them 30 s later)
            output, _ = process.communicate(timeout=60)
            pytest.fail("torchrun timed out:\n" + output[-3000:])
    assert process.returncode == 0, output[-6000:]
    return root


def load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different


def records(run: Path, split: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def test_ranks_hold_identical_weights(ddp_runs):
    for name in ("lm-step4", "vae-step8", "vae-step10", "full-step10"):
        rank0, rank1 = load(ddp_runs / f"{name}-rank0.safetensors"), load(ddp_runs / f"{name}-rank1.safetensors")
        assert_same(rank0, rank1)
    # the checkpoint, written by rank 0, holds those weights
    checkpoint = load(ddp_runs / "vae" / "checkpoint" / "model.safetensors")
    assert_same(checkpoint, load(ddp_runs / "vae-step10-rank1.safetensors"))
    assert any("mean_norm.running_var" in k for k in rank0)  # BN-VAE buffers were compared too


def test_run_folder_is_written_once(ddp_runs):
    for run, steps in (("lm", STEPS), ("vae", 10)):
        folder = ddp_runs / run
        assert (folder / "model.safetensors").exists() and (folder / "checkpoint" / "state.json").exists()
        assert json.loads((folder / "checkpoint" / "state.json").read_text())["step"] == steps
        # one record per log and evaluation, not one per rank
        assert [r["step"] for r in records(folder, "train")] == list(range(1, steps + 1))
    assert [r["step"] for r in records(ddp_runs / "vae", "valid")] == [4, 8]
    config = json.loads((ddp_runs / "vae" / "config.json").read_text())
    assert config["train"]["max_steps"] == 10 and config["train"]["device"] == "cpu"
    assert sorted(p.name for p in ddp_runs.iterdir() if p.is_dir()) == ["full", "lm", "vae"]


def test_resume_under_torchrun_is_exact(ddp_runs):
    """Stopped at step 8 and resumed to 10, the VAE (dropout, word dropout,
    latent samples: each rank's own noise) ends as the run without a break."""
    for rank in (0, 1):
        assert_same(load(ddp_runs / f"vae-step10-rank{rank}.safetensors"),
                    load(ddp_runs / f"full-step10-rank{rank}.safetensors"))
    assert [r["loss"] for r in records(ddp_runs / "vae", "train")] == \
        [r["loss"] for r in records(ddp_runs / "full", "train")]


def test_data_parallel_equals_averaged_gradients(ddp_runs, shared_corpus):
    """Two ranks, each taking its own batch, end where one process ends that
    steps on the mean of the two batch-mean losses (SGD, no clipping)."""
    from textvae.config import Config
    from textvae.data import TextBatches, load_splits
    from textvae.model import TextVAE
    from textvae.objectives import elbo_loss
    from textvae.tokenization import Tokenizer

    run = ddp_runs / "lm"
    config = Config.load(run / "config.json")
    tokenizer = Tokenizer.load(run / "tokenizer")
    train = load_splits(str(shared_corpus), tokenizer, ["train"], config.data.max_length)["train"]
    shards = [TextBatches(train, tokenizer, config.train.batch_size, config.train.seed, True,
                          config.data.bucket_batches, rank, 2) for rank in (0, 1)]

    def replay(ranks: tuple[int, ...]) -> tuple[TextVAE, list[float]]:
        torch.manual_seed(config.train.seed)  # as `textvae train` does before building the model
        model = TextVAE(config, tokenizer).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=config.train.lr)
        losses = []
        for _, batches in zip(range(STEPS), zip(*(shards[r].iterate(0) for r in ranks))):
            loss = sum(elbo_loss(model(b), 1.0, config.objective) for b in batches) / len(batches)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        return model, losses

    expected, losses = replay((0, 1))
    got = load(ddp_runs / f"lm-step{STEPS}-rank0.safetensors")
    for name, value in expected.state_dict().items():
        torch.testing.assert_close(got[name], value, atol=1e-5, rtol=0, msg=name)
    # the logged training loss is the mean over the ranks
    assert [r["loss"] for r in records(run, "train")] == pytest.approx(losses, rel=1e-5)
    # and the check can tell: rank 0's batches alone lead elsewhere
    alone, _ = replay((0,))
    assert max(float((got[k] - v).abs().max()) for k, v in alone.state_dict().items()) > 1e-3
