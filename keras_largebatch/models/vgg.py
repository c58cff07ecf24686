"""VGG-19 with batch normalization for CIFAR, as used by seed 000 (AdaBatch)."""

from __future__ import annotations

import keras
from keras import layers

from keras_largebatch.models.norm import _batch_norm, _kernel_regularizer
from keras_largebatch.models.registry import register

# Simonyan & Zisserman's configuration E; "M" is a 2x2 max-pool with stride 2.
VGG19_CONFIG: tuple[int | str, ...] = (
    64, 64, "M",
    128, 128, "M",
    256, 256, 256, 256, "M",
    512, 512, 512, 512, "M",
    512, 512, 512, 512, "M",
)  # fmt: skip


@register("vgg19_bn")
def vgg19_bn(
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    fc_units: tuple[int, ...] = (512, 512),
    dropout: float = 0.5,
    weight_decay: float = 0.0,
    bn_batch_size: int | None = None,
    bn_synchronized: bool = False,
) -> keras.Model:
    """VGG-19-BN, CIFAR version (Simonyan & Zisserman 2014 config E; seed 000 Sec. 4).

    Sixteen 3x3 'same' convs (64, 64, M, 128, 128, M, 256 x4, M, 512 x4, M, 512 x4,
    M), each conv -> BN -> ReLU, with 2x2/2 max-pools at M. A 32x32 image leaves the
    last pool as 1x1x512.

    Seed 000 trains "VGG19 with batch normalization" in PyTorch without giving the
    head. We use the common PyTorch CIFAR version (chengyangfu/pytorch-vgg-cifar10
    `vgg19_bn`): TWO fully connected hidden layers of 512 units with ReLU, each
    preceded by dropout 0.5, then the logits layer. `fc_units=()` gives the other
    common head (kuangliu/pytorch-cifar): a single linear layer from the 512 features
    to the logits. Other choices: convs have no bias (BN's beta replaces it),
    He-normal initialisation, and 'same' padding on the pools so 28x28 inputs also
    work (28 -> 14 -> 7 -> 4 -> 2 -> 1). `bn_synchronized=True` keeps the BN statistics
    equal across replicas (models/norm.py).
    """
    reg = _kernel_regularizer(weight_decay)
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    block, conv = 1, 0
    for item in VGG19_CONFIG:
        if item == "M":
            x = layers.MaxPooling2D(
                2, strides=2, padding="same", name=f"block{block}_pool"
            )(x)
            block, conv = block + 1, 0
            continue
        conv += 1
        name = f"block{block}_conv{conv}"
        x = layers.Conv2D(
            item,
            3,
            padding="same",
            use_bias=False,
            kernel_initializer="he_normal",
            kernel_regularizer=reg,
            name=name,
        )(x)
        x = _batch_norm(bn_batch_size, f"{name}_bn", bn_synchronized)(x)
        x = layers.ReLU(name=f"{name}_relu")(x)
    x = layers.Flatten(name="flatten")(x)
    for idx, units in enumerate(fc_units, 1):
        if dropout:
            x = layers.Dropout(dropout, name=f"fc{idx}_dropout")(x)
        x = layers.Dense(
            units,
            activation="relu",
            kernel_initializer="he_normal",
            kernel_regularizer=reg,
            name=f"fc{idx}",
        )(x)
    outputs = layers.Dense(
        num_classes,
        kernel_initializer="he_normal",
        kernel_regularizer=reg,
        name="logits",
    )(x)
    return keras.Model(inputs, outputs, name="vgg19_bn")
