"""Large-batch optimizers (plain Keras 3 optimizers) and their TensorBoard callbacks."""

from keras_largebatch.optimizers.lars import LARS
from keras_largebatch.optimizers.lars_callback import LarsTrustRatioLogger

__all__ = ["LARS", "LarsTrustRatioLogger"]
