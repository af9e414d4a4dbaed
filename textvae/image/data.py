"""MNIST-style image files: readers, a split finder, and binarization.

Readers return numpy ``images`` (N, 784), row-major 28x28 (uint8 grey 0..255
or 0/1; floats if an npz stores floats), and ``labels`` int64 (N,) or None.
``binarize`` and ``ImageDataset`` give torch float32 (N, 1, 28, 28).

``load_images(path)`` picks the reader from the file name:
    ``*.npz``  array ``x`` (N, 784) or (N, 28, 28), labels ``y`` if present,
               e.g. binarized_mnist_{train,valid,test}.npz (uint8 0/1);
    ``*.amat`` Larochelle's binarized MNIST text: a line per image of 784
               space-separated 0/1 values, optionally a 785th label column;
    idx        ``*-idx3-ubyte[.gz]`` or another ``*.gz`` (official MNIST), with
               labels from the matching ``*-labels-idx1-ubyte[.gz]`` if present.
``load_split_dir(directory, split)`` takes the first of these that exists:
    1. ``binarized_mnist_{split}.npz``;
    2. ``mnist_5k.npz`` rows ``{split}_idx``: the embedded sample in data/mnist
       (``train`` 4,500 and ``test`` 500 grey images, see its README);
    3. ``{train|t10k}-images-idx3-ubyte[.gz]`` (+ labels), there or in ``idx/``;
    4. ``*_{split}.amat`` (the first in sorted order).
A bad or missing file raises ``ValueError`` / ``FileNotFoundError`` with a
one-line message that starts with the file name.
"""

from __future__ import annotations

import gzip
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

PathLike, ArrayLike, Labels = Union[str, Path], Union[np.ndarray, torch.Tensor], Optional[np.ndarray]
SIDE, N_PIXELS = 28, 784
IDX_MAGIC = {2051: "an idx image file", 2049: "an idx label file"}
IDX_PREFIX = {"train": "train", "test": "t10k"}  # split -> idx file prefix
BINARIZE_MODES = ("static", "dynamic")


def _existing(path: PathLike) -> Path:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return Path(path)


def _as_rows(path: Path, images: np.ndarray, labels: Labels) -> tuple[np.ndarray, Labels]:
    if images.ndim == 3 and images.shape[1:] == (SIDE, SIDE):
        images = images.reshape(len(images), N_PIXELS)
    if images.ndim != 2 or images.shape[1] != N_PIXELS:
        raise ValueError(f"{path}: expected images of shape (N, {N_PIXELS}), got {images.shape}")
    if labels is not None and labels.shape != (len(images),):
        raise ValueError(f"{path}: {labels.shape} labels for {len(images)} images")
    return images, None if labels is None else labels.astype(np.int64)


def read_npz(path: PathLike, key: str = "x", split: Optional[str] = None) -> tuple[np.ndarray, Labels]:
    """Images (N, 784) from ``key``, labels (N,) from ``y`` if present; ``split``: rows ``{split}_idx``."""
    path = _existing(path)
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: not a readable npz file ({err})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: a single .npy array, expected an npz archive")
    with data:
        for name in [key] + ([f"{split}_idx"] if split else []):
            if name not in data.files:
                raise ValueError(f"{path}: no array {name!r} (has {', '.join(data.files) or 'none'})")
        images, labels = _as_rows(path, data[key], data["y"] if "y" in data.files else None)
        rows = data[f"{split}_idx"] if split else None
    if rows is None:
        return images, labels
    if rows.size and not 0 <= rows.min() <= rows.max() < len(images):
        raise ValueError(f"{path}: {split}_idx has rows outside 0..{len(images) - 1}")
    return images[rows], None if labels is None else labels[rows]


