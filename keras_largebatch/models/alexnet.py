"""AlexNet variants: the reduced CIFAR AlexNet of seed 001 and AlexNet-BN of seed 004.

Both output logits; the loss applies the softmax.
"""

from __future__ import annotations

from typing import Literal

import keras
from keras import layers

from keras_largebatch.errors import UserInputError
from keras_largebatch.models.norm import _batch_norm, _kernel_regularizer
from keras_largebatch.models.registry import register

_BN_PLACES = ("none", "conv", "all")


def _conv_block(
    x,
    *,
    filters: int,
    kernel_size: int,
    strides: int = 1,
    padding: str = "same",
    use_bn: bool,
    bn_batch_size: int | None,
    regularizer,
    name: str,
    **bn_kwargs,
):
    """conv -> (BN) -> ReLU; no conv bias when BN follows (BN's beta replaces it)."""
    x = layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=not use_bn,
        kernel_initializer="he_normal",
        kernel_regularizer=regularizer,
        name=name,
    )(x)
    if use_bn:
        x = _batch_norm(bn_batch_size, f"{name}_bn", **bn_kwargs)(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _dense_block(x, *, units: int, use_bn: bool, bn_batch_size, regularizer, name: str,
                 **bn_kwargs):
    """dense -> (BN) -> ReLU, no bias when BN follows."""
    x = layers.Dense(
        units,
        use_bias=not use_bn,
        kernel_initializer="he_normal",
        kernel_regularizer=regularizer,
        name=name,
    )(x)
    if use_bn:
        x = _batch_norm(bn_batch_size, f"{name}_bn", **bn_kwargs)(x)
    return layers.ReLU(name=f"{name}_relu")(x)


@register("alexnet_reduced")
def alexnet_reduced(
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    batch_norm: Literal["none", "conv", "all"] = "none",
    weight_decay: float = 0.0,
    bn_batch_size: int | None = None,
    bn_momentum: float = 0.99,
    bn_synchronized: bool = False,
) -> keras.Model:
    """The reduced AlexNet of seed 001 (Masters & Luschi), Section 3.1.

    From the paper: five convolutions with stride 1, kernel sizes [5, 3, 3, 3, 3],
    channels [16, 48, 96, 64, 64]; 3x3 max-pools with stride 2; two fully connected
    hidden layers of 256 units; He initialisation. `batch_norm` picks the variant:
    "none" (Figs 1, 16), "all" = BN after every conv and both hidden FC layers (Fig
    5), "conv" = BN after the convs only (Fig 6). The paper trains it with weight
    decay 5e-4 (pass `weight_decay=5e-4`). `bn_momentum` is the moving-statistics momentum
    (Keras' 0.99 lags badly when a large-batch run makes only ~100 updates; Caffe uses 0.9).
    `bn_synchronized=True` keeps the BN statistics equal across replicas (models/norm.py).

    Left open by the paper, chosen here: max-pools after conv1, conv2 and conv5 as in
    AlexNet; 'same' padding for convs and pools, so 28x28 and 32x32 inputs both end in
    a 4x4x64 map (1024 features) before the FC layers; BN sits between the linear op
    and the ReLU, and the linear op then has no bias; no dropout and no LRN.
    """
    if batch_norm not in _BN_PLACES:
        raise UserInputError(
            f"alexnet_reduced batch_norm={batch_norm!r} is not one of {_BN_PLACES}; "
            "use 'none', 'conv' (BN after convs) or 'all' (convs and FC layers)"
        )
    conv_bn = batch_norm in ("conv", "all")
    fc_bn = batch_norm == "all"
    reg = _kernel_regularizer(weight_decay)

    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    kernels, channels = (5, 3, 3, 3, 3), (16, 48, 96, 64, 64)
    for idx, (kernel, filters) in enumerate(zip(kernels, channels, strict=True), 1):
        x = _conv_block(
            x,
            filters=filters,
            kernel_size=kernel,
            use_bn=conv_bn,
            bn_batch_size=bn_batch_size,
            regularizer=reg,
            name=f"conv{idx}",
            momentum=bn_momentum,
            synchronized=bn_synchronized,
        )
        if idx in (1, 2, 5):
            x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"pool{idx}")(x)
    x = layers.Flatten(name="flatten")(x)
    for idx in (1, 2):
        x = _dense_block(
            x,
            units=256,
            use_bn=fc_bn,
            bn_batch_size=bn_batch_size,
            regularizer=reg,
            name=f"fc{idx}",
            momentum=bn_momentum,
            synchronized=bn_synchronized,
        )
    outputs = layers.Dense(
        num_classes,
        kernel_initializer="he_normal",
        kernel_regularizer=reg,
        name="logits",
    )(x)
    return keras.Model(inputs, outputs, name=f"alexnet_reduced_bn_{batch_norm}")


# AlexNet's stem at 227x227: conv1 11x11/4 valid -> 55, pool1 -> 27, pool2 -> 13,
# pool5 -> 6. It needs at least 67 px per side to leave a 3x3 map for pool5.
_BVLC_MIN_SIDE = 67


