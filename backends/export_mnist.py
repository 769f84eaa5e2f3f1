"""`tfserving-lb export-mnist DIR`: train the seed's MNIST model and export a SavedModel.

Called as `python -m lb export-mnist DIR [--epochs N] [--seed S] [--force]`
(lb/cli.py hands the argument list to `main`), and by tests and the demo through
`export_mnist`. Nothing is downloaded: it trains on scikit-learn's bundled
digits upsampled to 28x28 (see `digits`).

Guarantees: DIR/1 holds a SavedModel whose `serving_default` signature has one
input `images` (DT_FLOAT, [-1, 784]) and one output `probabilities`
(DT_FLOAT, [-1, 10], rows sum to 1); the model is 784 -> Dense 128 ReLU ->
Dense 10 softmax. An existing DIR/1/saved_model.pb is kept unless `force`.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path
from typing import Any

from backends.digits import FEATURES, train_test

logger = logging.getLogger("backends")

VERSION = "1"
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
DEFAULT_EPOCHS = 15


def _train(epochs: int, seed: int) -> tuple[list[Any], float]:
    """Train the Keras model; returns its weights [W1, b1, W2, b2] and test accuracy."""
    import keras

    keras.utils.set_random_seed(seed)
    x_train, y_train, x_test, y_test = train_test(seed)
    model = keras.Sequential([
        keras.Input(shape=(FEATURES,)),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    return model.get_weights(), float(accuracy)


def _save(weights: list[Any], path: Path) -> None:
    """Save the weights as a plain tf.Module (no Keras needed to serve it)."""
    import tensorflow as tf

    class Mnist(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.w1, self.b1, self.w2, self.b2 = (tf.Variable(w) for w in weights)

        @tf.function(input_signature=[  # type: ignore[untyped-decorator]
            tf.TensorSpec([None, FEATURES], tf.float32, name=INPUT_NAME)])
        def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
            hidden = tf.nn.relu(tf.matmul(images, self.w1) + self.b1)
            return {OUTPUT_NAME: tf.nn.softmax(tf.matmul(hidden, self.w2) + self.b2)}

    module = Mnist()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def export_mnist(directory: Path, epochs: int = DEFAULT_EPOCHS, seed: int = 0,
                 force: bool = False) -> Path:
    """Train and export to `directory`/1; returns that version folder (kept if present)."""
    target = Path(directory) / VERSION
    if (target / "saved_model.pb").exists() and not force:
        logger.info("%s already holds a SavedModel; keeping it (use --force to retrain)", target)
        return target
    weights, accuracy = _train(epochs, seed)
    print(f"test accuracy {accuracy:.3f} on held-out digits ({epochs} epochs, seed {seed})")
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _save(weights, target)
    logger.info("exported the MNIST model to %s", target)
    return target


def main(argv: list[str]) -> int:
    """Entry point of `tfserving-lb export-mnist`; returns the exit code."""
    p = argparse.ArgumentParser(prog="tfserving-lb export-mnist",
                                description=__doc__.splitlines()[0])
    p.add_argument("dir", type=Path, help="model base path; the model goes to DIR/1")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="retrain even if DIR/1 exists")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    path = export_mnist(args.dir, args.epochs, args.seed, args.force)
    print(f"SavedModel at {path}")
    return 0
