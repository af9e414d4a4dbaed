"""PNG figures of the MNIST model: image grids and the latent scatter.

matplotlib with the Agg backend (no display needed). Each function writes
one PNG file and returns its path.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

PAD = 2  # pixels between tiles


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def tile(images: Tensor, columns: int) -> np.ndarray:
    """(N, 1, H, W) in [0, 1] -> one (rows * (H + PAD) + PAD, ...) array with
    white separators; the last row is padded with blank tiles."""
    n, _, height, width = images.shape
    rows = math.ceil(n / columns)
    canvas = np.ones((rows * (height + PAD) + PAD, columns * (width + PAD) + PAD), dtype=np.float32)
    pixels = images.detach().float().cpu().numpy()[:, 0]
    for i in range(n):
        r, c = divmod(i, columns)
        top, left = PAD + r * (height + PAD), PAD + c * (width + PAD)
        canvas[top: top + height, left: left + width] = 1.0 - pixels[i]  # dark digits on white
    return canvas


def save_grid(images: Tensor, path: str | Path, columns: int, title: Optional[str] = None) -> Path:
    """A grid of images (N, 1, 28, 28), ``columns`` a row, as a PNG."""
    plt = _pyplot()
    canvas = tile(images, columns)
    scale = 0.04  # inches per pixel
    figure = plt.figure(figsize=(canvas.shape[1] * scale, canvas.shape[0] * scale + (0.4 if title else 0)))
    axes = figure.add_axes((0, 0, 1, canvas.shape[0] * scale / figure.get_figheight()))
    axes.imshow(canvas, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axes.axis("off")
    if title:
        figure.suptitle(title, fontsize=9, y=0.99)
    return _save(figure, path, plt)


def save_pairs(originals: Tensor, reconstructions: Tensor, path: str | Path, columns: int = 8,
               title: Optional[str] = None) -> Path:
    """Rows of originals, each directly above its row of reconstructions."""
    rows = []
    for start in range(0, len(originals), columns):
        rows += [_pad_row(originals[start: start + columns], columns),
                 _pad_row(reconstructions[start: start + columns], columns)]
    return save_grid(torch.cat(rows), path, columns, title)


def _pad_row(images: Tensor, columns: int) -> Tensor:
    missing = columns - len(images)
    return torch.cat([images, images.new_zeros(missing, *images.shape[1:])]) if missing else images


def save_scatter(points: Tensor, labels: Tensor, path: str | Path, title: str,
                 axis_names: tuple[str, str] = ("z1", "z2")) -> Path:
    """2-D points (N, 2) coloured by digit label (N,); -1 labels are grey."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6.5, 6))
    xy, labels = points.float().cpu().numpy(), labels.cpu().numpy()
    known = labels >= 0
    if (~known).any():
        axes.scatter(xy[~known, 0], xy[~known, 1], s=3, c="grey", alpha=0.5, label="no label")
    if known.any():
        cloud = axes.scatter(xy[known, 0], xy[known, 1], s=3, c=labels[known], cmap="tab10", vmin=-0.5, vmax=9.5,
                             alpha=0.7)
        figure.colorbar(cloud, ax=axes, ticks=range(10), label="digit")
    else:
        axes.legend(loc="best")
    axes.set_title(title, fontsize=9)
    axes.set_xlabel(axis_names[0])
    axes.set_ylabel(axis_names[1])
    return _save(figure, path, plt)


def _save(figure, path: str | Path, plt) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def latent_plane(means: Tensor) -> tuple[Tensor, tuple[str, str], str]:
    """Posterior means (N, D) as 2-D points (N, 2) for ``save_scatter``: the
    latent itself for D <= 2, else its first two principal components (PCA by
    SVD of the centred means). Returns the points, the axis names and a phrase
    that says which."""
    dim = means.shape[1]
    if dim == 2:
        return means, ("z1", "z2"), "the 2-D latent"
    if dim == 1:
        return torch.cat([means, torch.zeros_like(means)], 1), ("z1", "z2"), "the 1-D latent"
    centred = means - means.mean(0)
    _, singular, vectors = torch.linalg.svd(centred, full_matrices=False)
    share = float(singular[:2].pow(2).sum() / singular.pow(2).sum().clamp_min(1e-12))
    return (centred @ vectors[:2].T,  # (N, 2)
            ("principal component 1", "principal component 2"),
            f"first 2 principal components of {dim} dims ({100 * share:.0f}% of the variance)")
