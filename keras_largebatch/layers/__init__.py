"""Keras layers for large-batch training: `GhostBatchNormalization` (BN over virtual batches)."""

from keras_largebatch.layers.ghost_batch_norm import GhostBatchNormalization

__all__ = ["GhostBatchNormalization"]
