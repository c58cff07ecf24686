"""The framework loop against plain `model.fit` and against the bare compiled step.

    .venv/bin/python bench/vs_keras.py [--epochs 3] [--examples 60000]
                                      [--precisions float32,mixed_bfloat16]
    .venv/bin/python bench/vs_keras.py --smoke   # 2 epochs of 256 images, 256 test: runs only

Same CNN (seed 002, dropout 0.25), batch 128, SGD momentum 0.9 (LR 0.05), real Fashion-MNIST,
one process, per precision:

    framework  the real `training.loop.train` path: pipeline per epoch, progress bar, running
               metrics, TensorBoard, checkpoints (every 1000 updates and per epoch), test-set
               evaluation; one `train(epochs=E)` call
    fit_numpy  `model.fit(x, y, batch_size=128, epochs=E)` on the normalised arrays
    fit_tfdata `model.fit(tf.data shuffle/batch/prefetch, epochs=E)`
    bare       a `tf.function` (loss, gradients, `optimizer.apply`) over batches already in
               memory as tensors: no pipeline, no metrics, no strategy (the limit)

All variants run at once as threads that pass one baton: each runs one epoch, hands over and
waits, so epoch k of every variant sees the same machine load (alternating, same process), and
each is one whole run (its own `train` / `fit` call), so what happens between epochs counts.
Per epoch each variant's *active* time (baton to baton, waiting excluded) gives img/s; the
framework's includes its evaluation of the 10k test images and its epoch-end checkpoint, which
model.fit does not do; its update-only rate (results.json `samples_per_second`) is printed too.
Epoch 1 holds tracing. Ratios: framework / fit_* and framework / bare, per epoch and over the
whole run (sum of active times), for the framework's active time ("framework") and for its
update phase only ("fw_updates", evaluation and checkpoint left out as model.fit has none).
Not a test: absolute numbers depend on the machine's load.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from timing import bench_parser, load_average, median, session, smoke  # noqa: E402

from keras_largebatch.data import DataSource, get_source  # noqa: E402
from keras_largebatch.models import build_model  # noqa: E402
from keras_largebatch.training.actions import Action, StepOutput  # noqa: E402
from keras_largebatch.training.loop import train  # noqa: E402
from keras_largebatch.training.precision import float32_outputs, precision_policy  # noqa: E402

BATCH, LR = 128, 0.05
VARIANTS = ("framework", "fit_numpy", "fit_tfdata", "bare")


class Baton:
    """Round-robin turns between threads; counts each thread's time spent waiting."""

    def __init__(self, names):
        self.names, self.turn = list(names), 0
        self.cond = threading.Condition()
        self.active = {n: [] for n in names}  # active seconds per epoch
        self._since = {}

    def start(self, name):
        self._wait(name)

    def epoch_done(self, name):
        self.active[name].append(time.perf_counter() - self._since[name])
        self._pass(name)
        self._wait(name)

    def finish(self, name):
        with self.cond:
            self.names.remove(name)
            self.turn %= max(len(self.names), 1)
            self.cond.notify_all()

    def _pass(self, name):
        with self.cond:
            self.turn = (self.names.index(name) + 1) % len(self.names)
            self.cond.notify_all()

    def _wait(self, name):
        with self.cond:
            self.cond.wait_for(lambda: self.names[self.turn] == name)
        self._since[name] = time.perf_counter()


class BatonAction(Action):
    """Framework side: hand over at every epoch end (after evaluation and checkpoint)."""

    every_update = False  # acts on epoch ends: train.steps_per_loop = 'auto' stays auto

    def __init__(self, baton, name):
        self.baton, self.name = baton, name

    def __call__(self, out: StepOutput):
        if out.epoch_end:
            self.baton.epoch_done(self.name)


class BatonCallback(keras.callbacks.Callback):
    def __init__(self, baton, name):
        super().__init__()
        self.baton, self.name = baton, name

    def on_epoch_end(self, epoch, logs=None):
        self.baton.epoch_done(self.name)


def make_model(source, precision):
    with precision_policy(precision):
        return float32_outputs(build_model("cnn_fashion", input_shape=source.input_shape,
                                           num_classes=source.num_classes))


