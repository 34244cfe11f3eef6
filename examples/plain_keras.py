"""An ordinary Keras script with no vramq code in it.

Submitted through vramq it still gets per-epoch metrics (live), the best model saved as a model
version, and a resumable checkpoint: the start-up hook adds them to `fit` (autolog).

    vramq submit --vram 2000 -- python examples/plain_keras.py
"""

import keras
from sklearn.datasets import load_digits

digits = load_digits()
x = digits.data.astype("float32") / 16.0
y = digits.target

model = keras.Sequential(
    [
        keras.Input(shape=(64,)),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dropout(0.2),
        keras.layers.Dense(10, activation="softmax"),
    ],
    name="plain_digits",
)
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(x, y, epochs=10, batch_size=64, validation_split=0.2, verbose=2)
