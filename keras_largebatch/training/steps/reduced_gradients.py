"""The all-reduced gradient the optimizer already computes, for the global gradient norm
(`train.log_gradient_norm`, seed 003 Fig. 4) and the gradient noise scale (|G_B|^2 of the
whole batch, noise_scale_step.py), without a second all-reduce.

    tap = ReducedGradientTap.attach(optimizer)      # None: not available, see below
    optimizer.apply_gradients(zip(grads, variables))  # in the replica context, as always
    reduced = tap.take()                              # this replica's all-reduced gradients

Keras 3's TensorFlow optimizers sum the replicas' gradients in `_all_reduce_sum_gradients`
(keras/src/backend/tensorflow/optimizer.py), inside `apply_gradients`, in the replica context,
before the update. The tap wraps that method on the optimizer instance and keeps what it
returns, per replica thread (MirroredStrategy traces each replica in its own thread); the
train step reads it right after `apply_gradients`, in the same thread. Before, the step
all-reduced the gradients itself and handed the optimizer grads / R, which the optimizer
all-reduced again: two gradient-sized all-reduces per update, which on a bandwidth-bound link
doubled the communication (bench/goodput_study.py's pilot: 0.42 s against 0.30 s per update on
2 emulated workers at 100 Mbit/s).

Not available (`attach` returns None; the step falls back to its own all-reduce): a
`LossScaleOptimizer` (the inner update runs inside a `tf.cond` on finite gradients, so the
tensor it all-reduces cannot be used outside that branch), or an optimizer without the method
(a Keras that renamed it). `take` raises when the method was not called during the update, so a
Keras that stops calling it fails loudly at trace time instead of logging a wrong norm.
"""

from __future__ import annotations

import threading

import keras

_METHOD = "_all_reduce_sum_gradients"


class ReducedGradientTap:
    def __init__(self, optimizer):
        self._seen: dict[int, list] = {}
        original = getattr(optimizer, _METHOD)

        def tapped(grads_and_vars):
            out = original(grads_and_vars)
            self._seen[threading.get_ident()] = [g for g, _ in out if g is not None]
            return out

        setattr(optimizer, _METHOD, tapped)
        self.optimizer = optimizer

    @classmethod
    def attach(cls, optimizer) -> ReducedGradientTap | None:
        """A tap on `optimizer`, or None where the all-reduce cannot be read (above)."""
        if keras.backend.backend() != "tensorflow":
            return None
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            return None
        if not callable(getattr(optimizer, _METHOD, None)):
            return None
        return cls(optimizer)

    def take(self) -> list:
        """The gradients the last `apply_gradients` of this replica thread all-reduced."""
        grads = self._seen.pop(threading.get_ident(), None)
        if grads is None:
            raise RuntimeError(
                f"{type(self.optimizer).__name__}.apply_gradients did not call {_METHOD}: "
                "this Keras all-reduces elsewhere, so the gradient norm cannot be read from it "
                "(keras_largebatch/training/steps/reduced_gradients.py)")
        return grads