def compiled(model):
    model.compile(optimizer=keras.optimizers.SGD(LR, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def run_variant(name, baton, source, arrays, precision, epochs, out):
    x, y = arrays
    baton.start(name)
    try:
        if name == "framework":
            with tempfile.TemporaryDirectory() as run_dir:
                results = train(run_dir=run_dir, dataset=source, epochs=epochs, batch_size=BATCH,
                                learning_rate=LR, optimizer="momentum", precision=precision,
                                extra_actions=[BatonAction(baton, name)], verbose=True)
            out["framework_updates"] = [e["samples_per_second"] for e in results["epochs"]]
        elif name.startswith("fit"):
            with precision_policy(precision):
                model = compiled(make_model(source, precision))
                callback = BatonCallback(baton, name)
                if name == "fit_numpy":
                    model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0,
                              callbacks=[callback])
                else:
                    data = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(
                        len(x), seed=0).batch(BATCH).prefetch(tf.data.AUTOTUNE)
                    model.fit(data, epochs=epochs, verbose=0, callbacks=[callback],
                              shuffle=False)  # shuffled by the dataset: no Keras warning
        else:
            bare_epochs(baton, name, source, x, y, precision, epochs)
    except BaseException as e:  # re-raised by bench() after the other threads end
        out.setdefault("errors", []).append((name, e))
    finally:
        baton.finish(name)


def bare_epochs(baton, name, source, x, y, precision, epochs):
    """The limit: compiled forward/backward/apply on in-memory batches, nothing else."""
    with precision_policy(precision):
        model = make_model(source, precision)
        opt = keras.optimizers.SGD(LR, momentum=0.9)
        opt.build(model.trainable_variables)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

        @tf.function
        def step(images, labels):
            with tf.GradientTape() as tape:
                loss = loss_fn(labels, model(images, training=True))
            opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)

        n = len(x) // BATCH
        batches = [(tf.constant(x[i * BATCH:(i + 1) * BATCH]),
                    tf.constant(y[i * BATCH:(i + 1) * BATCH])) for i in range(n)]
        for _ in range(epochs):
            for images, labels in batches:
                step(images, labels)
            float(opt.iterations.numpy())  # wait for the last update
            baton.epoch_done(name)


def normalized(source: DataSource):
    x, y = source.train_arrays
    x = (x.astype(np.float32) / 255.0 - source.mean[0]) / source.std[0]
    return x.reshape(-1, *source.input_shape), y.astype(np.int32)


def subset(source: DataSource, n: int, n_test: int | None = None) -> DataSource:
    (x, y), (tx, ty) = source.train_arrays, source.test_arrays
    n_test = source.num_test if n_test is None else min(n_test, source.num_test)
    return DataSource(name=source.name, input_shape=source.input_shape,
                      num_classes=source.num_classes, num_train=n, num_test=n_test,
                      mean=source.mean, std=source.std, train_arrays=(x[:n], y[:n]),
                      test_arrays=(tx[:n_test], ty[:n_test]))


def bench(precision, source, arrays, epochs, variants):
    baton = Baton(variants)
    out: dict = {}
    threads = [threading.Thread(target=run_variant, daemon=True,
                                args=(v, baton, source, arrays, precision, epochs, out))
               for v in variants]
    load = [load_average()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    load.append(load_average())
    for name, error in out.get("errors", []):
        raise RuntimeError(f"variant {name} failed: {error!r}") from error
    report(precision, source.num_train, baton.active, out, load)


def report(precision, images, active, out, load):
    print(f"\n== {precision}: img/s per epoch (active time, epoch 1 holds tracing); "
          f"load average {load[0]} -> {load[1]}", flush=True)
    rate = {v: [images / t for t in ts] for v, ts in active.items()}
    for v, rs in rate.items():
        print(f"  {v:11s} " + " ".join(f"{r:7.0f}" for r in rs), flush=True)
    if "framework_updates" in out:
        print("  framework updates only (results.json samples_per_second): "
              + " ".join(f"{r:.0f}" for r in out["framework_updates"]), flush=True)
    if "framework" not in rate:
        return
    whole = {v: len(ts) * images / sum(ts) for v, ts in active.items()}
    mine = {"framework": rate["framework"]}
    if "framework_updates" in out:  # the update phase only, as model.fit's epochs
        mine["fw_updates"] = out["framework_updates"]
        whole["fw_updates"] = len(out["framework_updates"]) * images / sum(
            images / r for r in out["framework_updates"])
    for name, ours in mine.items():
        for other in (v for v in rate if v != "framework"):
            per = " ".join(f"{a / b:.3f}" for a, b in zip(ours, rate[other]))
            later = median([a / b for a, b in zip(ours[1:], rate[other][1:])])
            print(f"  {name:10s} / {other:10s} per epoch {per}; median of epochs 2.. "
                  f"{later:.3f}; whole run {whole[name] / whole[other]:.3f}", flush=True)


def main(argv=None) -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--examples", type=int, default=60000)
    parser.add_argument("--test_examples", type=int, default=None,
                        help="test images the framework evaluates (default: all 10,000)")
    parser.add_argument("--precisions", default="float32,mixed_bfloat16")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = smoke(parser.parse_args(argv), epochs=2, examples=256, test_examples=256)
    source = subset(get_source("fashion_mnist"), args.examples, args.test_examples)
    arrays = normalized(source)
    with session(f"framework vs model.fit vs bare step: seed-002 CNN, batch {BATCH}, "
                 f"{args.examples} images, {args.epochs} epochs"):
        for precision in args.precisions.split(","):
            bench(precision, source, arrays, args.epochs, args.variants.split(","))


if __name__ == "__main__":
    main()
