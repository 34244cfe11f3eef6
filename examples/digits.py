"""A small Keras CNN on scikit-learn's digits (shipped with scikit-learn: no download).

The hand-written best practice for a vramq job: fixed seed, normalisation inside the model, early
stopping, learning-rate decay on plateaus, the best model checkpointed to $VRAMQ_OUTPUT_DIR/models/ and
one line of metrics per epoch in $VRAMQ_OUTPUT_DIR/metrics.jsonl. Runs the same outside vramq.

    python examples/digits.py [--epochs 30]
"""

import argparse
import json
import os
from pathlib import Path

import keras
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


class JsonlMetrics(keras.callbacks.Callback):
    """Appends each epoch's logs to metrics.jsonl, flushed, so vramq records them while training runs."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        record = {"epoch": epoch, **{name: float(value) for name, value in (logs or {}).items()}}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")


def build_model() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input(shape=(8, 8, 1)),
            keras.layers.Rescaling(1.0 / 16.0),  # digits pixels are 0..16
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    keras.utils.set_random_seed(args.seed)
    output = Path(os.environ.get("VRAMQ_OUTPUT_DIR", "digits-output"))
    (output / "models").mkdir(parents=True, exist_ok=True)

    digits = load_digits()
    images = digits.images.astype("float32")[..., np.newaxis]
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=0.2, random_state=args.seed, stratify=digits.target
    )

    model = build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(
        x_train,
        y_train,
        validation_split=0.15,
        epochs=args.epochs,
        batch_size=args.batch_size,
        verbose=2,
        callbacks=[
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=5, restore_best_weights=True),
            keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2),
            keras.callbacks.ModelCheckpoint(
                output / "models" / "digits.keras", monitor="val_loss", save_best_only=True
            ),
            JsonlMetrics(output / "metrics.jsonl"),
        ],
    )
    loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f"test loss {loss:.4f}, test accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main()
