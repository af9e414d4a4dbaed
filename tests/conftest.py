"""Shared tiny fixtures: a 60-sentence corpus, a tiny config and model, an
in-process runner for the ``textvae`` command, and a check that a folder
holds no half-written ``.tmp`` file.

Everything runs offline: the Hugging Face environment variables are set before
any of its libraries is imported, so an unknown hub name fails at once.
"""

from __future__ import annotations

import atexit
import io
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# Built word lists (lexicon.py) are cached here, not in the user's cache folder.
os.environ["TEXTVAE_CACHE_DIR"] = tempfile.mkdtemp(prefix="textvae-test-cache-")
atexit.register(shutil.rmtree, os.environ["TEXTVAE_CACHE_DIR"], True)

import pytest  # noqa: E402
import torch  # noqa: E402

from textvae.config import Config  # noqa: E402

# The models here are tiny: a second intra-op thread only adds overhead, and on
# a busy machine OpenMP's spinning threads make each step many times slower.
torch.set_num_threads(1)

SHARED_TOKENIZERS = Path(__file__).resolve().parents[2] / "shared" / "data" / "tokenizers"

# 60 short sentences over a small, repetitive vocabulary, so a tiny model
# learns something within a few dozen steps.
SENTENCES = [
    "the cat sat on the mat",
    "the dog sat on the rug",
    "a cat ran to the door",
    "a dog ran to the park",
    "the bird sang in the tree",
    "the cat saw the bird",
    "the dog saw the cat",
    "a bird flew over the house",
    "the children played in the park",
    "the sun was warm and bright",
    "the rain fell on the roof",
    "a man walked to the shop",
    "a woman read a long book",
    "the man read the paper",
    "the woman walked the dog",
    "the cat slept on the bed",
    "the dog slept by the door",
    "we went to the park",
    "we saw a big dog",
    "they saw a small cat",
    "the house was very old",
    "the tree was very tall",
    "the shop was closed today",
    "the book was on the table",
    "a cup of tea was on the table",
    "she drank a cup of tea",
    "he drank a glass of water",
    "the water was cold",
    "the tea was hot",
    "the children ran to the house",
    "the bird sat on the roof",
    "a small bird sang a song",
    "the man and the woman walked home",
    "the dog ran after the cat",
    "the cat ran up the tree",
    "we read a book in the park",
    "they walked to the shop",
    "the sun was hot today",
    "the rain was cold today",
    "she saw the man in the shop",
    "he saw the woman in the park",
    "the old man sat by the door",
    "the young woman sang a song",
    "a big dog slept on the rug",
    "the small cat sat by the window",
    "the window was open",
    "the door was closed",
    "we drank water in the park",
    "the children read a book",
    "the bird flew to the tree",
    # valid
    "the cat sat by the door",
    "a dog slept in the park",
    "the woman read the book",
    "the man drank a cup of tea",
    "the bird sang on the roof",
    # test
    "the dog sat by the window",
    "a cat slept on the rug",
    "the children walked to the park",
    "the sun was very bright",
    "we saw the old house",
]
TRAIN, VALID, TEST = SENTENCES[:50], SENTENCES[50:55], SENTENCES[55:]


def write_corpus(folder: Path, names: tuple[str, str, str] = ("train.txt", "valid.txt", "test.txt")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in zip(names, (TRAIN, VALID, TEST)):
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    """A folder with train.txt, valid.txt and test.txt."""
    return write_corpus(tmp_path / "corpus")


@pytest.fixture(scope="session")
def shared_corpus(tmp_path_factory) -> Path:
    """The same corpus, written once for tests that only read it."""
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def tiny_config(**sections) -> Config:
    """The tiny test configuration (embed 16, hidden 16, latent 4); keyword
    arguments update sections, e.g. ``tiny_config(model={"latent_dim": 0})``."""
    raw = {
        "tokenizer": {"spec": "word", "vocab_size": 0},
        "data": {"max_length": 20, "bucket_batches": 2},
        "model": {"embed_dim": 16, "hidden_dim": 16, "latent_dim": 4, "bn_vae_gamma": 0.0},
        "objective": {"free_bits": 0.0},  # the tests' plain VAE (the default remedies are off)
        "train": {"batch_size": 8, "eval_batch_size": 16, "epochs": 2, "lr": 0.01, "log_every": 1,
                  "device": "cpu", "ae_pretrain_fraction": 0.0},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return Config.from_dict(raw)


# The flags that make a CLI training run tiny.
TINY_FLAGS = [
    "--set", "model.embed_dim=16", "--set", "model.hidden_dim=16", "--set", "model.latent_dim=4",
    "--set", "objective.free_bits=0", "--set", "model.bn_vae_gamma=0", "--set", "train.ae_pretrain_fraction=0",
    "--set", "data.max_length=20", "--set", "data.bucket_batches=2",
    "--set", "train.batch_size=8", "--set", "train.eval_batch_size=16", "--set", "train.lr=0.01",
    "--set", "train.device=cpu", "--set", "train.log_every=1",
]


def no_tmp_left(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture(scope="session")
def word_tokenizer():
    from textvae.tokenization import build_tokenizer

    return build_tokenizer(tiny_config().tokenizer, TRAIN)


@pytest.fixture
def tiny_model(word_tokenizer):
    """A freshly initialised tiny LSTM VAE (seeded), in eval mode."""
    from textvae.model import TextVAE

    torch.manual_seed(0)
    return TextVAE(tiny_config(), word_tokenizer).eval()


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def out_lines(self) -> list[str]:
        return self.out.splitlines()

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()


@pytest.fixture
def cli(capsys, monkeypatch):
    """``cli(*args, stdin=bytes)`` runs ``textvae.cli.main`` in-process and
    returns its exit code, stdout and stderr."""
    from textvae.cli import main

    def run(*args: str, stdin: bytes | None = None) -> CliResult:
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, shared_corpus) -> Path:
    """A run directory trained once by ``textvae train`` for the commands that use one."""
    from textvae.cli import main

    out = tmp_path_factory.mktemp("runs") / "run"
    code = main(["-q", "train", "--data", str(shared_corpus), "--out", str(out), *TINY_FLAGS,
                 "--set", "train.epochs=3", "--set", "train.seed=1"])
    assert code == 0
    return out
