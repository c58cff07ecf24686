"""Helpers shared by the builders: the BN layer factory and the coupled weight decay.

`_batch_norm(bn_batch_size, name)` is the one place that decides which normalisation
layer a network gets. With `bn_batch_size=None` it is Keras' `BatchNormalization`
(statistics over the whole per-replica batch); with an integer it is
`GhostBatchNormalization` with that virtual batch size, so the BN batch is set apart
from the SGD batch (seed 001, Section 3.6; seed 003 "ghost batch norm"). The ghost
layer is imported lazily so that the models package does not depend on it unless it is
asked for.

`_kernel_regularizer(weight_decay)` turns the papers' weight decay lambda into a Keras
L2 regularizer on the kernels (not biases, not BN): the papers' SGD adds `lambda * w`
to the gradient (Caffe / Torch convention), i.e. a loss term `lambda / 2 * ||w||^2`,
which is `keras.regularizers.L2(lambda / 2)`. The penalty lands in `model.losses`.
"""

from __future__ import annotations

import keras

from keras_largebatch.errors import UserInputError


def _batch_norm(bn_batch_size: int | None, name: str, **kwargs) -> keras.layers.Layer:
    """A BN layer named `name`: plain BN, or ghost BN over `bn_batch_size` samples.

    Extra keyword arguments (`momentum`, `epsilon`, `axis`, ...) go to the layer.
    """
    if bn_batch_size is None:
        return keras.layers.BatchNormalization(name=name, **kwargs)
    if isinstance(bn_batch_size, bool) or not isinstance(bn_batch_size, int):
        raise UserInputError(
            f"bn_batch_size={bn_batch_size!r} is not an integer; "
            "give a positive number of samples per BN group, or None for plain BN"
        )
    if bn_batch_size < 1:
        raise UserInputError(
            f"bn_batch_size={bn_batch_size} must be >= 1; "
            "give a positive number of samples per BN group, or None for plain BN"
        )
    try:
        from keras_largebatch.layers import GhostBatchNormalization
    except ImportError as exc:
        raise ImportError(
            f"bn_batch_size={bn_batch_size} needs "
            "keras_largebatch.layers.GhostBatchNormalization, which could not be "
            "imported "
            f"({exc}); set bn_batch_size=None to use plain BatchNormalization"
        ) from exc
    return GhostBatchNormalization(
        virtual_batch_size=bn_batch_size, name=name, **kwargs
    )


def _kernel_regularizer(weight_decay: float) -> keras.regularizers.Regularizer | None:
    """L2 penalty `weight_decay / 2 * ||w||^2` (gradient `weight_decay * w`) or None."""
    if weight_decay < 0:
        raise UserInputError(
            f"weight_decay={weight_decay} is negative; "
            "use 0.0 (off) or a positive value"
        )
    if weight_decay == 0:
        return None
    return keras.regularizers.L2(weight_decay / 2)