def _read_idx(path: PathLike, magic: int, n_dims: int) -> tuple[Path, tuple[int, ...], bytes]:
    """Validated (path, dims, payload) of an idx file, gunzipped if it is gzip data."""
    path = _existing(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{path}: broken gzip data ({err})") from None
    size = 4 * (1 + n_dims)
    found = struct.unpack(">I", raw[:4])[0] if len(raw) >= 4 else None
    if found != magic:
        what = IDX_MAGIC.get(found, "not an idx file")
        raise ValueError(f"{path}: magic number {found} ({what}), expected {magic}")
    if len(raw) < size:
        raise ValueError(f"{path}: {len(raw)} bytes, too short for an idx header")
    dims = struct.unpack(f">{n_dims}I", raw[4:size])
    if len(raw) != size + int(np.prod(dims)):
        raise ValueError(f"{path}: {len(raw)} bytes, header {tuple(dims)} needs {size + int(np.prod(dims))}")
    return path, tuple(dims), raw[size:]


def read_idx_images(path: PathLike) -> np.ndarray:
    """Official MNIST idx3 images (magic 2051), gzipped or not -> uint8 (N, 784)."""
    path, (n, rows, cols), payload = _read_idx(path, 2051, 3)
    if (rows, cols) != (SIDE, SIDE):
        raise ValueError(f"{path}: images are {rows}x{cols}, expected {SIDE}x{SIDE}")
    return np.frombuffer(payload, np.uint8).reshape(n, N_PIXELS).copy()


def read_idx_labels(path: PathLike) -> np.ndarray:
    """Official MNIST idx1 labels (magic 2049), gzipped or not -> int64 (N,)."""
    return np.frombuffer(_read_idx(path, 2049, 1)[2], np.uint8).astype(np.int64)


def read_amat(path: PathLike) -> tuple[np.ndarray, Labels]:
    """Larochelle's ``.amat`` text -> images uint8 0/1 (N, 784), labels (N,) or None.

    Pixels must be written ``0`` / ``1`` (as in the original files) and a label as digits.
    """
    path = _existing(path)
    rows, labels, width = [], [], 0
    with path.open("r", encoding="ascii", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            where = f"{path}: line {lineno}:"
            if not fields:
                continue
            if len(fields) not in (N_PIXELS, N_PIXELS + 1) or len(fields) != (width or len(fields)):
                raise ValueError(f"{where} {len(fields)} values, expected {width or '784 or 785'}")
            width = len(fields)
            pixels, label = fields[:N_PIXELS], fields[N_PIXELS:]
            if not set(pixels) <= {"0", "1"} or not all(v.isdigit() for v in label):
                raise ValueError(f"{where} expected 0/1 pixels and optionally a non-negative integer label")
            rows.append("".join(pixels))
            labels.extend(int(v) for v in label)
    if not rows:
        raise ValueError(f"{path}: no images")
    images = np.frombuffer("".join(rows).encode("ascii"), np.uint8).reshape(-1, N_PIXELS) - ord("0")
    return images, np.array(labels, dtype=np.int64) if labels else None


def load_images(path: PathLike) -> tuple[np.ndarray, Labels]:
    """Images (N, 784) and labels (N,) or None from any supported file (see module doc)."""
    path = _existing(path)
    name = path.name.lower()
    if name.endswith(".npz"):
        return read_npz(path)
    if name.endswith(".amat"):
        return read_amat(path)
    if "idx3" in name or "-ubyte" in name or name.endswith(".gz"):
        stem = path.name.replace("images-idx3", "labels-idx1").removesuffix(".gz")
        found = [p for p in (path.with_name(stem + ".gz"), path.with_name(stem)) if p.is_file()]
        labels = read_idx_labels(found[0]) if found and "labels-idx1" in stem else None
        return _as_rows(path, read_idx_images(path), labels)
    raise ValueError(f"{path}: unknown image format (expected .npz, .amat or an idx file)")


def load_split_dir(directory: PathLike, split: str) -> tuple[np.ndarray, Labels]:
    """Images (N, 784) and labels of ``split`` (train/valid/test) found in ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such directory")
    if (directory / f"binarized_mnist_{split}.npz").is_file():
        return read_npz(directory / f"binarized_mnist_{split}.npz")
    if (directory / "mnist_5k.npz").is_file() and split in IDX_PREFIX:
        return read_npz(directory / "mnist_5k.npz", split=split)
    prefix = IDX_PREFIX.get(split, split)
    for folder in (directory, directory / "idx"):
        for name in (f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-images-idx3-ubyte"):
            if (folder / name).is_file():
                return load_images(folder / name)
    for amat in sorted(directory.glob(f"*_{split}.amat"))[:1]:
        return read_amat(amat)
    raise FileNotFoundError(
        f"{directory}: no {split!r} split (looked for binarized_mnist_{split}.npz, mnist_5k.npz, "
        f"[idx/]{prefix}-images-idx3-ubyte[.gz], *_{split}.amat)")


def is_binary(images: torch.Tensor) -> bool:
    return bool(((images == 0) | (images == 1)).all())


def to_unit_interval(images: ArrayLike) -> torch.Tensor:
    """(N, 784)/(N, 28, 28)/(N, 1, 28, 28) -> float32 (N, 1, 28, 28); 0..255 grey is /255."""
    x = torch.as_tensor(images)
    if x.numel() % N_PIXELS or x.shape[-1] not in (SIDE, N_PIXELS):
        raise ValueError(f"images of shape {tuple(x.shape)} are not 28x28")
    grey = (x.dtype == torch.uint8 or bool((x > 1).any())) and not is_binary(x)
    x = x.reshape(-1, 1, SIDE, SIDE).float() / (255.0 if grey else 1.0)
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError("image values must lie in 0..1 or 0..255")
    return x


def binarize(images: ArrayLike, mode: str = "static",
             generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Images -> float32 (N, 1, 28, 28).

    Already-binary images come back as they are, in any mode. ``static``: one
    Bernoulli draw per pixel with ``generator`` (seed 0 if None), so a seed fixes
    the data set. ``dynamic``: the [0, 1] intensities come back unchanged; draw
    fresh bits per batch with ``ImageDataset.collate`` (or ``torch.bernoulli``).
    """
    if mode not in BINARIZE_MODES:
        raise ValueError(f"binarization mode {mode!r} is not one of {', '.join(BINARIZE_MODES)}")
    probs = to_unit_interval(images)
    if mode == "dynamic" or is_binary(probs):
        return probs
    return torch.bernoulli(probs, generator=generator or torch.Generator().manual_seed(0))


class ImageDataset(Dataset):
    """In-memory images (1, 28, 28) float32 and labels int64 (-1 when unknown).

    ``static`` binarizes once with ``seed``; ``dynamic`` keeps intensities and
    ``collate`` draws new 0/1 pixels per batch, so every epoch differs: use
    ``loader()``, or a DataLoader with ``collate_fn=dataset.collate``, ``num_workers=0``.
    """

    def __init__(self, images: ArrayLike, labels: Labels = None, mode: str = "static", seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.images = binarize(images, mode, self.generator)
        self.dynamic = mode == "dynamic" and not is_binary(self.images)
        n = len(self.images)
        self.labels = torch.full((n,), -1) if labels is None else torch.as_tensor(labels).long()
        if self.labels.shape != (n,):
            raise ValueError(f"{tuple(self.labels.shape)} labels for {n} images")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def collate(self, batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack to (B, 1, 28, 28), (B,); draw fresh 0/1 pixels when dynamic."""
        images = torch.stack([item[0] for item in batch])
        if self.dynamic:
            images = torch.bernoulli(images, generator=self.generator)
        return images, torch.stack([item[1] for item in batch])

    def loader(self, batch_size: int, shuffle: bool = True, seed: int = 0) -> DataLoader:
        """A single-process DataLoader using ``collate`` and a seeded shuffle."""
        return DataLoader(self, batch_size=batch_size, shuffle=shuffle, collate_fn=self.collate,
                          generator=torch.Generator().manual_seed(seed))
