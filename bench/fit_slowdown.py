"""Why plain `model.fit` slows down after its first epoch: a minimal reproduction.

    .venv/bin/python bench/fit_slowdown.py [--epochs 3] [--examples 60000] [--cases a,b,c]
    .venv/bin/python bench/fit_slowdown.py --smoke    # 2 epochs of 320 images: runs only

One `model.fit(epochs=E)` per case on the seed-002 CNN, batch 128, SGD momentum 0.9, real
Fashion-MNIST already normalised in memory. A callback times every epoch (on_epoch_begin ->
on_epoch_end) and counts the traces of Keras' train function. Cases:

    numpy      fit(x, y, batch_size=128): 60000 = 468 x 128 + 96, a partial last batch
    numpy_div  the same on the first 59904 examples (468 full batches, no partial batch)
    tfdata     fit(tf.data ... .batch(128)), partial last batch (drop_remainder=False)

Prints img/s per epoch and the trace count after each epoch. Not a test. What it shows is in
BUILD_NOTES.md ("model.fit after its first epoch").
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from timing import bench_parser, session, smoke  # noqa: E402

from keras_largebatch.data import get_source  # noqa: E402
from keras_largebatch.models import build_model  # noqa: E402

BATCH = 128


class EpochTimer(keras.callbacks.Callback):
    """Per-epoch wall time and the train function's trace count after each epoch."""

    def __init__(self):
        super().__init__()
        self.times, self.traces, self._start = [], [], 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self._start)
        self.traces.append(trace_count(self.model))


def trace_count(model) -> int | None:
    """Traces of Keras' compiled train step (a tf.function inside `model.train_function`)."""
    fn = getattr(model, "train_function", None)
    for candidate in (fn, getattr(fn, "__wrapped__", None)):
        if hasattr(candidate, "experimental_get_tracing_count"):
            return candidate.experimental_get_tracing_count()
    closure = getattr(fn, "__closure__", None) or ()
    for cell in closure:
        inner = cell.cell_contents
        if hasattr(inner, "experimental_get_tracing_count"):
            return inner.experimental_get_tracing_count()
    return None


def normalized_arrays(examples: int):
    source = get_source("fashion_mnist")
    x, y = source.train_arrays
    x = ((x[:examples].astype(np.float32) / 255.0 - source.mean[0]) / source.std[0])
    return x.reshape(-1, *source.input_shape), y[:examples].astype(np.int32), source


def fit_model(source):
    keras.utils.set_random_seed(0)
    model = build_model("cnn_fashion", input_shape=source.input_shape, num_classes=10)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def run_case(case: str, x, y, source, epochs: int) -> EpochTimer:
    timer = EpochTimer()
    model = fit_model(source)
    if case == "numpy":
        model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=[timer])
    elif case == "numpy_div":
        n = len(x) // BATCH * BATCH
        model.fit(x[:n], y[:n], batch_size=BATCH, epochs=epochs, verbose=0, callbacks=[timer])
    elif case == "tfdata":
        data = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=0).batch(BATCH)
        model.fit(data.prefetch(2), epochs=epochs, verbose=0, callbacks=[timer],
                  shuffle=False)  # the dataset shuffles; True only draws Keras' warning
    else:
        raise SystemExit(f"error: unknown case {case!r}; choose from numpy, numpy_div, tfdata")
    images = (len(x) // BATCH * BATCH) if case == "numpy_div" else len(x)
    rates = " ".join(f"{images / t:.0f}" for t in timer.times)
    print(f"{case:10s} img/s per epoch: {rates}   traces after each epoch: {timer.traces}",
          flush=True)
    return timer


def main(argv=None) -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--examples", type=int, default=60000)
    parser.add_argument("--cases", default="numpy,numpy_div,tfdata")
    args = smoke(parser.parse_args(argv), epochs=2, examples=320)  # 2 x 128 + 64: partial
    x, y, source = normalized_arrays(args.examples)
    with session(f"model.fit per epoch: seed-002 CNN, batch {BATCH}, {args.examples} images, "
                 f"{args.epochs} epochs"):
        for case in args.cases.split(","):
            run_case(case, x, y, source, args.epochs)


if __name__ == "__main__":
    main()
