"""ResNet-50 (He et al. 2016) for ImageNet, as trained by seeds 000, 001, 003, 004."""

from __future__ import annotations

import keras

from keras_largebatch.errors import UserInputError
from keras_largebatch.models.norm import _batch_norm, _kernel_regularizer
from keras_largebatch.models.registry import register

_MIN_SIDE = 32  # keras.applications.ResNet50 refuses smaller inputs


@register("resnet50")
def resnet50(
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    weight_decay: float = 0.0,
    bn_batch_size: int | None = None,
    bn_synchronized: bool = False,
) -> keras.Model:
    """ResNet-50 of He et al. 2016 (Table 1), from `keras.applications.ResNet50`.

    Randomly initialised (`weights=None`), `num_classes` outputs, logits out
    (`classifier_activation=None`). This is Keras' v1 layout: the stride-2 sits in the
    first 1x1 conv of each downsampling bottleneck, shortcuts are 1x1 projections
    where the shape changes (option B), convs keep their biases, BN epsilon is
    1.001e-5 and momentum 0.99. Layer names are Keras' ("conv2_block1_1_conv", ...).
    The seeds' ResNet-50 settings that live in the training recipe (zero-init of the
    last BN gamma, BN momentum of 0.9 in Caffe/PyTorch) are not changed here.

    `bn_batch_size` and `weight_decay`, when set, are applied by cloning the Keras
    model with every BatchNormalization replaced by `_batch_norm(bn_batch_size, ...)`
    (same axis, momentum and epsilon) and every conv / dense kernel given the L2
    penalty `weight_decay / 2 * ||w||^2` (seed 001 and Goyal et al. use lambda =
    1e-4). `bn_synchronized=True` (the same clone) keeps the BN statistics equal across
    replicas (models/norm.py).
    """
    if len(input_shape) != 3 or min(input_shape[0], input_shape[1]) < _MIN_SIDE:
        raise UserInputError(
            f"resnet50 input_shape={tuple(input_shape)} is not an image of at least "
            f"{_MIN_SIDE}x{_MIN_SIDE}; resize the images, "
            "or use resnet20 for small images"
        )
    model = keras.applications.ResNet50(
        weights=None,
        input_shape=tuple(input_shape),
        classes=num_classes,
        classifier_activation=None,
    )
    reg = _kernel_regularizer(weight_decay)
    if bn_batch_size is None and reg is None and not bn_synchronized:
        return model

    def clone_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        if isinstance(layer, keras.layers.BatchNormalization):
            return _batch_norm(
                bn_batch_size,
                layer.name,
                bn_synchronized,
                axis=config["axis"],
                momentum=config["momentum"],
                epsilon=config["epsilon"],
            )
        if reg is not None and isinstance(
            layer, keras.layers.Conv2D | keras.layers.Dense
        ):
            config["kernel_regularizer"] = keras.regularizers.serialize(reg)
        return layer.__class__.from_config(config)

    return keras.models.clone_model(model, clone_function=clone_layer)
