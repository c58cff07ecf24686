"""TensorBoard logging of LARS trust ratios for `model.fit` users.

```python
model.compile(optimizer=LARS(...), ...)
model.fit(..., callbacks=[LarsTrustRatioLogger("runs/x/train", every_n_batches=50)])
```

Writes `lars/trust_ratio/<variable path>` scalars (`lars/trust_ratio/conv1/kernel`),
or one `lars/trust_ratio` histogram when more than `histogram_above` variables are
adapted. `write_trust_ratios` does the same for custom loops (call it under a default
`tf.summary` writer).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_largebatch.optimizers.lars import LARS


def find_lars(optimizer) -> LARS | None:
    """The LARS optimizer itself or inside a `LossScaleOptimizer`; None otherwise."""
    while optimizer is not None and not isinstance(optimizer, LARS):
        optimizer = getattr(optimizer, "inner_optimizer", None)
    return optimizer


def write_trust_ratios(optimizer: LARS, step: int, *, histogram_above: int = 32) -> None:
    """Write the latest trust ratios of `optimizer` at `step` to the default writer."""
    ratios = optimizer.trust_ratios()
    if not ratios:
        return
    if len(ratios) > histogram_above:
        values = tf.stack([tf.convert_to_tensor(r) for r in ratios.values()])
        tf.summary.histogram("lars/trust_ratio", values, step=step)
        return
    for path, ratio in ratios.items():
        tf.summary.scalar(f"lars/trust_ratio/{path}", tf.convert_to_tensor(ratio), step=step)


class LarsTrustRatioLogger(keras.callbacks.Callback):
    """Log LARS trust ratios every `every_n_batches` training batches.

    Args:
        log_dir: TensorBoard event directory (e.g. the `train` folder that
            `keras.callbacks.TensorBoard` writes to).
        every_n_batches: log after the 1st batch and then every this many batches.
        histogram_above: write one histogram instead of per-variable scalars when
            more than this many variables are adapted.

    The summary step is the optimizer's iteration count after the batch.
    """

    def __init__(self, log_dir: str, every_n_batches: int = 100, histogram_above: int = 32):
        super().__init__()
        if not isinstance(every_n_batches, int) or every_n_batches < 1:
            raise ValueError(
                "`every_n_batches` must be an integer >= 1. "
                f"Received: every_n_batches={every_n_batches}"
            )
        if not isinstance(histogram_above, int) or histogram_above < 0:
            raise ValueError(
                "`histogram_above` must be an integer >= 0. "
                f"Received: histogram_above={histogram_above}"
            )
        self.log_dir = log_dir
        self.every_n_batches = every_n_batches
        self.histogram_above = histogram_above
        self._writer = None
        self._batches = 0

    def on_train_begin(self, logs=None):
        if find_lars(self.model.optimizer) is None:
            raise ValueError(
                "LarsTrustRatioLogger needs a model compiled with LARS (optionally "
                "inside LossScaleOptimizer). "
                f"Received: optimizer={self.model.optimizer!r}"
            )
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)

    def on_train_batch_end(self, batch, logs=None):
        if self._batches % self.every_n_batches == 0:
            lars = find_lars(self.model.optimizer)
            with self._writer.as_default():
                write_trust_ratios(
                    lars,
                    int(lars.iterations.numpy()),
                    histogram_above=self.histogram_above,
                )
        self._batches += 1

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.flush()
