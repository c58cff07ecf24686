"""Per-epoch distributed inputs of the loop, and their cheap retirement.

    inputs = epoch_inputs(strategy, dataset_fn)      # {"dataset": ..., "iterator": ...}
    step(inputs["iterator"]) ...
    release_in_background(inputs)                    # at the epoch's end

The loop builds a new distributed pipeline every epoch (each epoch has its own seeded
permutation, and a batch phase switch is just an epoch whose pipeline has another batch size).
Destroying a finished distributed iterator (its MultiDeviceIterator and prefetch threads) was
measured to block the calling thread for 1-20 s on this 2-core machine under load
(BUILD_NOTES.md, "phase switch"); dropping the last reference on a daemon thread keeps that off
the training thread, so an epoch boundary costs only the new pipeline.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Callable

import tensorflow as tf


def epoch_inputs(strategy: tf.distribute.Strategy, dataset_fn: Callable) -> dict:
    """Distributed dataset and iterator for one epoch, held only by the returned dict."""
    dataset = strategy.distribute_datasets_from_function(dataset_fn)
    return {"dataset": dataset, "iterator": iter(dataset)}


def release_in_background(inputs: dict) -> None:
    """Empty `inputs` and destroy what it held on a daemon thread.

    The caller must hold no other reference to the iterator or dataset.
    """
    items = [inputs.pop(key) for key in list(inputs)]
    thread = threading.Thread(target=items.clear, name="release-epoch-inputs", daemon=True)
    thread.start()
    _releases[:] = [t for t in _releases if t.is_alive()] + [thread]


_releases: list[threading.Thread] = []


@atexit.register
def _finish_releases() -> None:
    """Join the release threads before the interpreter finalises: a daemon thread still inside
    TensorFlow's iterator destructor at that point is unwound by force and the process aborts
    ("FATAL: exception not rethrown", exit -6) after a run that had finished."""
    while _releases:
        _releases.pop().join()
