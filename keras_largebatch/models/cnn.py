"""The Fashion-MNIST CNN of seed 002, Appendix A.

"3 convolutional layers, where each layer has 32, 64, 128 filters respectively, with MaxPool
after each convolutional layer. For all layers, we use ReLU activations and Dropout."
The paper gives no kernel size, dropout rate or head; we use 3x3 'same' convolutions, 2x2
max-pools, dropout after each block and a 10-way softmax head (logits out; the loss applies the
softmax). `dropout=0.0` gives a deterministic network for replica-equivalence tests.

`batch_norm=True` is the same network with batch normalisation after each convolution
(conv without bias -> BN -> ReLU, the placement of the AdaBatch paper's VGG19-BN and ResNet-20),
for studies that need a BN network at this network's cost; `bn_momentum` is Keras' moving-
statistics momentum (0.9 = PyTorch's 0.1, for schedules with few updates per phase) and
`bn_batch_size` swaps in ghost BN over that many samples (models/norm.py).
"""

from __future__ import annotations

import keras
from keras import layers

from keras_largebatch import validate
from keras_largebatch.models.norm import _batch_norm
from keras_largebatch.models.registry import register


@register("cnn_fashion")
def cnn_fashion(
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    filters: tuple[int, ...] = (32, 64, 128),
    dropout: float = 0.25,
    dense_units: int = 0,
    batch_norm: bool = False,
    bn_momentum: float = 0.99,
    bn_batch_size: int | None = None,
) -> keras.Model:
    """Seed-002 CNN: [conv3x3-(BN)-ReLU, maxpool2, dropout] x 3 -> (dense) -> logits."""
    validate.boolean("cnn_fashion.batch_norm", batch_norm)
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for i, f in enumerate(filters):
        if batch_norm:
            x = layers.Conv2D(f, 3, padding="same", use_bias=False, name=f"conv{i + 1}")(x)
            x = _batch_norm(bn_batch_size, f"conv{i + 1}_bn", momentum=bn_momentum)(x)
            x = layers.Activation("relu", name=f"conv{i + 1}_relu")(x)
        else:
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
