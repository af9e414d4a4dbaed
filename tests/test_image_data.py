"""Tests for textvae.image.data: file readers, split finder, binarization."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from textvae.image.data import (ImageDataset, binarize, load_images, load_split_dir, read_amat,
                                read_idx_images, read_idx_labels, read_npz)

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "data" / "mnist"


def grey_images(n: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 784), dtype=np.uint8)


def idx_bytes(magic: int, dims: tuple, payload: bytes) -> bytes:
    return struct.pack(f">{1 + len(dims)}I", magic, *dims) + payload


def write_idx(tmp_path: Path, images: np.ndarray, labels: np.ndarray, gz: bool) -> Path:
    suffix = ".gz" if gz else ""
    opener = gzip.open if gz else open
    image_path = tmp_path / f"train-images-idx3-ubyte{suffix}"
    with opener(image_path, "wb") as f:
        f.write(idx_bytes(2051, (len(images), 28, 28), images.tobytes()))
    with opener(tmp_path / f"train-labels-idx1-ubyte{suffix}", "wb") as f:
        f.write(idx_bytes(2049, (len(labels),), labels.astype(np.uint8).tobytes()))
    return image_path


def amat_text(images: np.ndarray, labels=None) -> str:
    lines = []
    for i, row in enumerate(images):
        values = [str(v) for v in row] + ([str(labels[i])] if labels is not None else [])
        lines.append(" ".join(values))
    return "\n".join(lines) + "\n"


def test_read_npz_with_and_without_labels(tmp_path):
    x = (grey_images() > 127).astype(np.uint8)
    np.savez_compressed(tmp_path / "a.npz", x=x)
    images, labels = read_npz(tmp_path / "a.npz")
    assert images.shape == (6, 784) and images.dtype == np.uint8 and labels is None
    np.savez_compressed(tmp_path / "b.npz", x=x.reshape(6, 28, 28), y=np.arange(6))
    images, labels = load_images(tmp_path / "b.npz")
    assert np.array_equal(images, x) and labels.tolist() == list(range(6))


def test_read_npz_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_npz(tmp_path / "missing.npz")
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 784)))
    with pytest.raises(ValueError, match=r"bad\.npz: no array 'x'"):
        read_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "shape.npz", x=np.zeros((2, 100)))
    with pytest.raises(ValueError, match="shape"):
        read_npz(tmp_path / "shape.npz")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="junk.npz"):
        read_npz(tmp_path / "junk.npz")


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx(tmp_path, gz):
    x, y = grey_images(), np.array([3, 1, 4, 1, 5, 9])
    path = write_idx(tmp_path, x, y, gz)
    assert np.array_equal(read_idx_images(path), x)
    assert read_idx_labels(str(path).replace("images-idx3", "labels-idx1")).tolist() == y.tolist()
    images, labels = load_images(path)
    assert np.array_equal(images, x) and labels.tolist() == y.tolist()
    assert load_split_dir(tmp_path, "train")[0].shape == (6, 784)


def test_read_idx_errors(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(idx_bytes(2049, (1,), b"\x07"))
    with pytest.raises(ValueError, match="magic number 2049.*expected 2051"):
        read_idx_images(path)
    path.write_bytes(idx_bytes(2051, (2, 28, 28), bytes(784)))  # one image short
    with pytest.raises(ValueError, match="bytes"):
        read_idx_images(path)
    path.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(ValueError, match="gzip"):
        read_idx_images(path)


def test_read_amat(tmp_path):
    x = (grey_images(4) > 127).astype(np.uint8)
    (tmp_path / "bin_train.amat").write_text(amat_text(x))
    images, labels = read_amat(tmp_path / "bin_train.amat")
    assert np.array_equal(images, x) and images.dtype == np.uint8 and labels is None
    (tmp_path / "lab.amat").write_text(amat_text(x, [7, 0, 2, 9]))
    images, labels = load_images(tmp_path / "lab.amat")
    assert np.array_equal(images, x) and labels.tolist() == [7, 0, 2, 9]
    assert load_split_dir(tmp_path, "train")[0].shape == (4, 784)


@pytest.mark.parametrize("bad_line, message", [
    ("0 1 0", "line 2: 3 values"),
    (" ".join(["0"] * 783 + ["x"]), "line 2: expected 0/1"),
    (" ".join(["0"] * 783 + ["0.5"]), "line 2: expected 0/1"),
])
def test_read_amat_malformed(tmp_path, bad_line, message):
    path = tmp_path / "bad.amat"
    path.write_text(" ".join(["1"] * 784) + "\n" + bad_line + "\n")
    with pytest.raises(ValueError, match=message):
        read_amat(path)


def test_load_split_dir_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no 'valid' split"):
        load_split_dir(tmp_path, "valid")
    with pytest.raises(FileNotFoundError):
        load_split_dir(tmp_path / "nope", "train")


def test_static_binarization_is_seeded():
    x = grey_images(20)
    a = binarize(x, "static", torch.Generator().manual_seed(1))
    b = binarize(x, "static", torch.Generator().manual_seed(1))
    c = binarize(x, "static", torch.Generator().manual_seed(2))
    assert a.shape == (20, 1, 28, 28) and a.dtype == torch.float32
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_binary_images_pass_through():
    x = (grey_images() > 127).astype(np.uint8)
    for mode in ("static", "dynamic"):
        assert torch.equal(binarize(x, mode), torch.from_numpy(x).float().view(-1, 1, 28, 28))
    with pytest.raises(ValueError, match="mode"):
        binarize(x, "sometimes")


def test_dynamic_binarization_resamples_each_epoch():
    x = np.full((8, 784), 77, dtype=np.uint8)  # intensity 77/255 ~ 0.30
    dataset = ImageDataset(x, np.arange(8), mode="dynamic", seed=0)
    loader = dataset.loader(batch_size=8, shuffle=False)
    epochs = [next(iter(loader))[0] for _ in range(200)]
    assert set(epochs[0].unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(epochs[0], epochs[1])
    mean = torch.stack(epochs).mean().item()
    assert abs(mean - 77 / 255) < 0.01
    static = ImageDataset(x, mode="static", seed=0)
    assert torch.equal(static[3][0], static[3][0]) and static[3][1].item() == -1


@pytest.mark.skipif(not (SAMPLE_DIR / "mnist_5k.npz").is_file(), reason="embedded sample missing")
def test_embedded_sample_loads():
    train_x, train_y = load_split_dir(SAMPLE_DIR, "train")
    test_x, test_y = load_split_dir(SAMPLE_DIR, "test")
    assert train_x.shape == (4500, 784) and test_x.shape == (500, 784)
    assert train_x.dtype == np.uint8 and train_x.max() > 1  # grey, not binarized
    assert np.bincount(test_y).tolist() == [50] * 10
    all_x, all_y = load_images(SAMPLE_DIR / "mnist_5k.npz")
    assert all_x.shape == (5000, 784) and all_y.shape == (5000,)
    assert len({row.tobytes() for row in test_x} & {row.tobytes() for row in train_x[:500]}) == 0
