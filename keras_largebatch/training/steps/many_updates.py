"""Many updates per compiled call: `train.steps_per_loop = K` (orbit's `steps_per_loop`, Keras'
`steps_per_execution`).

    loop = many_updates(step._distributed_step)     # a tf.function, traced once
    loop(distributed_iterator, tf.constant(k))     # k updates, no host work between them

The body is the step's own `_distributed_step` (next batch from the distributed iterator,
forward, backward, update, the running metrics and the `Progress` clock, all device-side), inside
a `tf.range` loop in one `tf.function`, as orbit's `StandardTrainer` does. `k` is a tensor, so
every loop length shares one trace (the epoch runner ends a loop early at an epoch end, at an
action's boundary, at a checkpoint). The updates are the same operations in the same order as k
calls of the one-update step: with `train.deterministic` the weights are bitwise equal
(tests/training/test_steps_per_loop.py).
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf


def many_updates(step_fn: Callable) -> Callable:
    """A tf.function that calls `step_fn(iterator)` `k` times (`k`: an int32 tensor)."""

    def loop(iterator, k):
        for _ in tf.range(k):
            step_fn(iterator)

    return tf.function(loop)
