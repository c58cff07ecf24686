"""Cross-worker preemption sync: every worker learns of a signal at the same update.

    sync = PreemptionSync(catcher, strategy)        # loop.py, multi-worker runs only
    actions = [sync, ..., PreemptionCheckpoint(..., received=sync.received)]

Rule: a SIGTERM / SIGINT reaches one worker (a scheduler preempting one machine), but a
checkpoint is collective, so every worker must save at the same update. After every update this
action (first in the list) all-reduces each worker's local request (signals.SignalCatcher) in
one tiny collective of two numbers (SIGTERM seen, SIGINT seen); from then on `received()`
answers the agreed signal on every worker at the same update (SIGTERM if any worker got it), and
the preemption action saves there and stops with that status (exit 143 or 130). A signal that
arrives during the all-reduce is taken at the next update by every worker alike.

Cost: one all-reduce of a 2-float tensor per update (BUILD_NOTES.md, "Multi-worker failures":
6.5 ms on localhost with 2 workers on 2 heavily loaded cores, 0.5-3% of an update there).
TensorFlow's `tf.distribute.experimental.PreemptionCheckpointHandler` does the same job through the
coordination service, but it saves through its own CheckpointManager, counts its own steps
and ends the process itself, which would bypass the loop's checkpoint, epoch-end and
results.json rules (see BUILD_NOTES.md).

The action also remembers the last update done (`updates`), which the loop names when a peer
is lost (training/cluster.py).
"""

from __future__ import annotations

import signal

import tensorflow as tf

from keras_largebatch.training.actions import Action, Outcome, StepOutput
from keras_largebatch.training.signals import SignalCatcher

_ORDER = (signal.SIGTERM, signal.SIGINT)  # index in the all-reduced vector; first one wins


class PreemptionSync(Action):
    def __init__(self, catcher: SignalCatcher, strategy: tf.distribute.Strategy):
        self.catcher, self.strategy = catcher, strategy
        self.agreed: int | None = None
        self.updates = 0

        @tf.function
        def total(flags):
            local = strategy.run(lambda: tf.identity(flags))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, local, axis=None)

        self._total = total

    def received(self) -> int | None:
        """The signal every worker agreed on (None: none yet)."""
        return self.agreed

    def __call__(self, out: StepOutput) -> Outcome | None:
        if out.epoch_end or self.agreed is not None:
            return None  # no collective at an epoch end; once agreed, the answer stays
        self.updates = out.updates
        local = self.catcher.received
        flags = tf.constant([1.0 if local == s else 0.0 for s in _ORDER], tf.float32)
        seen = self._total(flags).numpy()
        self.agreed = next((int(s) for s, n in zip(_ORDER, seen) if n > 0), None)
        return None
