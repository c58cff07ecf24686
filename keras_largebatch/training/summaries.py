"""TensorBoard output of a run. Tags (see README "TensorBoard"):

per epoch (x-axis = epoch):  train/loss, train/accuracy, test/loss, test/accuracy,
                             learning_rate, batch_size, samples_per_second, epoch_time_s
per logged step (x-axis = samples seen): step/loss, step/learning_rate, step/batch_size
text: config (the gin config), events (phase switches, divergence)
LARS runs, per epoch: lars/trust_ratio/<variable> (a histogram when there are many)
BA-Momentum runs, per update (x = update): ba/batch_size, ba/m_star, ba/mu, ba/sigma, ba/s;
per epoch: ba/updates_per_epoch, ba/mean_batch_size
"""

from __future__ import annotations

import os

import tensorflow as tf


class Summaries:
    """Writes scalars and text on the chief; a no-op writer elsewhere."""

    def __init__(self, run_dir: str, *, enabled: bool = True):
        self.enabled = enabled
        self._writer = (
            tf.summary.create_file_writer(os.path.join(run_dir, "tensorboard"))
            if enabled else tf.summary.create_noop_writer()
        )

    @property
    def writer(self):
        """The underlying `tf.summary` writer (for in-graph summaries, e.g. ba_step.py)."""
        return self._writer

    def scalars(self, values: dict[str, float], step: int) -> None:
        with self._writer.as_default(step=int(step)):
            for tag, value in values.items():
                tf.summary.scalar(tag, value)

    def histogram(self, tag: str, values, step: int) -> None:
        with self._writer.as_default(step=int(step)):
            tf.summary.histogram(tag, values)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        with self._writer.as_default(step=int(step)):
            # Markdown: indent by 4 so gin's syntax shows verbatim.
            tf.summary.text(tag, "\n".join("    " + line for line in text.splitlines()))

    def lars_trust_ratios(self, optimizer, step: int, histogram_above: int = 32) -> None:
        """`lars/trust_ratio/<variable>` scalars (one histogram above `histogram_above`)."""
        from keras_largebatch.optimizers.lars_callback import write_trust_ratios

        with self._writer.as_default(step=int(step)):
            write_trust_ratios(optimizer, int(step), histogram_above=histogram_above)

    def flush(self) -> None:
        self._writer.flush()
