"""``textvae mnist ...``: the convolutional MNIST VAE.

    textvae mnist train --data PATH --out RUN [--config FILE] [--set KEY=VALUE ...]
    textvae mnist train --resume RUN [--set train.KEY=VALUE ...]
    textvae mnist eval RUN [--data PATH] [--split test] [--iw-samples 5000] [--json FILE]
    textvae mnist sample | reconstruct | interpolate | latent RUN [--out FILE.png]

PATH is a folder with the splits (see ``textvae.image.data.load_split_dir``)
or a single image file; without ``--data`` training uses the embedded sample
``data/mnist/mnist_5k.npz`` and the other commands the run's own data. The
figures are PNG files whose paths are printed on stdout.

Argument parsing over ``image/`` (data: ``splits.py``, evaluation:
``evaluate.py``); training runs the flow of ``textvae train`` (``launch.py``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Optional

import torch

from ..config import list_presets
from ..errors import TextVAEError
from ..evaluation.journal import IWJournal, journal_path
from ..image.config import ImageConfig, build_image_config
from ..image.evaluate import evaluate_images
from ..image.model import ConvVAE
from ..image.plots import latent_plane, save_grid, save_pairs, save_scatter
from ..image.splits import data_path, eval_batches, pick, train_valid
from ..prior import check_temperature
from ..run_folder import CONFIG_FILE, check_output_file, eval_file, write_json_atomic
from ..runtime import describe_device, resolve_device
from ..training.trainer import Trainer
from . import launch
from .args import seed

log = logging.getLogger("textvae")


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
    p.add_argument("--overwrite", action="store_true", help="replace the run folder --out if there is one")
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
    p.add_argument("--prior-temperature", type=float, default=1.0, metavar="T",
                   help="draw z from N(0, T^2 I) (< 1: nearer the mode; default 1)")
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
    p.add_argument("--seed", type=seed, default=0, help="picks the images and the random draws")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")


def _train(args: argparse.Namespace) -> int:
    return launch.train(args, IMAGE_RUN)


def _start(args: argparse.Namespace, out: Path, cuda_device=None) -> Trainer:
    """A new MNIST run in ``out``: config, data, model and trainer."""
    config = build_image_config(args.config, args.overrides)
    path = data_path(args.data, config).resolve()
    config.data.path = str(path)
    train, valid = train_valid(path, config)
    torch.manual_seed(config.train.seed)
    model = ConvVAE(config)
    log.info(f"model: {sum(p.numel() for p in model.parameters()):,} parameters, latent_dim {config.model.latent_dim}")
    out.mkdir(parents=True, exist_ok=True)
    config.save(out / CONFIG_FILE)
    return Trainer(model, config.train, config.objective, train, valid, out, command=IMAGE_RUN.command)


def _trainer(model: ConvVAE, config: ImageConfig, run_dir: Path, data: Optional[str], cuda_device=None) -> Trainer:
    train, valid = train_valid(data_path(data, config), config)
    return Trainer(model, config.train, config.objective, train, valid, run_dir, command=IMAGE_RUN.command)


IMAGE_RUN = launch.RunKind("image", "textvae mnist train", "image", ConvVAE, _start, _trainer)


def _load(args: argparse.Namespace) -> ConvVAE:
    return ConvVAE.from_pretrained(args.run, device=resolve_device(args.device))


def _eval(args: argparse.Namespace) -> None:
    if args.iw_samples < 1 or args.limit < 0:
        raise TextVAEError("--iw-samples must be >= 1 and --limit >= 0")
    if args.json:
        check_output_file(Path(args.json))  # before the evaluation, not after it
    model = _load(args)
    batches = eval_batches(args.data, args.split, model.config, args.limit, args.seed)
    subset = {"limit": args.limit, "seed": args.seed} if args.limit else None
    suffix = f"_limit{args.limit}_seed{args.seed}" if args.limit else ""
    journal = IWJournal(journal_path(Path(args.run) / eval_file(args.split, suffix)))  # a stop loses little
    result = {"split": args.split, "data": str(data_path(args.data, model.config)), "subset": subset,
              **evaluate_images(model, batches, args.iw_samples, args.seed, journal),
              "device": describe_device(model.device), "command": args.invocation}
    for path in [Path(args.run) / eval_file(args.split, suffix)] + ([Path(args.json)] if args.json else []):
        write_json_atomic(path, result)
    journal.remove()
    print(json.dumps(result, indent=2))


def _png(args: argparse.Namespace, default: str) -> Path:
    return Path(args.out) if args.out else Path(args.run) / default


def _sample(args: argparse.Namespace) -> None:
    if args.n < 1:
        raise TextVAEError("-n must be >= 1")
    check_temperature(args.prior_temperature)
    model = _load(args)
    t = args.prior_temperature
    images = model.sample(args.n, torch.Generator().manual_seed(args.seed), t)
    print(save_grid(images, _png(args, "samples.png"), math.ceil(math.sqrt(args.n)),
                    f"{args.n} samples, z ~ N(0, {'I' if t == 1 else f'{t:g}^2 I'}), pixel probabilities"))


def _reconstruct(args: argparse.Namespace) -> None:
    model = _load(args)
    images = pick(eval_batches(args.data, args.split, model.config), args.n, args.seed)
    print(save_pairs(images, model.reconstruct(images), _png(args, "reconstructions.png"),
                     title=f"{args.split} images (upper rows) and reconstructions from the posterior mean"))


def _interpolate(args: argparse.Namespace) -> None:
    if args.pairs < 1 or args.steps < 2:
        raise TextVAEError("--pairs must be >= 1 and --steps >= 2")
    model = _load(args)
    images = pick(eval_batches(args.data, args.split, model.config), 2 * args.pairs, args.seed)
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
    batches = eval_batches(args.data, args.split, model.config, args.limit, args.seed)
    means = torch.cat([model.encode(b.images).mean.cpu() for b in batches.iterate(0)])  # (N, D)
    points, axis_names, how = latent_plane(means)
    print(save_scatter(points, batches.labels, _png(args, "latent.png"),
                       f"posterior means of {len(batches):,} {args.split} images\n{how}", axis_names))
