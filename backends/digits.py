"""scikit-learn's bundled 8x8 handwritten digits as MNIST-like 28x28 inputs.

Used by `export_mnist` (training data) and by the proxy demo and tests
(`sample_request`, `write_sample_request`). Imports numpy and scikit-learn only,
never TensorFlow, and downloads nothing: `load_digits` ships inside sklearn.

Guarantees: images are float32 rows of 784 values in [0, 1] (each 8x8 pixel
becomes a 3x3 block, centred with a 2-pixel border, like MNIST's 20x20 digits
in 28x28); the train/test split is deterministic for a given seed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SIDE = 28
FEATURES = IMAGE_SIDE * IMAGE_SIDE
TEST_FRACTION = 0.2


def upsample(images_8x8: np.ndarray) -> np.ndarray:
    """[n, 64] values 0..16 -> [n, 784] float32 in [0, 1]."""
    n = images_8x8.shape[0]
    grid = images_8x8.reshape(n, 8, 8).astype(np.float32) / 16.0
    big = np.kron(grid, np.ones((1, 3, 3), dtype=np.float32))  # [n, 24, 24]
    padded = np.pad(big, ((0, 0), (2, 2), (2, 2)))
    return padded.reshape(n, FEATURES)


def load_digits_28x28() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits: images [n, 784] float32 in [0, 1], labels [n] int64."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return upsample(np.asarray(data.data)), np.asarray(data.target, dtype=np.int64)


def train_test(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): a shuffled split holding out TEST_FRACTION."""
    x, y = load_digits_28x28()
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(len(x) * TEST_FRACTION)
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def sample_digits(n: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The first `n` held-out test digits (never used for training) and their labels."""
    _, _, x_test, y_test = train_test(seed)
    return x_test[:n], y_test[:n]


def sample_request(n: int = 1, seed: int = 0) -> dict[str, Any]:
    """A row-format predict body: `{"instances": [[784 floats], ...]}` of test digits."""
    images, _ = sample_digits(n, seed)
    return {"instances": [[round(float(v), 4) for v in row] for row in images]}


def write_sample_request(path: Path, n: int = 1, seed: int = 0) -> Path:
    """Write `sample_request(n)` as JSON to `path` (for `curl -d @path`); returns path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(sample_request(n, seed)))
    return path
