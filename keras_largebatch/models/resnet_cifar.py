"""CIFAR ResNets of He et al. 2016 ("Deep residual learning", Section 4.2): 6n+2 layers.

Used by seed 001 (ResNet-8/20/32, with and without BN), seed 000 (ResNet-20) and seed
003 (ResNet-44). Registered as "resnet8", "resnet20", "resnet32", "resnet44" and
"resnet56"; `resnet_cifar(depth=...)` builds any other 6n+2 depth.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from keras_largebatch.errors import UserInputError
from keras_largebatch.models.norm import _batch_norm, _kernel_regularizer
from keras_largebatch.models.registry import register

_STAGE_FILTERS = (16, 32, 64)


@keras.saving.register_keras_serializable(package="keras_largebatch")
class ZeroPadShortcut(layers.Layer):
    """He et al.'s option-A shortcut: identity, subsampled, zero-padded channels.

    No weights: `x[:, ::s, ::s, :]` followed by `out_channels - in_channels` zero
    channels appended after the existing ones.
    """

    def __init__(self, out_channels: int, strides: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.out_channels = out_channels
        self.strides = strides

    def call(self, inputs):
        x = inputs[:, :: self.strides, :: self.strides, :]
        extra = self.out_channels - x.shape[-1]
        if extra:
            x = ops.pad(x, [[0, 0], [0, 0], [0, 0], [0, extra]])
        return x

    def compute_output_shape(self, input_shape):
        def sub(n):
            return None if n is None else -(-n // self.strides)

        return (
            input_shape[0],
            sub(input_shape[1]),
            sub(input_shape[2]),
            self.out_channels,
        )

    def get_config(self):
        config = super().get_config()
        config.update({"out_channels": self.out_channels, "strides": self.strides})
        return config


def _conv(filters: int, strides: int, use_bias: bool, regularizer, name: str):
    return layers.Conv2D(
        filters,
        3,
        strides=strides,
        padding="same",
        use_bias=use_bias,
        kernel_initializer="he_normal",
        kernel_regularizer=regularizer,
        name=name,
    )


def resnet_cifar(
    *,
    depth: int,
    input_shape: tuple[int, ...],
    num_classes: int,
    batch_norm: bool = True,
    weight_decay: float = 0.0,
    bn_batch_size: int | None = None,
    bn_synchronized: bool = False,
    bn_momentum: float = 0.99,
) -> keras.Model:
    """The CIFAR ResNet of He et al. 2016, Section 4.2, with `depth = 6n + 2` layers.

    From the paper: a 3x3 conv with 16 filters, then three stages of n basic blocks
    (two 3x3 convs each) with 16, 32 and 64 filters on 32x32, 16x16 and 8x8 maps; the
    first conv of stages 2 and 3 has stride 2; global average pooling and a fully
    connected layer. Each conv is followed by BN, ReLU after BN and after the addition
    (post-activation). Shortcuts are option A, as in the paper's CIFAR experiments:
    identity, and where the shape changes a stride-2 subsampling with zero-padded
    extra channels, so shortcuts add no parameters. He initialisation (seed 001 uses
    it for every model).

    `batch_norm=False` drops every BN layer (seed 001, Section 3.2, Figs 2-3); the
    convs then get biases, otherwise they have none (BN's beta replaces the bias).
    `weight_decay` is the papers' coupled decay lambda (He et al. and seed 001 use
    1e-4): an L2 penalty `lambda / 2 * ||w||^2` on conv and dense kernels, in
    `model.losses`. Zero channels of the option-A shortcut go after the existing
    channels (the paper does not say where). `bn_synchronized=True` keeps the BN statistics
    equal across replicas (models/norm.py). `bn_momentum` is the BN layers' moving-statistics
    momentum (Keras' default 0.99 needs a few hundred updates before the moving statistics,
    and so the test accuracy, mean anything; short runs with few large batches want ~0.9).
    """
    if depth < 8 or (depth - 2) % 6:
        raise UserInputError(
            f"resnet_cifar depth={depth} is not 6n+2 with n >= 1; "
            "use 8, 14, 20, 32, 44, 56, 110, ..."
        )
    blocks = (depth - 2) // 6
    reg = _kernel_regularizer(weight_decay)

    def bn(x, name):
        if not batch_norm:
            return x
        return _batch_norm(bn_batch_size, name, bn_synchronized, momentum=bn_momentum)(x)

    inputs = keras.Input(shape=input_shape, name="image")
    x = _conv(16, 1, not batch_norm, reg, "conv1")(inputs)
    x = bn(x, "bn1")
    x = layers.ReLU(name="relu1")(x)
    in_filters = 16
    for stage, filters in enumerate(_STAGE_FILTERS, 1):
        for block in range(1, blocks + 1):
            strides = 2 if (stage > 1 and block == 1) else 1
            prefix = f"stage{stage}_block{block}"
            y = _conv(filters, strides, not batch_norm, reg, f"{prefix}_conv1")(x)
            y = bn(y, f"{prefix}_bn1")
            y = layers.ReLU(name=f"{prefix}_relu1")(y)
            y = _conv(filters, 1, not batch_norm, reg, f"{prefix}_conv2")(y)
            y = bn(y, f"{prefix}_bn2")
            if strides != 1 or filters != in_filters:
                shortcut = ZeroPadShortcut(filters, strides, name=f"{prefix}_shortcut")(
                    x
                )
            else:
                shortcut = x
            x = layers.Add(name=f"{prefix}_add")([y, shortcut])
            x = layers.ReLU(name=f"{prefix}_out")(x)
            in_filters = filters
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(
        num_classes,
        kernel_initializer="he_normal",
        kernel_regularizer=reg,
        name="logits",
    )(x)
    suffix = "" if batch_norm else "_nobn"
    return keras.Model(inputs, outputs, name=f"resnet{depth}{suffix}")


def _builder(depth: int, doc: str):
    """The registered builder of ResNet-`depth`: `resnet_cifar` with the depth fixed."""

    def build(
        *,
        input_shape: tuple[int, ...],
        num_classes: int,
        batch_norm: bool = True,
        weight_decay: float = 0.0,
        bn_batch_size: int | None = None,
        bn_synchronized: bool = False,
        bn_momentum: float = 0.99,
    ) -> keras.Model:
        return resnet_cifar(depth=depth, input_shape=input_shape, num_classes=num_classes,
                            batch_norm=batch_norm, weight_decay=weight_decay,
                            bn_batch_size=bn_batch_size, bn_synchronized=bn_synchronized,
                            bn_momentum=bn_momentum)

    build.__name__ = build.__qualname__ = f"resnet{depth}"
    build.__doc__ = f"ResNet-{depth} ({doc}); He et al. 2016, Sec. 4.2; see `resnet_cifar`."
    return register(f"resnet{depth}")(build)


resnet8 = _builder(8, "n=1, as in seed 001")
resnet20 = _builder(20, "n=3, 0.27M parameters")
resnet32 = _builder(32, "n=5, 0.46M parameters")
resnet44 = _builder(44, "n=7, 0.66M parameters; seed 003")
resnet56 = _builder(56, "n=9, 0.85M parameters")
