"""Learning-rate scaling rules between batch sizes.

    scale_learning_rate(0.1, batch_size=8192, reference_batch_size=256)            # 3.2
    scale_learning_rate(0.1, 8192, 256, rule="sqrt")                               # 0.5657
    scale_learning_rate(2**-8, batch_size=64, reference_batch_size=1)              # 0.25

- "linear" (Krizhevsky 2014; Goyal et al. 2017; seed 004 Section 2): eta = base * m / m_ref keeps
  the mean weight update per sample constant. With `reference_batch_size=1` this is seed 001's
  sum-of-gradients view (Eq. 5-6): the config gives the base learning rate eta~ = eta / m and
  the optimizer, which averages gradients, uses eta = eta~ * m.
- "sqrt" (Krizhevsky 2014; Hoffer et al. 2017; seed 001 Section 2.1): eta = base * sqrt(m / m_ref)
  keeps the covariance of the weight update constant.
- "none": eta = base.

For a batch size that changes during training use `BatchScaled` in `batch_coupled.py`, which
applies the same rule in-graph to the batch schedule's current batch size.
"""

from __future__ import annotations

import math

from keras import ops

from keras_largebatch import validate
from keras_largebatch.errors import UserInputError
from keras_largebatch.schedules.batch import BATCH_SIZE_FIX

RULES = ("linear", "sqrt", "none")


def scale_factor(batch_size: int, reference_batch_size: int, rule: str = "linear") -> float:
    """The factor `scale_learning_rate` multiplies the base learning rate by."""
    batch = validate.whole("batch_size", batch_size, fix=BATCH_SIZE_FIX)
    reference = validate.whole("reference_batch_size", reference_batch_size,
                               fix=BATCH_SIZE_FIX)
    rule = validate.one_of("rule", rule, RULES)
    if rule == "linear":
        return batch / reference
    if rule == "sqrt":
        return math.sqrt(batch / reference)
    return 1.0


def scale_factor_at(batch_size, reference_batch_size: int, rule: str):
    """In-graph `scale_factor` for a float batch-size tensor (rule already validated)."""
    ratio = batch_size / float(reference_batch_size)
    if rule == "linear":
        return ratio
    if rule == "sqrt":
        return ops.sqrt(ratio)
    return ops.ones_like(ratio)


def scale_learning_rate(
    base_lr: float, batch_size: int, reference_batch_size: int, rule: str = "linear"
) -> float:
    """Learning rate for `batch_size` given `base_lr` tuned at `reference_batch_size`."""
    if not validate.is_real(base_lr) or not math.isfinite(base_lr) or base_lr < 0:
        raise UserInputError(f"base_lr={base_lr!r} must be a finite number >= 0")
    return float(base_lr) * scale_factor(batch_size, reference_batch_size, rule)
