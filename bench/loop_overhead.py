"""Framework loop vs plain `model.fit`: images/s on the seed-002 CNN, real Fashion-MNIST.

    .venv/bin/python bench/loop_overhead.py [--rounds 3] [--steps 150] [--batch 128] [--jit]
    .venv/bin/python bench/loop_overhead.py --smoke    # 1 round of 2 steps: runs, no number

Both sides train the same architecture with the same optimizer (SGD, momentum 0.9), batch and
number of samples per round, in one process, alternating rounds (loop fit, fit loop, ...:
bench/timing.py's `alternate`) so both see the same machine load. (a) is `TrainStep` over a
`distribute_datasets_from_function` pipeline rebuilt each round (as the loop does each epoch);
(b) is `model.compile` + `model.fit` on the same pipeline (`train_dataset_fn(...)()`, one
replica), so the comparison isolates the training loops. The first round of each side (tracing)
is not timed. Prints the images/s of each and the ratio loop / fit (> 1 means the loop is
faster). Not a test.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from timing import alternate, bench_parser, median, ratios, session, smoke, spread  # noqa: E402

from keras_largebatch.data import get_source, train_dataset_fn  # noqa: E402
from keras_largebatch.models import build_model  # noqa: E402
from keras_largebatch.schedules.progress import Progress  # noqa: E402
from keras_largebatch.training.metrics import RunningMetrics  # noqa: E402
from keras_largebatch.training.steps.train_step import TrainStep  # noqa: E402


def main(argv=None) -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--jit", action="store_true", help="XLA for both sides")
    args = smoke(parser.parse_args(argv), rounds=1, steps=2, batch=32)

    source = get_source("fashion_mnist")
    strategy = tf.distribute.MirroredStrategy([tf.config.list_logical_devices("CPU")[0].name])
    make = lambda: build_model("cnn_fashion", input_shape=source.input_shape,  # noqa: E731
                               num_classes=10)

    # (a) the framework's compiled step.
    with strategy.scope():
        loop_model = make()
        loop_opt = keras.optimizers.SGD(0.05, momentum=0.9)
        loop_opt.build(loop_model.trainable_variables)
        metrics = RunningMetrics()
    progress = Progress()
    step = TrainStep(model=loop_model, optimizer=loop_opt, strategy=strategy, progress=progress,
                     metrics=metrics, jit_compile=args.jit)

    def run_loop(round_index: int) -> float:
        it = iter(strategy.distribute_datasets_from_function(train_dataset_fn(
            source, global_batch_size=args.batch, epoch=round_index, seed=0)))
        start = time.perf_counter()
        for _ in range(args.steps):
            step(it)
        float(metrics.loss_sum.numpy())  # wait for the last step
        return args.steps * args.batch / (time.perf_counter() - start)

    # (b) plain Keras.
    fit_model = make()
    fit_model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"], jit_compile=args.jit)
    def run_fit(round_index: int) -> float:
        # The very same input pipeline as the loop (one replica), so only the loops differ.
        fit_data = train_dataset_fn(source, global_batch_size=args.batch, epoch=round_index,
                                    seed=0)()
        start = time.perf_counter()
        fit_model.fit(fit_data, steps_per_epoch=args.steps, epochs=1, verbose=0,
                      shuffle=False)  # the dataset shuffles; True only draws Keras' warning
        return args.steps * args.batch / (time.perf_counter() - start)

    with session(f"seed-002 CNN, batch {args.batch}, jit={args.jit}, {args.steps} steps x "
                 f"{args.rounds} rounds"):
        run_loop(0), run_fit(0)  # tracing / warm-up
        rates = alternate({"loop": lambda r: run_loop(r + 1), "fit": lambda r: run_fit(r + 1)},
                          args.rounds)
        for r, (loop, fit) in enumerate(zip(rates["loop"], rates["fit"]), start=1):
            print(f"round {r}: loop {loop:.0f} img/s, fit {fit:.0f} img/s", flush=True)
        loop_med, fit_med = median(rates["loop"]), median(rates["fit"])
        print(spread("per-round ratio loop/fit", ratios(rates["loop"], rates["fit"])))
        print(f"median images/s: loop {loop_med:.0f}, model.fit {fit_med:.0f}, "
              f"ratio loop/fit = {loop_med / fit_med:.3f} (batch {args.batch}, jit={args.jit}, "
              f"{args.steps} steps x {args.rounds} rounds, traces={step.trace_count})")


if __name__ == "__main__":
    main()
