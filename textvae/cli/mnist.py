"""``textvae mnist ...``: the convolutional MNIST VAE.

    textvae mnist train --data PATH --out RUN [--config FILE] [--set KEY=VALUE ...]
    textvae mnist train --resume RUN [--set train.KEY=VALUE ...]
    textvae mnist eval RUN [--data PATH] [--split test] [--iw-samples 5000] [--json FILE]
    textvae mnist sample | reconstruct | interpolate | latent RUN [--out FILE.png]

PATH is a folder with the splits (see ``textvae.image.data.load_split_dir``)
or a single image file; without ``--data`` training uses the embedded sample
``data/mnist/mnist_5k.npz`` and the other commands the run's own data. The
figures are PNG files whose paths are printed on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

import textvae

from ..config import apply_overrides, list_presets
from ..errors import TextVAEError
from ..evaluation import likelihood
from ..evaluation.elbo import evaluate_elbo
from ..image.batches import ImageBatches
from ..image.config import ImageConfig, build_image_config, check_image_run_dir
from ..image.data import is_binary, load_images, load_split_dir
from ..image.model import CONFIG_FILE, ConvVAE
from ..image.plots import save_grid, save_pairs, save_scatter
from ..training.checkpoint import find_checkpoint
from ..training.trainer import Trainer, describe_device, resolve_device

log = logging.getLogger("textvae")

SAMPLE_DATA = Path(textvae.__file__).resolve().parents[1] / "data" / "mnist"
IW_DECODES = 2000  # latent samples decoded at once by the IW-NLL (bounds memory)


def register(commands) -> None:
    group = commands.add_parser("mnist", help="the convolutional MNIST VAE: train, eval, sample, figures",
                                description="The convolutional VAE on binarized MNIST.")
    sub = group.add_subparsers(dest="mnist_command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model (or continue one with --resume)",
                       description="Config: defaults, then --config FILE (YAML/JSON or a preset: "
                                   f"{', '.join(n for n in list_presets() if n.startswith('mnist'))}), then --set.")
    p.add_argument("--data", help="folder with the splits or one image file (default: the embedded 5k sample)")
    p.add_argument("--out", help="new run directory")
    p.add_argument("--config", help="YAML or JSON config file, or a preset name")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field by its dotted name, e.g. model.latent_dim=32 (repeatable)")
    p.add_argument("--resume", metavar="RUN", help="continue the run in RUN from its last checkpoint")
    p.set_defaults(handler=_train)

    p = sub.add_parser("eval", help="ELBO, KL, importance-weighted NLL, active units and MI on a split")
    _common(p, png=False)
    p.add_argument("--iw-samples", type=int, default=5000, help="importance samples per image (default 5000)")
    p.add_argument("--limit", type=int, default=0, help="evaluate a seeded random subset of N images (0: all)")
    p.add_argument("--json", metavar="FILE",
                   help="also write the results here (always: RUN/eval_SPLIT[_limitN_seedS].json)")
    p.set_defaults(handler=_eval)

    p = sub.add_parser("sample", help="a PNG grid of images decoded from z ~ N(0, I)")
    _common(p, data=False)
    p.add_argument("-n", type=int, default=64, help="how many images (default 64)")
    p.set_defaults(handler=_sample)

    p = sub.add_parser("reconstruct", help="a PNG of test images (above) and their reconstructions (below)")
    _common(p)
    p.add_argument("-n", type=int, default=32, help="how many images (default 32)")
    p.set_defaults(handler=_reconstruct)

    p = sub.add_parser("interpolate", help="a PNG of latent paths between pairs of test images")
    _common(p)
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--steps", type=int, default=10, help="decoded points per path, ends included")
    p.set_defaults(handler=_interpolate)

    p = sub.add_parser("latent", help="a PNG scatter of posterior means in 2-D (PCA above 2 dims) by digit")
    _common(p)
    p.add_argument("--limit", type=int, default=0, help="plot a seeded random subset of N images (0: all)")
    p.set_defaults(handler=_latent)


def _common(p: argparse.ArgumentParser, data: bool = True, png: bool = True) -> None:
    p.add_argument("run", metavar="RUN", help="run directory of a trained MNIST model")
    if data:
        p.add_argument("--data", help="folder with the splits or one image file (default: the run's data)")
        p.add_argument("--split", default="test", choices=("train", "valid", "test"),
                       help="the split of a data folder (default test); a data file is used whole")
    if png:
        p.add_argument("--out", metavar="FILE", help="PNG path (default: a file in RUN)")
    p.add_argument("--seed", type=int, default=0, help="picks the images and the random draws")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")


# ------------------------------------------------------------------ data
def _read(path: Path, split: Optional[str]):
    """(images (N, 784), labels or None) of ``split`` in a folder, or a whole file
    (split None); the readers' errors become one-line TextVAEErrors."""
    try:
        if path.is_dir():
            return load_split_dir(path, split)
        return load_images(path)
    except (ValueError, FileNotFoundError) as error:
        raise TextVAEError(str(error)) from None


