"""Tests for the convolutional MNIST VAE: model, batches, config, and the
``textvae mnist`` commands on a tiny generated data set."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import textvae.evaluation.likelihood as likelihood
from textvae.config import Config, ObjectiveConfig, TrainConfig
from textvae.errors import TextVAEError
from textvae.evaluation.elbo import evaluate_elbo
from textvae.image.batches import ImageBatch, ImageBatches
from textvae.image.config import ImageConfig, build_image_config
from textvae.image.model import ConvVAE, bernoulli_log_likelihood
from textvae.training.trainer import Trainer

TINY = {"latent_dim": 3, "channels": 4, "kernel_size": 3, "hidden_dim": 16}
TINY_FLAGS = [item for key, value in TINY.items() for item in ("--set", f"model.{key}={value}")] + [
    "--set", "train.batch_size=8", "--set", "train.eval_batch_size=16", "--set", "train.device=cpu",
    "--set", "train.log_every=1", "--set", "train.epochs=1"]


def tiny_model(seed: int = 0, **model) -> ConvVAE:
    torch.manual_seed(seed)
    return ConvVAE(ImageConfig.from_dict({"model": {**TINY, **model}})).eval()


def strokes(n: int, seed: int = 0) -> np.ndarray:
    """n binary 28x28 images (N, 784) uint8: a random horizontal and vertical bar each."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for image, (row, col) in zip(images, rng.integers(4, 24, size=(n, 2))):
        image[row - 2: row + 2, 4:24] = 1
        image[4:24, col - 2: col + 2] = 1
    return images.reshape(n, 784)


def batch_of(n: int, seed: int = 0) -> ImageBatch:
    images = torch.as_tensor(strokes(n, seed)).float().view(n, 1, 28, 28)
    return ImageBatch(images, torch.arange(n))


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mnist")
    for split, n in (("train", 48), ("valid", 16), ("test", 16)):
        np.savez(folder / f"binarized_mnist_{split}.npz", x=strokes(n, seed=len(split)))
    return folder


@pytest.fixture(scope="module")
def image_run(tmp_path_factory, mnist_dir) -> Path:
    from textvae.cli import main

    out = tmp_path_factory.mktemp("runs") / "mnist"
    assert main(["-q", "mnist", "train", "--data", str(mnist_dir), "--out", str(out), *TINY_FLAGS]) == 0
    return out


# ------------------------------------------------------------------ model
@pytest.mark.parametrize("upsampling", ["nearest", "stride"])
@pytest.mark.parametrize("size", [1, 3])
def test_shapes_through_encoder_and_decoder(size, upsampling):
    model, batch = tiny_model(upsampling=upsampling), batch_of(size)
    q = model.posterior(batch)
    assert q.mean.shape == q.logvar.shape == (size, 3)
    assert model.decoder(q.mean).shape == (size, 1, 28, 28)
    out = model(batch)
    assert out.rec.shape == out.kl.shape == (size,) and out.kl_per_dim.shape == (size, 3)
    assert out.tokens.tolist() == [784] * size
    assert model.log_likelihood(batch, q.sample(5)).shape == (5, size)
    assert model.sample(2).shape == (2, 1, 28, 28) and model.reconstruct(batch.images).shape == (size, 1, 28, 28)
    # The prior temperature scales z: T = 0.5 halves each draw.
    cooled = model.sample(3, torch.Generator().manual_seed(4), prior_temperature=0.5)
    assert torch.allclose(cooled, model.decode(0.5 * torch.randn(3, model.latent_dim,
                                                                 generator=torch.Generator().manual_seed(4))))
    assert model.interpolate(batch.images, batch.images, steps=4).shape == (size, 4, 1, 28, 28)


