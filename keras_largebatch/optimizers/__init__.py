"""Large-batch optimizers (plain Keras 3 optimizers) and their TensorBoard callbacks.

- `LARS` (seed 004) and `LarsTrustRatioLogger` (trust ratios to TensorBoard under model.fit).
- `BAMomentum` (seed 002; momentum=0 is BA-SGD), its maths (`expected_next_state`, Eq. 7;
  `optimal_batch_size`, Eq. 9) and its covariance estimators (ba_covariance.py). The train
  steps that drive it (`BAModel` for model.fit, `ba_chunk_step` for custom loops) live in
  `keras_largebatch.training.steps`.
"""

from keras_largebatch.optimizers.ba_math import expected_next_state, optimal_batch_size
from keras_largebatch.optimizers.ba_momentum import BAMomentum
from keras_largebatch.optimizers.lars import LARS
from keras_largebatch.optimizers.lars_callback import LarsTrustRatioLogger

__all__ = [
    "BAMomentum",
    "LARS",
    "LarsTrustRatioLogger",
    "expected_next_state",
    "optimal_batch_size",
]
