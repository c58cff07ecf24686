"""The Fashion-MNIST CNN of seed 002, Appendix A.

"3 convolutional layers, where each layer has 32, 64, 128 filters respectively, with MaxPool
after each convolutional layer. For all layers, we use ReLU activations and Dropout."
The paper gives no kernel size, dropout rate or head; we use 3x3 'same' convolutions, 2x2
max-pools, dropout after each block and a 10-way softmax head (logits out; the loss applies the
softmax). `dropout=0.0` gives a deterministic network for replica-equivalence tests.
"""

from __future__ import annotations

import keras
from keras import layers

from keras_largebatch.models.registry import register


@register("cnn_fashion")
def cnn_fashion(
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    filters: tuple[int, ...] = (32, 64, 128),
    dropout: float = 0.25,
    dense_units: int = 0,
) -> keras.Model:
    """Seed-002 CNN: [conv3x3-ReLU, maxpool2, dropout] x 3 -> (dense) -> logits."""
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for i, f in enumerate(filters):
        x = layers.Conv2D(f, 3, padding="same", activation="relu", name=f"conv{i + 1}")(x)
        x = layers.MaxPooling2D(2, padding="same", name=f"pool{i + 1}")(x)
        if dropout:
            x = layers.Dropout(dropout, name=f"dropout{i + 1}")(x)
    x = layers.Flatten(name="flatten")(x)
    if dense_units:
        x = layers.Dense(dense_units, activation="relu", name="fc")(x)
        if dropout:
            x = layers.Dropout(dropout, name="dropout_fc")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="cnn_fashion")
