"""Batch size by measurement: the gradient noise scale, AdaScale, a throughput model, goodput.

- noise_scale.py: unbiased |G|^2 and tr(Sigma) from gradient norms at two batch sizes
  (McCandlish et al. 2018, Appendix A), `SmoothedGradientStats`, B_simple.
- adascale.py: AdaScale's gain r(S) (Johnson et al. 2020) and Pollux's statistical efficiency;
  `AdaScaled`, the learning-rate schedule that applies the gain.
- throughput.py: step time as compute + all-reduce, fitted to measured step times.
- batch.py: `GoodputBatch`, the batch schedule that picks the batch maximising throughput x
  efficiency (Pollux, Qiao et al. OSDI 2021) at each decision.
- optimizer.py: `NoiseScaleOptimizer` and `NoiseScaleLogger`, the noise scale under plain
  `model.fit` (TensorFlow, JAX).

The framework loop measures the noise scale in its train step
(training/steps/noise_scale_step.py) and drives GoodputBatch (training/goodput_control.py).
"""

from keras_largebatch.goodput.adascale import (
    AdaScaled,
    adascale_gain,
    statistical_efficiency,
)
from keras_largebatch.goodput.batch import GoodputBatch
from keras_largebatch.goodput.noise_scale import (
    SmoothedGradientStats,
    b_simple,
    estimates_from_parts,
    unbiased_estimates,
)
from keras_largebatch.goodput.optimizer import NoiseScaleLogger, NoiseScaleOptimizer

__all__ = [
    "AdaScaled",
    "GoodputBatch",
    "NoiseScaleLogger",
    "NoiseScaleOptimizer",
    "SmoothedGradientStats",
    "adascale_gain",
    "b_simple",
    "estimates_from_parts",
    "statistical_efficiency",
    "unbiased_estimates",
]