def _data_path(given: Optional[str], config: Optional[ImageConfig] = None) -> Path:
    if given:
        path = Path(given)
    elif config is not None and config.data.path:
        path = Path(config.data.path)
    else:
        path = SAMPLE_DATA
        if not (path / "mnist_5k.npz").is_file():
            raise TextVAEError(f"no --data given and the embedded sample {path / 'mnist_5k.npz'} is missing; "
                               "pass --data PATH")
    if not path.exists():
        raise TextVAEError(f"{path}: no such file or folder")
    return path


def _train_valid(path: Path, config: ImageConfig) -> tuple[ImageBatches, ImageBatches]:
    """Training batches (shuffled; dynamic or static binarization) and
    validation batches (static): the folder's valid split, else a held-out
    ``data.valid_fraction`` of the training images."""
    data, train_cfg = config.data, config.train
    images, labels = _read(path, "train")
    valid = None
    if path.is_dir():
        try:
            valid = load_split_dir(path, "valid")
        except FileNotFoundError:
            pass
        except ValueError as error:
            raise TextVAEError(str(error)) from None
    if valid is None:
        order = np.random.default_rng(data.seed).permutation(len(images))
        held = order[: max(1, round(len(images) * data.valid_fraction))]
        kept = np.sort(order[len(held):])
        valid = images[np.sort(held)], None if labels is None else labels[np.sort(held)]
        images, labels = images[kept], None if labels is None else labels[kept]
        log.info(f"no validation split: holding out {len(held):,} of the training images")
    train = ImageBatches.binarized(images, labels, train_cfg.batch_size, data.binarize, data.seed, train_cfg.seed,
                                   shuffle=True)
    if train.num_batches(0) == 0 or len(train) < train_cfg.batch_size:
        raise TextVAEError(f"{len(train)} training images: fewer than one batch of train.batch_size="
                           f"{train_cfg.batch_size}")
    if 0 < data.valid_limit < len(valid[0]):
        rows = np.sort(np.random.default_rng(data.seed).permutation(len(valid[0]))[: data.valid_limit])
        valid = valid[0][rows], None if valid[1] is None else valid[1][rows]
    valid = ImageBatches.binarized(*valid, train_cfg.eval_batch_size, "static", data.seed + 1)
    how = "already binary" if is_binary(torch.as_tensor(images)) else f"{data.binarize} binarization"
    log.info(f"data: {len(train):,} training images ({how}), {len(valid):,} validation")
    return train, valid


def _eval_batches(args: argparse.Namespace, config: ImageConfig, limit: int = 0) -> ImageBatches:
    """The split the figure and eval commands use, statically binarized with ``data.seed``."""
    path = _data_path(args.data, config)
    images, labels = _read(path, args.split if path.is_dir() else None)
    if limit and limit < len(images):
        rows = np.sort(np.random.default_rng(args.seed).permutation(len(images))[:limit])
        images, labels = images[rows], None if labels is None else labels[rows]
    return ImageBatches.binarized(images, labels, config.train.eval_batch_size, "static", config.data.seed + 2)


def _pick(batches: ImageBatches, n: int, seed: int) -> torch.Tensor:
    if n < 1:
        raise TextVAEError("the number of images must be >= 1")
    rows = torch.randperm(len(batches), generator=torch.Generator().manual_seed(seed))[:n]
    return batches.images[rows]