def _pool_out(n: int) -> int:
    return (n - 3) // 2 + 1


@register("alexnet_bn")
def alexnet_bn(
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    dropout: float = 0.5,
    first_conv_stride: int | None = None,
    weight_decay: float = 0.0,
    bn_batch_size: int | None = None,
    bn_synchronized: bool = False,
) -> keras.Model:
    """AlexNet-BN of seed 004 (You, Gitman & Ginsburg, "LARS"), Section 3.

    BVLC AlexNet with Local Response Normalization replaced by Batch Normalization,
    following the authors' nvcaffe `models/alexnet_bn/train_val.prototxt`: conv1
    96x11x11/4, conv2 256x5x5, conv3 384x3x3, conv4 384x3x3, conv5 256x3x3, each conv
    -> BN -> ReLU; 3x3/2 max-pools after conv1, conv2 and conv5; fc6 4096, fc7 4096
    (ReLU, dropout 0.5, no BN) and the logits layer. At 227x227 the FC layers see a
    6x6x256 map, as in BVLC.

    Choices made here:
    - Small inputs: when the image is smaller than 67 px per side (the smallest size
      on which the BVLC stride-4 stem leaves a map for pool5; this covers 28x28
      Fashion-MNIST and 32x32 CIFAR), conv1 uses stride 1 and every conv uses 'same'
      padding, so a 32x32 image reaches the FC layers as 3x3x256 and a 28x28 one as
      2x2x256. Set `first_conv_stride` to force a stride (1 or 4); BVLC geometry
      (stride 4, conv1 'valid') is used whenever it is 4.
    - No grouped convolutions: BVLC's `group: 2` in conv2/4/5 was a two-GPU memory
      split, so conv2/4/5 here have twice BVLC's weights (62.4M parameters at 227 px /
      1000 classes instead of 61.0M).
    - Convs have no bias (BN's beta replaces it; nvcaffe keeps a redundant one in
      conv5).
    - BN momentum 0.9 and epsilon 1e-4 as in the prototxt; He-normal initialisation
      instead of the prototxt's fixed-std Gaussians, which were tuned for 227 px
      inputs.
    """
    if len(input_shape) != 3:
        raise UserInputError(
            f"alexnet_bn input_shape={tuple(input_shape)} is not "
            "(height, width, channels); "
            "give an image shape such as (32, 32, 3)"
        )
    height, width = input_shape[0], input_shape[1]
    side = min(height, width)
    if first_conv_stride is None:
        first_conv_stride = 4 if side >= _BVLC_MIN_SIDE else 1
    if first_conv_stride not in (1, 4):
        raise UserInputError(
            f"alexnet_bn first_conv_stride={first_conv_stride!r} is not 1 or 4; "
            "use 4 (BVLC, inputs >= 67 px), 1 (small images) or None (choose by size)"
        )
    bvlc = first_conv_stride == 4
    # Spatial size reaching pool5, checked here to give a readable error instead of a
    # negative-dimension one from deep inside Keras.
    n = (side - 11) // 4 + 1 if bvlc else side
    n = _pool_out(_pool_out(n)) if n >= 3 else 0
    if n < 3:
        fix = (
            "use first_conv_stride=1 (or None) for images below 67 px"
            if bvlc
            else "alexnet_bn needs images of at least 15x15"
        )
        raise UserInputError(
            f"alexnet_bn input_shape={tuple(input_shape)} is too small for "
            f"first_conv_stride={first_conv_stride}; {fix}"
        )

    reg = _kernel_regularizer(weight_decay)
    bn_kwargs = {"momentum": 0.9, "epsilon": 1e-4, "synchronized": bn_synchronized}
    inputs = keras.Input(shape=input_shape, name="image")
    x = _conv_block(
        inputs,
        filters=96,
        kernel_size=11,
        strides=first_conv_stride,
        padding="valid" if bvlc else "same",
        use_bn=True,
        bn_batch_size=bn_batch_size,
        regularizer=reg,
        name="conv1",
        **bn_kwargs,
    )
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    for idx, (filters, kernel) in enumerate(
        ((256, 5), (384, 3), (384, 3), (256, 3)), 2
    ):
        x = _conv_block(
            x,
            filters=filters,
            kernel_size=kernel,
            use_bn=True,
            bn_batch_size=bn_batch_size,
            regularizer=reg,
            name=f"conv{idx}",
            **bn_kwargs,
        )
        if idx in (2, 5):
            x = layers.MaxPooling2D(3, strides=2, name=f"pool{idx}")(x)
    x = layers.Flatten(name="flatten")(x)
    for idx in (6, 7):
        x = layers.Dense(
            4096,
            activation="relu",
            kernel_initializer="he_normal",
            kernel_regularizer=reg,
            name=f"fc{idx}",
        )(x)
        if dropout:
            x = layers.Dropout(dropout, name=f"drop{idx}")(x)
    outputs = layers.Dense(
        num_classes,
        kernel_initializer="he_normal",
        kernel_regularizer=reg,
        name="logits",
    )(x)
    return keras.Model(inputs, outputs, name="alexnet_bn")