def test_bernoulli_log_likelihood_matches_a_hand_computation():
    logits = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    images = (torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    p = torch.sigmoid(logits.double())
    by_hand = (images * p.log() + (1 - images) * (1 - p).log()).flatten(1).sum(1)
    assert torch.allclose(bernoulli_log_likelihood(logits, images).double(), by_hand, atol=1e-3)
    assert bernoulli_log_likelihood(torch.zeros(1, 1, 28, 28), images[:1]).item() == pytest.approx(-784 * math.log(2))


def test_log_likelihood_agrees_with_forward_at_the_same_z():
    model, batch = tiny_model(), batch_of(3)
    z = model.posterior(batch).sample(generator=torch.Generator().manual_seed(0))
    direct = bernoulli_log_likelihood(model.decoder(z), batch.images)
    assert torch.allclose(model.log_likelihood(batch, z.unsqueeze(0))[0], direct, atol=1e-4)


def test_save_and_load_round_trip(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["kind"] == "image"
    loaded = ConvVAE.from_pretrained(tmp_path / "run")
    batch = batch_of(2)
    assert torch.equal(loaded.posterior(batch).mean, model.posterior(batch).mean)


def test_loss_falls_with_the_shared_trainer(tmp_path):
    model = tiny_model(latent_dim=2)
    images = torch.as_tensor(strokes(200)).float().view(-1, 1, 28, 28)
    data, held = ImageBatches(images, None, 8, shuffle=True), ImageBatches(images[:32], None, 32)
    before = -evaluate_elbo(model, held.iterate(0), torch.device("cpu"))["elbo"]
    train = TrainConfig(epochs=1, batch_size=8, lr=0.01, device="cpu", log_every=5)  # 25 steps
    Trainer(model, train, ObjectiveConfig(free_bits=0.0), data, held, tmp_path).fit()
    after = -evaluate_elbo(model, held.iterate(0), torch.device("cpu"))["elbo"]
    assert after < before - 50


# ----------------------------------------------------------------- batches
def test_batches_resume_exactly_and_redraw_dynamic_pixels_per_epoch():
    grey = np.random.default_rng(0).integers(0, 256, size=(20, 784), dtype=np.uint8)
    data = ImageBatches.binarized(grey, np.arange(20), 4, mode="dynamic", seed=3, shuffle=True)
    assert data.dynamic and data.num_batches(0) == 5
    full = list(data.iterate(1))
    tail = list(data.iterate(1, start=2))
    assert all(torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) for a, b in zip(full[2:], tail))
    assert set(full[0].images.unique().tolist()) <= {0.0, 1.0}
    again = list(ImageBatches.binarized(grey, np.arange(20), 4, mode="dynamic", seed=3, shuffle=True).iterate(1))
    assert all(torch.equal(a.images, b.images) for a, b in zip(full, again))
    def by_label(batches):  # the epoch's images in a fixed order
        batches = list(batches)
        return torch.cat([b.images for b in batches])[torch.cat([b.labels for b in batches]).argsort()]

    assert not torch.equal(by_label(full), by_label(data.iterate(2)))


def test_static_batches_keep_every_image_in_order():
    data = ImageBatches.binarized(strokes(10), None, 4)
    assert [len(b) for b in data.iterate(0)] == [4, 4, 2]
    assert data.labels.tolist() == [-1] * 10


# ------------------------------------------------------------------ config
def test_config_kind_and_overrides(tmp_path):
    config = build_image_config("mnist-tuned", ["model.latent_dim=8", "train.epochs=2"])
    assert (config.model.latent_dim, config.train.epochs) == (8, 2)
    assert build_image_config("mnist-writeup").model.latent_dim == 200
    config.save(tmp_path / "config.json")
    assert ImageConfig.load(tmp_path / "config.json") == config
    with pytest.raises(TextVAEError, match="text model"):
        ImageConfig.from_dict({"kind": "text"})
    with pytest.raises(TextVAEError, match="unknown config key 'model.encoder'"):
        build_image_config(None, ["model.encoder=lstm"])
    with pytest.raises(TextVAEError, match="model.kernel_size must be odd"):
        build_image_config(None, ["model.kernel_size=4"])


# ---------------------------------------------------------------------- CLI
def test_cli_end_to_end(cli, image_run, mnist_dir, tmp_path):
    assert (image_run / "model.safetensors").exists() and (image_run / "checkpoint").is_dir()
    result = cli("mnist", "eval", image_run, "--data", mnist_dir, "--iw-samples", "4", "--json", tmp_path / "e.json")
    assert result.code == 0, result.err
    figures = json.loads(result.out)
    assert figures["images"] == 16 and figures["settings"]["iw_samples"] == 4
    stored = json.loads((image_run / "eval_test.json").read_text())
    assert figures == stored == json.loads((tmp_path / "e.json").read_text())
    assert figures["command"].startswith("textvae mnist eval ") and "--iw-samples 4" in figures["command"]
    assert figures["device"].startswith("cpu, ")
    assert figures["nll"] <= -figures["elbo"] + 5  # IW with 4 samples: close to or below the 1-sample bound
    assert figures["unit"] == "nats per image" and figures["au"] <= figures["latent_dim"] == 3
    for command in (["sample", "-n", "4"], ["reconstruct", "-n", "4"], ["interpolate", "--pairs", "2", "--steps", "3"],
                    ["latent"]):
        png = tmp_path / f"{command[0]}.png"
        result = cli("mnist", command[0], image_run, *command[1:], "--out", png)
        assert result.code == 0, result.err
        assert result.out_lines == [str(png)] and png.stat().st_size > 0
    cooled = cli("mnist", "sample", image_run, "-n", "4", "--prior-temperature", "0.5", "--out", tmp_path / "c.png")
    assert cooled.code == 0 and (tmp_path / "c.png").stat().st_size > 0
    refused = cli("mnist", "sample", image_run, "--prior-temperature", "0", "--out", tmp_path / "r.png")
    assert refused.code != 0 and "prior temperature" in refused.err and not (tmp_path / "r.png").exists()


def test_cli_resume_continues_the_run(cli, mnist_dir, tmp_path):
    out = tmp_path / "run"
    assert cli("mnist", "train", "--data", mnist_dir, "--out", out, *TINY_FLAGS, "--set", "train.max_steps=2").code == 0
    result = cli("mnist", "train", "--resume", out, "--set", "train.max_steps=4")
    assert result.code == 0, result.err
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 4


def test_mnist_eval_uses_the_shared_importance_weighted_estimator(cli, image_run, mnist_dir, monkeypatch):
    from textvae.evaluation import text_eval
    from textvae.image import evaluate as image_eval

    calls = []
    shared = likelihood.importance_weighted_log_likelihood

    def spy(*args, **kwargs):
        calls.append(args[2])
        return shared(*args, **kwargs)

    assert image_eval.importance_weighted_nll is text_eval.importance_weighted_nll is likelihood.importance_weighted_nll
    monkeypatch.setattr(likelihood, "importance_weighted_log_likelihood", spy)
    assert cli("mnist", "eval", image_run, "--data", mnist_dir, "--iw-samples", "3", "--limit", "8").code == 0
    assert calls and set(calls) == {3}
    assert json.loads((image_run / "eval_test_limit8_seed0.json").read_text())["images"] == 8


def test_cli_trains_on_the_embedded_sample_by_default(cli, tmp_path):
    from textvae.image.splits import SAMPLE_DATA

    if not (SAMPLE_DATA / "mnist_5k.npz").exists():
        pytest.skip("the embedded sample is absent")
    out = tmp_path / "run"
    result = cli("mnist", "train", "--out", out, *TINY_FLAGS, "--set", "train.max_steps=1")
    assert result.code == 0, result.err
    assert json.loads((out / "config.json").read_text())["data"]["path"] == str(SAMPLE_DATA)


@pytest.mark.parametrize("problem", ["missing data file", "text run", "no run", "grey text file"])
def test_bad_input_gives_one_error_line(cli, image_run, tmp_path, problem):
    if problem == "missing data file":
        result = cli("mnist", "train", "--data", tmp_path / "nothing.npz", "--out", tmp_path / "run")
        assert "nothing.npz" in result.err and not (tmp_path / "run").exists()
    elif problem == "text run":
        run = tmp_path / "text_run"
        (run / "tokenizer").mkdir(parents=True)
        Config().save(run / "config.json")
        (run / "model.safetensors").write_bytes(b"")
        result = cli("mnist", "sample", run)
        assert "text model, not an MNIST VAE" in result.err
    elif problem == "no run":
        result = cli("mnist", "latent", tmp_path / "nowhere")
    else:
        (tmp_path / "bad.npz").write_text("not an archive")
        result = cli("mnist", "eval", image_run, "--data", tmp_path / "bad.npz", "--iw-samples", "2")
        assert "not a readable npz file" in result.err
    assert result.code != 0 and len(result.err_lines) == 1 and result.err.startswith("textvae: error: ")


def table_rows(text: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in text.splitlines()]


def test_compare_puts_a_text_run_and_an_mnist_run_in_one_table(cli, image_run, mnist_dir, trained_run, shared_corpus,
                                                               tmp_path):
    fresh = shutil.ignore_patterns("eval_*.json", "plots", "*.png")
    text, digits = shutil.copytree(trained_run, tmp_path / "text", ignore=fresh), \
        shutil.copytree(image_run, tmp_path / "digits", ignore=fresh)
    assert cli("-q", "eval", text, "--data", shared_corpus, "--iw-samples", "3", "--samples", "3").code == 0
    assert cli("-q", "mnist", "eval", digits, "--data", mnist_dir, "--iw-samples", "3").code == 0
    assert cli("info", digits, "--get", "kind").out == "image\n"
    result = cli("compare", text, digits)
    assert result.code == 0, result.err
    header, rule, *rows = table_rows(result.out)
    assert header[:8] == ["run", "NLL", "PPL", "ELBO", "rec", "KL", "MI", "AU"] and header[-1] == "unit"
    assert set(rule) == {"---"} and [row[0] for row in rows] == ["text", "digits"]
    for row, run in zip(rows, (text, digits)):
        stored = json.loads((run / "eval_test.json").read_text())
        cells = dict(zip(header, row))
        assert cells["NLL"] == f"{stored['nll']:.2f}" and cells["KL"] == f"{stored['kl']:.2f}"
        assert cells["AU"] == str(stored["au"]) and cells["unit"] == stored["unit"]
    assert [dict(zip(header, row))["PPL"] for row in rows][1] == "–"  # no perplexity for images
    # An MNIST evaluation written before the shared schema (iw_nll, active_units) joins the table.
    old = tmp_path / "old-digits"
    old.mkdir()
    shutil.copy(Path(__file__).resolve().parents[1] / "results" / "mnist" / "eval-tuned-test-full-iw5000-gpu.json",
                old / "eval_test.json")
    cells = dict(zip(header, table_rows(cli("compare", text, old).out)[3]))
    assert (cells["NLL"], cells["KL"], cells["AU"]) == ("85.65", "29.59", "32")