# ---------------------------------------------------------------- train
def _train(args: argparse.Namespace) -> int:
    trainer = _resume(args) if args.resume else _new_run(args)
    started = time.time()
    state = trainer.fit()
    how = "stopped" if trainer.interrupted else "done"
    log.info(f"{how} at step {state['step']} in {time.time() - started:.0f} s; best validation -ELBO "
             f"{state['saved_best']:.3f} nats per image; model in {trainer.run_dir}")
    return 0


def _new_run(args: argparse.Namespace) -> Trainer:
    if not args.out:
        raise TextVAEError("mnist train needs --out RUN (or --resume RUN)")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TextVAEError(f"{out} already exists; continue it with --resume {out} or choose another --out")
    config = build_image_config(args.config, args.overrides)
    path = _data_path(args.data, config).resolve()
    config.data.path = str(path)
    train, valid = _train_valid(path, config)
    torch.manual_seed(config.train.seed)
    model = ConvVAE(config)
    log.info(f"model: {sum(p.numel() for p in model.parameters()):,} parameters, latent_dim {config.model.latent_dim}")
    out.mkdir(parents=True, exist_ok=True)
    try:
        config.save(out / CONFIG_FILE)
        return Trainer(model, config.train, config.objective, train, valid, out, command="textvae mnist train")
    except BaseException:
        if not (out / "checkpoint").exists():
            shutil.rmtree(out, ignore_errors=True)  # a run that never started leaves nothing behind
        raise


def _resume(args: argparse.Namespace) -> Trainer:
    run_dir = Path(args.resume)
    check_image_run_dir(run_dir, weights=False)
    find_checkpoint(run_dir)
    if args.out or args.config:
        raise TextVAEError("--resume continues a run as configured; only --data and --set train.* may be given")
    if any(not o.startswith("train.") for o in args.overrides):
        raise TextVAEError("with --resume only train.* fields may be overridden (e.g. train.epochs)")
    raw = json.loads((run_dir / CONFIG_FILE).read_text())
    config = ImageConfig.from_dict(apply_overrides(raw, args.overrides, ImageConfig))
    train, valid = _train_valid(_data_path(args.data, config), config)
    trainer = Trainer(ConvVAE(config), config.train, config.objective, train, valid, run_dir,
                      command="textvae mnist train")
    trainer.resume()
    config.save(run_dir / CONFIG_FILE)  # the new limits are part of the run's record
    return trainer


# ----------------------------------------------------------------- eval
def _load(args: argparse.Namespace) -> ConvVAE:
    return ConvVAE.from_pretrained(args.run, device=resolve_device(args.device))


def _eval(args: argparse.Namespace) -> int:
    if args.iw_samples < 1 or args.limit < 0:
        raise TextVAEError("--iw-samples must be >= 1 and --limit >= 0")
    model = _load(args)
    batches = _eval_batches(args, model.config, args.limit)
    started = time.time()
    result = evaluate_elbo(model, batches.iterate(0), model.device, seed=args.seed)
    elbo_seconds = time.time() - started
    log_px = importance_weighted_nll(model, batches, args.iw_samples, args.seed)
    result = {
        "split": args.split, "data": str(_data_path(args.data, model.config)), "images": len(batches),
        "subset": {"limit": args.limit, "seed": args.seed} if args.limit else None, "iw_samples": args.iw_samples,
        "iw_nll": -float(log_px.mean()), "iw_nll_stderr": float(log_px.std() / math.sqrt(len(log_px))),
        "elbo": result["elbo"], "rec": result["rec"], "kl": result["kl"], "active_units": result["au"],
        "latent_dim": model.latent_dim, "mi": result["mi"], "unit": "nats per image",
        "seconds": {"elbo": round(elbo_seconds, 1), "iw_nll": round(time.time() - started - elbo_seconds, 1)},
        "device": describe_device(model.device), "command": args.invocation,
    }
    text = json.dumps(result, indent=2) + "\n"
    name = f"eval_{args.split}" + (f"_limit{args.limit}_seed{args.seed}" if args.limit else "") + ".json"
    for path in [Path(args.run) / name] + ([Path(args.json)] if args.json else []):
        path.write_text(text)
    print(text, end="")
    return 0


