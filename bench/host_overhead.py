"""Host overhead per update, as a GPU would see it: a model whose compiled step takes ~1-2 ms.

Run (from the repository root):

    .venv/bin/python bench/host_overhead.py
    .venv/bin/python bench/host_overhead.py --rounds 3 --loops 1 8 32 auto --examples 20000
    .venv/bin/python bench/host_overhead.py --smoke     # 1 round, tiny sizes: runs, no number
    .venv/bin/python bench/host_overhead.py --batch 8   # a ~1-2 ms step on a slower CPU

The seed-002 Fashion-MNIST CNN shrunk to one 2-filter convolution (`filters=(2,)`, dropout off),
global batch 32, the first --examples real Fashion-MNIST training images, fixed batch, one CPU
replica, SGD with momentum: a compiled step of about a millisecond, where the host's work per
update is what sets the pace (on a GPU the papers' networks have such steps). Variants, all
alternating round by round (bench/timing.py), each round a run of --epochs epochs:

    bare        one `tf.function` call per update on batches already in memory
    bare_K      K updates per call (a `tf.range` loop over an in-memory dataset iterator)
    framework_K `keras_largebatch.training.loop.train(steps_per_loop=K)` in this process
                (K = auto: the default, calls of ~0.1 s, training/loop_length.py), the
                training set held on the device (train.inputs_on_device, the default)
    framework_K_map  (--with_map) the same with the pipeline's map making every batch
                (train.inputs_on_device = False), the input before data/device_data.py
    fit_K       `model.fit(steps_per_execution=K)` on the same arrays, reshuffled every epoch
                (fit's default, and what the framework's input does; bare reads in order)

Measured: ms per update over epochs 2.. (epoch 1 holds tracing), for the framework and fit from
their own epoch times (the framework's `epoch_time_s` includes its actions and progress bar,
not the evaluation). Printed: each variant's median, its ratio to `bare` (>1: slower; the ratio
of the medians, and the median of the per-round ratios, which a drifting machine moves less), the
framework's host overhead per update in microseconds, framework_K - bare_K (K = auto: against
bare, one call per update).
"""

from __future__ import annotations

import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from timing import alternate, bench_parser, median, ratios, session, smoke  # noqa: E402

from keras_largebatch.data import DataSource  # noqa: E402
from keras_largebatch.data.sources import fashion_mnist  # noqa: E402
from keras_largebatch.models import build_model  # noqa: E402
from keras_largebatch.training.loop import train  # noqa: E402

BATCH = 32  # --batch: smaller where the CPU is slower, to keep the step near a GPU's ~1-2 ms
OPTIONS = {"filters": (2,), "dropout": 0.0}


def subset(n: int) -> DataSource:
    full = fashion_mnist()
    (x, y), test = full.train_arrays, full.test_arrays
    return DataSource(name="fashion_mnist_subset", input_shape=full.input_shape, num_classes=10,
                      num_train=n, num_test=min(1000, len(test[1])), mean=full.mean,
                      std=full.std, train_arrays=(x[:n], y[:n]),
                      test_arrays=(test[0][:1000], test[1][:1000]))


def arrays(source: DataSource):
    x, y = source.train_arrays
    x = ((x.astype(np.float32) / 255.0 - source.mean[0]) / source.std[0])
    return x.reshape(-1, 28, 28, 1), y.astype(np.int32)


def make_model():
    model = build_model("cnn_fashion", input_shape=(28, 28, 1), num_classes=10, **OPTIONS)
    return model, keras.optimizers.SGD(0.01, momentum=0.9)


