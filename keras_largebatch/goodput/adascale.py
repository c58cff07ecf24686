"""AdaScale's learning-rate gain and Pollux's statistical efficiency, from the noise scale.

Johnson et al. 2020, "AdaScale SGD": at S times the initial batch B0 the learning rate of the
current schedule is multiplied by the gain

    r(S) = (sigma^2 + mu^2) / (sigma^2 / S + mu^2),          1 <= r(S) <= S

with mu^2 = |G|^2 and sigma^2 = tr(Sigma) / B0 the variance of the gradient at batch B0
(noise_scale.py estimates |G|^2 and tr(Sigma) per example). Pollux (Qiao et al., OSDI 2021,
Eq. 5) divides the gain by the scale: the progress per sample at batch B relative to B0,

    E(B) = r(B / B0) / (B / B0) = (B_noise + B0) / (B_noise + B),   B_noise = tr(Sigma) / |G|^2

The estimates are clamped as the reference (petuum/adaptdl `GradientNoiseScale.gain`) clamps
them: |G|^2 >= 0 and tr(Sigma) >= 0, and the gain is 1 where both are 0 (no statistics yet).

    gain = adascale_gain(8.0, g2=0.5, trace=64.0, base_batch=32)     # (2 + .5) / (.25 + .5)
    lr = AdaScaled(0.1, batch_schedule, stats, base_batch_size=128)   # an EpochSchedule
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from keras_largebatch import validate
from keras_largebatch.schedules.batch import BATCH_SIZE_FIX
from keras_largebatch.schedules.batch_coupled import _BatchComposed


def adascale_gain(scale, g2, trace, base_batch):
    """r(S) above, NumPy (floats or arrays)."""
    scale = np.asarray(scale, dtype=np.float64)
    mu2 = np.maximum(np.asarray(g2, dtype=np.float64), 0.0)
    sigma2 = np.maximum(np.asarray(trace, dtype=np.float64), 0.0) / float(base_batch)
    denominator = sigma2 / scale + mu2
    safe = np.where(denominator > 0, denominator, 1.0)
    return np.where(denominator > 0, (sigma2 + mu2) / safe, 1.0)


def adascale_gain_at(scale, g2, trace, base_batch):
    """r(S) in-graph (keras.ops tensors, any backend)."""
    mu2 = ops.maximum(g2, 0.0)
    sigma2 = ops.maximum(trace, 0.0) / float(base_batch)
    denominator = sigma2 / scale + mu2
    safe = ops.where(denominator > 0, denominator, 1.0)
    return ops.where(denominator > 0, (sigma2 + mu2) / safe, 1.0)


def statistical_efficiency(batch, g2, trace, base_batch):
    """E(B) = r(B / B0) / (B / B0): progress per sample at batch B relative to B0 (NumPy)."""
    scale = np.asarray(batch, dtype=np.float64) / float(base_batch)
    return adascale_gain(scale, g2, trace, base_batch) / scale


@keras.saving.register_keras_serializable(package="keras_largebatch")
class AdaScaled(_BatchComposed):
    """lr(e) = schedule(e) x r(m(e) / base_batch_size), m(e) the batch schedule's batch now.

    `stats` is a `SmoothedGradientStats` (noise_scale.py) that the train step updates; it is
    run-time state, not configuration: `get_config` leaves it out and a schedule loaded from
    a config applies gain 1 until `attach(stats)` is called.
    """

    def __init__(self, schedule, batch_schedule, base_batch_size: int, stats=None,
                 progress=None):
        super().__init__(schedule, batch_schedule, progress)
        self._base = validate.whole("base_batch_size", base_batch_size, fix=BATCH_SIZE_FIX)
        self._stats = stats

    def attach(self, stats) -> None:
        self._stats = stats

    def gain_at(self, epoch):
        if self._stats is None:
            return ops.ones_like(epoch)
        scale = ops.cast(self._batch.batch_size_at(epoch), "float32") / float(self._base)
        gain = adascale_gain_at(scale, self._stats.sqr(), self._stats.trace(), self._base)
        return ops.cast(gain, epoch.dtype)

    def _value_at(self, epoch):
        return self._schedule.value_at(epoch) * self.gain_at(epoch)

    def get_config(self) -> dict:
        return {**super().get_config(), "base_batch_size": self._base}
