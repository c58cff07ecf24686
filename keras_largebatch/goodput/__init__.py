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

import importlib

# name -> module: loaded on first use (PEP 562), so `throughput` (NumPy only) imports no Keras.
_WHERE = {
    "AdaScaled": "adascale", "adascale_gain": "adascale", "statistical_efficiency": "adascale",
    "GoodputBatch": "batch",
    "SmoothedGradientStats": "noise_scale", "b_simple": "noise_scale",
    "estimates_from_parts": "noise_scale", "unbiased_estimates": "noise_scale",
    "NoiseScaleLogger": "optimizer", "NoiseScaleOptimizer": "optimizer",
}
_MODULES = ("adascale", "batch", "noise_scale", "optimizer", "throughput")

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_WHERE, *_MODULES])

