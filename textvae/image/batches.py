"""Image batches for the shared trainer and evaluation.

``ImageBatches`` offers what ``training.trainer.Trainer`` and
``evaluation.elbo.evaluate_elbo`` iterate: ``num_batches(epoch)`` and
``iterate(epoch, start)``. The shuffle and, for dynamic binarization, the
Bernoulli draws depend only on (seed, epoch, batch index), so resuming at
batch ``start`` of an epoch sees exactly the batches an uninterrupted run
would have seen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch
from torch import Tensor

from .data import ArrayLike, binarize, is_binary


@dataclass
class ImageBatch:
    """``images`` (B, 1, 28, 28) float 0/1; ``labels`` (B,) int64, -1 when unknown."""

    images: Tensor
    labels: Tensor

    def to(self, device: torch.device | str) -> "ImageBatch":
        return ImageBatch(self.images.to(device), self.labels.to(device))

    def __len__(self) -> int:
        return self.images.shape[0]


def _generator(*keys: int) -> torch.Generator:
    """A torch generator seeded from a tuple of non-negative integers."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0]))


class ImageBatches:
    """Images in memory, cut into batches.

    ``images``: (N, 1, 28, 28) float in [0, 1]. With ``dynamic=True`` they are
    intensities and every batch draws fresh 0/1 pixels; otherwise they are
    binary already (use ``binarized`` to build a static set). ``shuffle``
    also drops a last incomplete batch, as training wants.
    """

    def __init__(self, images: Tensor, labels: Optional[Tensor], batch_size: int, seed: int = 0,
                 shuffle: bool = False, dynamic: bool = False) -> None:
        self.images = images
        self.labels = torch.full((len(images),), -1, dtype=torch.long) if labels is None else labels.long()
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.dynamic = dynamic and not is_binary(images)

    @classmethod
    def binarized(cls, images: ArrayLike, labels: Optional[ArrayLike], batch_size: int, mode: str = "static",
                  binarize_seed: int = 0, seed: int = 0, shuffle: bool = False) -> "ImageBatches":
        """Images (N, 784) or (N, 1, 28, 28), grey or binary: grey ones are
        binarized once with ``binarize_seed`` (static) or kept for per-batch
        draws (dynamic); ``seed`` drives the shuffle and the dynamic draws."""
        probs = binarize(images, mode, _generator(binarize_seed))
        labels = None if labels is None else torch.as_tensor(labels)
        return cls(probs, labels, batch_size, seed, shuffle, dynamic=mode == "dynamic")

    def __len__(self) -> int:
        return len(self.images)

    def num_batches(self, epoch: int = 0) -> int:
        if self.shuffle and len(self) >= self.batch_size:
            return len(self) // self.batch_size
        return math.ceil(len(self) / self.batch_size)

    def order(self, epoch: int) -> Tensor:
        if not self.shuffle:
            return torch.arange(len(self))
        return torch.randperm(len(self), generator=_generator(self.seed, epoch))

    def iterate(self, epoch: int = 0, start: int = 0) -> Iterator[ImageBatch]:
        order = self.order(epoch)
        for index in range(start, self.num_batches(epoch)):
            rows = order[index * self.batch_size: (index + 1) * self.batch_size]
            images = self.images[rows]
            if self.dynamic:
                images = torch.bernoulli(images, generator=_generator(self.seed, epoch, index, 1))
            yield ImageBatch(images, self.labels[rows])
