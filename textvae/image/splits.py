"""Where the MNIST commands find their images: the data path (given, the
run's own, or the embedded sample), the training and validation batches,
the evaluation split, and seeded picks of images for the figures.

The readers (``data.py``) raise ``ValueError`` / ``FileNotFoundError``; here
they become one-line ``TextVAEError``s.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import TextVAEError
from .batches import ImageBatches
from .config import ImageConfig
from .data import is_binary, load_images, load_split_dir

log = logging.getLogger("textvae")

# The embedded 5,000 real digits (data/mnist, BSD-3) beside the package in a clone.
SAMPLE_DATA = Path(__file__).resolve().parents[2] / "data" / "mnist"


def read_images(path: Path, split: Optional[str]):
    """(images (N, 784), labels or None) of ``split`` in a folder, or a whole file
    (split None); the readers' errors become one-line TextVAEErrors."""
    try:
        if path.is_dir():
            return load_split_dir(path, split)
        return load_images(path)
    except (ValueError, FileNotFoundError) as error:
        raise TextVAEError(str(error)) from None


def data_path(given: Optional[str], config: Optional[ImageConfig] = None) -> Path:
    """``--data`` if given, else the run's ``data.path``, else the embedded sample."""
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


def train_valid(path: Path, config: ImageConfig) -> tuple[ImageBatches, ImageBatches]:
    """Training batches (shuffled; dynamic or static binarization) and
    validation batches (static): the folder's valid split, else a held-out
    ``data.valid_fraction`` of the training images."""
    data, train_cfg = config.data, config.train
    images, labels = read_images(path, "train")
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


def eval_batches(given: Optional[str], split: str, config: ImageConfig, limit: int = 0, seed: int = 0) -> ImageBatches:
    """The images the figure and eval commands use: ``split`` of a data folder
    (``given``, else the run's data), or a whole file; a seeded random subset
    of ``limit`` images (0: all); statically binarized with ``data.seed``."""
    path = data_path(given, config)
    images, labels = read_images(path, split if path.is_dir() else None)
    if limit and limit < len(images):
        rows = np.sort(np.random.default_rng(seed).permutation(len(images))[:limit])
        images, labels = images[rows], None if labels is None else labels[rows]
    return ImageBatches.binarized(images, labels, config.train.eval_batch_size, "static", config.data.seed + 2)


def pick(batches: ImageBatches, n: int, seed: int) -> torch.Tensor:
    """``n`` images (n, 1, 28, 28) drawn without replacement, seeded."""
    if n < 1:
        raise TextVAEError("the number of images must be >= 1")
    rows = torch.randperm(len(batches), generator=torch.Generator().manual_seed(seed))[:n]
    return batches.images[rows]
