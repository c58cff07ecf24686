"""Helpers shared by the builders: the BN layer factory and the coupled weight decay.

`_batch_norm(bn_batch_size, name, synchronized)` is the one place that decides which
normalisation layer a network gets. With `bn_batch_size=None` it is Keras'
`BatchNormalization` (statistics over the whole per-replica batch); with an integer it is
`GhostBatchNormalization` with that virtual batch size, so the BN batch is set apart
from the SGD batch (seed 001, Section 3.6; seed 003 "ghost batch norm"). The ghost
layer is imported lazily so that the models package does not depend on it unless it is
asked for.

`synchronized=True` (the builders' `bn_synchronized`) keeps the replicas' BN statistics
equal under a multi-replica strategy; without it each replica keeps its own moving mean and
variance, and the copies drift apart. Plain BN becomes Keras' `BatchNormalization(
synchronized=True)`: the batch moments are all-reduced over the replicas, so training
normalises over the global batch and the moving statistics follow it. Ghost BN gets
`sync_moving_statistics=True`: training still normalises each replica's ghost batches, only
the moving statistics are averaged over the replicas (layers/ghost_batch_norm.py). With one
replica both are the unsynchronised layers.

`_kernel_regularizer(weight_decay)` turns the papers' weight decay lambda into a Keras
L2 regularizer on the kernels (not biases, not BN): the papers' SGD adds `lambda * w`
to the gradient (Caffe / Torch convention), i.e. a loss term `lambda / 2 * ||w||^2`,
which is `keras.regularizers.L2(lambda / 2)`. The penalty lands in `model.losses`.
"""

from __future__ import annotations

import keras

from keras_largebatch import validate
from keras_largebatch.errors import UserInputError


def _batch_norm(bn_batch_size: int | None, name: str, synchronized: bool = False,
                **kwargs) -> keras.layers.Layer:
    """A BN layer named `name`: plain BN, or ghost BN over `bn_batch_size` samples;
    `synchronized` shares the statistics across replicas (module docstring).

    Extra keyword arguments (`momentum`, `epsilon`, `axis`, ...) go to the layer.
    """
    validate.boolean("bn_synchronized", synchronized)
    if bn_batch_size is None:
        if synchronized:
            kwargs["synchronized"] = True
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
    if synchronized:
        kwargs["sync_moving_statistics"] = True
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