def importance_weighted_nll(model: ConvVAE, batches: ImageBatches, num_samples: int, seed: int = 0) -> torch.Tensor:
    """log p(x) per image (N,) by the shared IW estimator (Burda et al. 2016)."""
    model.eval()
    generator = torch.Generator(device=model.device).manual_seed(seed)
    pieces, done, last_report, started = [], 0, time.time(), time.time()
    for batch in batches.iterate(0):
        batch = batch.to(model.device)
        chunk = max(1, IW_DECODES // len(batch))
        pieces.append(likelihood.importance_weighted_log_likelihood(model, batch, num_samples, chunk, generator).cpu())
        done += len(batch)
        if time.time() - last_report > 60:
            last_report, rate = time.time(), done / (time.time() - started)
            log.info(f"IW-NLL: {done:,}/{len(batches):,} images, about {(len(batches) - done) / rate:.0f} s left")
    return torch.cat(pieces)


# -------------------------------------------------------------- figures
def _png(args: argparse.Namespace, default: str) -> Path:
    return Path(args.out) if args.out else Path(args.run) / default


def _sample(args: argparse.Namespace) -> None:
    if args.n < 1:
        raise TextVAEError("-n must be >= 1")
    model = _load(args)
    images = model.sample(args.n, torch.Generator().manual_seed(args.seed))
    print(save_grid(images, _png(args, "samples.png"), math.ceil(math.sqrt(args.n)),
                    f"{args.n} samples, z ~ N(0, I), pixel probabilities"))


def _reconstruct(args: argparse.Namespace) -> None:
    model = _load(args)
    images = _pick(_eval_batches(args, model.config), args.n, args.seed)
    print(save_pairs(images, model.reconstruct(images), _png(args, "reconstructions.png"),
                     title=f"{args.split} images (upper rows) and reconstructions from the posterior mean"))


def _interpolate(args: argparse.Namespace) -> None:
    if args.pairs < 1 or args.steps < 2:
        raise TextVAEError("--pairs must be >= 1 and --steps >= 2")
    model = _load(args)
    images = _pick(_eval_batches(args, model.config), 2 * args.pairs, args.seed)
    if len(images) < 2:
        raise TextVAEError("need at least two images to interpolate")
    start, end = images[: len(images) // 2], images[len(images) // 2: 2 * (len(images) // 2)]
    path = model.interpolate(start, end, args.steps)  # (P, steps, 1, 28, 28)
    strips = torch.cat([start.unsqueeze(1), path.cpu(), end.unsqueeze(1)], dim=1)  # originals at both ends
    print(save_grid(strips.flatten(0, 1), _png(args, "interpolations.png"), args.steps + 2,
                    "test digit, decoded linear path between posterior means, test digit"))


def _latent(args: argparse.Namespace) -> None:
    if args.limit < 0:
        raise TextVAEError("--limit must be >= 0")
    model = _load(args)
    batches = _eval_batches(args, model.config, args.limit)
    means = torch.cat([model.encode(b.images).mean.cpu() for b in batches.iterate(0)])  # (N, D)
    axis_names = ("z1", "z2")
    if model.latent_dim == 2:
        points, how = means, "the 2-D latent"
    elif model.latent_dim == 1:
        points, how = torch.cat([means, torch.zeros_like(means)], 1), "the 1-D latent"
    else:
        axis_names = ("principal component 1", "principal component 2")
        centred = means - means.mean(0)
        _, singular, vectors = torch.linalg.svd(centred, full_matrices=False)
        points = centred @ vectors[:2].T  # (N, 2)
        share = float(singular[:2].pow(2).sum() / singular.pow(2).sum().clamp_min(1e-12))
        how = f"first 2 principal components of {model.latent_dim} dims ({100 * share:.0f}% of the variance)"
    print(save_scatter(points, batches.labels, _png(args, "latent.png"),
                       f"posterior means of {len(batches):,} {args.split} images\n{how}", axis_names))
