"""The time of one gradient all-reduce, measured: the part of a step that does not grow with the
batch, for GoodputBatch's throughput model (goodput/throughput.py `fit_online(fixed=...)`).

    timer = AllReduceTimer(strategy, model.trainable_variables)
    seconds = timer.measure(rounds=3)   # median of 3 timed all-reduces after one untimed call

Each replica all-reduces (SUM) a list of zero tensors with the shapes and dtypes of the
trainable variables, i.e. what the optimizer all-reduces every update (Keras'
`_all_reduce_sum_gradients` batch-reduces the gradient list through the same replica context),
over the same strategy: on MultiWorkerMirroredStrategy the same collective implementation and
links as the step's. The first call traces the function and builds the collective's instance;
it is not timed. The host waits for every replica's result before it stops the clock.

Every worker must call `measure` at the same point of the run (it is a collective): the loop
does it at a decision, an epoch end every worker reaches. Workers time the same collective, so
their numbers differ by microseconds; training/goodput_control.py averages them over the workers
with the step time before anyone decides.

Why measure it, rather than infer it from step times: with one batch size observed, the constant
and per-sample parts of a step cannot be told apart (half the step is the reference's guess);
the all-reduce's time is a lower bound on the constant that sees the link, so that a run on a
slow link grows its batch from its first decision (runs/RESULTS.md section 6).
"""

from __future__ import annotations

import time

import numpy as np
import tensorflow as tf


class AllReduceTimer:
    """Times one all-reduce of gradient-shaped tensors over `strategy` (module docstring)."""

    def __init__(self, strategy, variables):
        specs = [(tuple(int(d) for d in v.shape), tf.as_dtype(v.dtype)) for v in variables]
        self.values = sum(int(np.prod(s)) for s, _ in specs)
        self._strategy = strategy

        def replica_fn():
            context = tf.distribute.get_replica_context()
            zeros = [tf.zeros(s, d) for s, d in specs]
            reduced = context.all_reduce(tf.distribute.ReduceOp.SUM, zeros)
            # One value that depends on every reduced tensor, so none is pruned.
            return tf.add_n([tf.reduce_sum(tf.cast(r, tf.float32)) for r in reduced])

        @tf.function
        def reduce_once():
            return strategy.run(replica_fn)

        self._reduce_once = reduce_once

    def _call(self) -> float:
        start = time.perf_counter()
        out = self._reduce_once()
        for value in self._strategy.experimental_local_results(out):
            value.numpy()  # wait for this worker's replicas
        return time.perf_counter() - start

    def measure(self, rounds: int = 3) -> float:
        """Median seconds of `rounds` all-reduces after one untimed (tracing) call."""
        if rounds < 1:
            raise ValueError(f"rounds={rounds!r}: give at least 1")
        self._call()
        return float(np.median([self._call() for _ in range(rounds)]))