def bare(x, y, epochs: int, k: int) -> float:
    """ms per update of a plain compiled step (k = 1: one call per update, else k per call)."""
    model, opt = make_model()
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    variables = model.trainable_variables
    opt.build(variables)

    def one(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))

    steps = len(y) // BATCH
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH, drop_remainder=True)
    if k == 1:
        batches = list(data)
        step = tf.function(one)
        run_epoch = lambda: [step(xb, yb) for xb, yb in batches]  # noqa: E731
    else:
        data = data.cache().repeat()
        it = iter(data)

        @tf.function
        def loop(n):
            for _ in tf.range(n):
                one(*next(it))

        def run_epoch():
            done = 0
            while done < steps:
                n = min(k, steps - done)
                loop(tf.constant(n))
                done += n
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        run_epoch()
        times.append((time.perf_counter() - start) / steps)
    return 1e3 * median(times[1:])


def framework(source: DataSource, epochs: int, k: int, on_device: bool = True) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        results = train(run_dir=os.path.join(tmp, "run"), dataset=source, model_options=OPTIONS,
                        optimizer="momentum", learning_rate=0.01, batch_size=BATCH,
                        epochs=epochs, steps_per_loop=k, checkpoint_every_steps=0,
                        inputs_on_device=on_device, verbose=False)
    steps = source.num_train // BATCH
    return 1e3 * median([e["epoch_time_s"] / steps for e in results["epochs"][1:]])


def fit(x, y, epochs: int, k: int) -> float:
    model, opt = make_model()
    model.compile(optimizer=opt, steps_per_execution=k,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    times = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=True, verbose=0,
              callbacks=[Clock()])
    return 1e3 * median(times[1:]) / (len(y) // BATCH)


def loop_arg(text: str) -> int | str:
    return text if text == "auto" else int(text)


def main(argv=None) -> None:
    global BATCH  # --batch sets the module's batch, read by bare / framework / fit
    parser = bench_parser(__doc__)
    parser.add_argument("--examples", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loops", type=loop_arg, nargs="+", default=[1, 8, 32, "auto"])
    parser.add_argument("--batch", type=int, default=BATCH, help="global batch per update")
    parser.add_argument("--with_map", action="store_true",
                        help="also time the framework with the input pipeline's map")
    args = smoke(parser.parse_args(argv), examples=256, epochs=2, rounds=1, loops=[1, 4, "auto"])
    BATCH = args.batch
    source = subset(args.examples)
    x, y = arrays(source)
    variants = {"bare": lambda _r: bare(x, y, args.epochs, 1)}
    for k in args.loops:
        if k != "auto" and k > 1:
            variants[f"bare_{k}"] = lambda _r, k=k: bare(x, y, args.epochs, k)
        variants[f"framework_{k}"] = lambda _r, k=k: framework(source, args.epochs, k)
        if args.with_map:
            variants[f"framework_{k}_map"] = lambda _r, k=k: framework(source, args.epochs, k,
                                                                       on_device=False)
        if k != "auto":
            variants[f"fit_{k}"] = lambda _r, k=k: fit(x, y, args.epochs, k)
    with session(f"TF {tf.__version__}, Keras {keras.__version__}; cnn_fashion filters=(2,), "
                 f"batch {BATCH}, {args.examples} images, {args.epochs} epochs, "
                 f"{args.rounds} rounds"):
        times = alternate(variants, args.rounds)
        base = median(times["bare"])
        for name, values in times.items():
            per_round = median(ratios(values, times["bare"]))
            print(f"{name:14s} {median(values):7.3f} ms/update  x{median(values) / base:.3f} "
                  f"of bare (per round: median x{per_round:.3f}; rounds: "
                  f"{' '.join(f'{v:.3f}' for v in values)})", flush=True)
        for k in args.loops:
            ref = 1 if k == "auto" else k  # 'auto' against one call per update
            loop = median(times["bare"] if ref == 1 else times[f"bare_{ref}"])
            host = median(times[f"framework_{k}"]) - loop
            print(f"framework host overhead at K={k}: {host * 1e3:.0f} us per update "
                  f"({host / loop:.1%} of the bare step at K={ref})", flush=True)


if __name__ == "__main__":
    main()
