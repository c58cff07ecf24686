"""Batch-augmentation input pipeline vs the model: is input ever the bottleneck?

    .venv/bin/python bench/batch_aug_pipeline.py
    .venv/bin/python bench/batch_aug_pipeline.py --steps 40 --pipeline_steps 300 --rounds 3
    .venv/bin/python bench/batch_aug_pipeline.py --smoke   # B = 16, 1 round of 2 steps: runs only

Real Fashion-MNIST (`get_source("fashion_mnist")`), policy "cutout" (pad 2 + crop, Cutout 8x8
filled with the mean), global batch B (`--batch`, 64) of distinct samples, M copies each
(`repeats=M`), one replica (`make_strategy()`).

1. Pipeline alone: examples/s (M*B per batch, over `--pipeline_steps` batches) that
   `train_dataset_fn(..., repeats=M, augment=make_augment("cutout", ...))` yields when nothing
   else runs, M in {1, 4, 8}.
2. Model alone: examples/s the seed-002 CNN (`cnn_fashion`, dropout 0.25, SGD momentum 0.9)
   consumes in `TrainStep` when its input is one batch already in memory, M in {1, 4, 8}.
3. Training at M = 4 with the real pipeline, two ways:
   a. `TrainStep(iterator)` end to end: examples/s, compared with (2);
   b. the same replica step (`TrainStep._replica_step` under `strategy.run`) fed by a Python
      loop that times `next(iterator)` separately: waiting-on-input fraction
      = time in next() / total time (issue goal: < 5%).

Each measurement is preceded by an untimed warm-up (tracing, prefetch fill) and repeated
`--rounds` times; the median is printed. In (3) the three measurements alternate (a b c, b c a,
c a b, ...: bench/timing.py's `alternate`). On 2 CPU cores the pipeline's threads and the model
share the same cores, so (3a) vs (2) also shows any slowdown from contention that (3b) misses.
Not a test.
"""

from __future__ import annotations

import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from timing import alternate, bench_parser, median, ratios, session, smoke  # noqa: E402

from keras_largebatch.data import get_source, train_dataset_fn  # noqa: E402
from keras_largebatch.data.augment import make_augment  # noqa: E402
from keras_largebatch.models import build_model  # noqa: E402
from keras_largebatch.schedules.progress import Progress  # noqa: E402
from keras_largebatch.training.metrics import RunningMetrics  # noqa: E402
from keras_largebatch.training.steps.train_step import TrainStep  # noqa: E402
from keras_largebatch.training.strategy import make_strategy  # noqa: E402

WARMUP = 5  # untimed steps / batches before every measurement


def pipeline_rate(source, augment, *, batch, repeats, steps, epoch) -> float:
    """Examples/s of the pipeline alone (one replica's dataset, iterated on the host)."""
    ds = train_dataset_fn(source, global_batch_size=batch, epoch=epoch, seed=0,
                          repeats=repeats, augment=augment)()
    it = iter(ds)
    for _ in range(WARMUP):
        next(it)
    start = time.perf_counter()
    for _ in range(steps):
        next(it)
    return steps * batch * repeats / (time.perf_counter() - start)


def make_train_step(strategy, repeats) -> TrainStep:
    with strategy.scope():
        model = build_model("cnn_fashion", input_shape=(28, 28, 1), num_classes=10)
        optimizer = keras.optimizers.SGD(learning_rate=0.05, momentum=0.9)
        optimizer.build(model.trainable_variables)
        metrics = RunningMetrics()
    return TrainStep(model=model, optimizer=optimizer, strategy=strategy, progress=Progress(),
                     metrics=metrics, repeats=repeats)


def real_iterator(strategy, source, augment, *, batch, repeats, epoch):
    return iter(strategy.distribute_datasets_from_function(train_dataset_fn(
        source, global_batch_size=batch, epoch=epoch, seed=0, repeats=repeats,
        augment=augment)))


def model_rate(strategy, step, source, augment, *, batch, repeats, steps) -> float:
    """Examples/s TrainStep consumes from one in-memory batch (no input cost)."""
    x, y = next(iter(train_dataset_fn(source, global_batch_size=batch, epoch=0, seed=0,
                                      repeats=repeats, augment=augment)()))
    it = iter(strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensors((x, y)).repeat()))
    for _ in range(WARMUP):
        step(it)
    step.metrics.result()  # sync
    start = time.perf_counter()
    for _ in range(steps):
        step(it)
    step.metrics.result()
    return steps * batch * repeats / (time.perf_counter() - start)


def end_to_end_rate(strategy, step, source, augment, *, batch, repeats, steps, epoch) -> float:
    it = real_iterator(strategy, source, augment, batch=batch, repeats=repeats, epoch=epoch)
    for _ in range(WARMUP):
        step(it)
    step.metrics.result()
    start = time.perf_counter()
    for _ in range(steps):
        step(it)
    step.metrics.result()
    return steps * batch * repeats / (time.perf_counter() - start)


def wait_fraction(strategy, step, source, augment, *, batch, repeats, steps, epoch):
    """(time in next(iterator) / total, examples/s) with the step fed from a Python loop."""
    run = tf.function(lambda x, y: strategy.run(step._replica_step, args=(x, y)))
    it = real_iterator(strategy, source, augment, batch=batch, repeats=repeats, epoch=epoch)
    for _ in range(WARMUP):
        run(*next(it))
    waiting = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        t = time.perf_counter()
        x, y = next(it)
        waiting += time.perf_counter() - t
        stats = run(x, y)
    tf.nest.map_structure(lambda s: s.numpy() if hasattr(s, "numpy") else s,
                          strategy.experimental_local_results(stats))
    total = time.perf_counter() - start
    return waiting / total, steps * batch * repeats / total


def main(argv=None) -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per measurement")
    parser.add_argument("--pipeline_steps", type=int, default=300,
                        help="timed batches per pipeline-alone measurement")
    parser.add_argument("--rounds", type=int, default=3, help="repeats; the median is shown")
    parser.add_argument("--batch", type=int, default=64, help="global batch B (distinct)")
    args = smoke(parser.parse_args(argv), steps=2, pipeline_steps=2, rounds=1, batch=16)

    source = get_source("fashion_mnist")
    augment = make_augment("cutout", input_shape=source.input_shape, mean=source.mean)
    strategy = make_strategy()
    with session(f"{platform.node()}: {len(tf.config.list_physical_devices('GPU'))} GPU, "
                 f"TF {tf.__version__}, keras {keras.__version__}; {augment}; B={args.batch}, "
                 f"{args.steps} steps x {args.rounds} rounds (median)"):
        measure(args, source, augment, strategy)


def measure(args, source, augment, strategy) -> None:
    kw = dict(batch=args.batch, steps=args.steps)
    print("\n  M   pipeline alone   model alone   pipeline/model   (examples/s, M*B per step)")
    steps_by_m = {}
    for m in (1, 4, 8):
        pipe = median([pipeline_rate(source, augment, repeats=m, epoch=r, batch=args.batch,
                                     steps=args.pipeline_steps)
                       for r in range(args.rounds)])
        steps_by_m[m] = step = make_train_step(strategy, m)
        model = median([model_rate(strategy, step, source, augment, repeats=m, **kw)
                        for _ in range(args.rounds)])
        print(f"  {m:<3d} {pipe:14,.0f}   {model:11,.0f}   {pipe / model:14.1f}x", flush=True)

    m = 4
    step = steps_by_m[m]
    got = alternate({  # so all three see the same machine load
        "e2e": lambda r: end_to_end_rate(strategy, step, source, augment, repeats=m, epoch=r,
                                         **kw),
        "model": lambda r: model_rate(strategy, step, source, augment, repeats=m, **kw),
        "waits": lambda r: wait_fraction(strategy, step, source, augment, repeats=m, epoch=r,
                                         **kw),
    }, args.rounds)
    e2e, model, waits = got["e2e"], got["model"], got["waits"]
    per_round = ratios(e2e, model)
    print(f"\nM = {m}, real pipeline feeding the CNN:")
    print(f"  TrainStep(iterator) end to end: {median(e2e):,.0f} examples/s; in-memory input: "
          f"{median(model):,.0f}; ratio {median(per_round):.1%} "
          f"(rounds: {', '.join(f'{x:.1%}' for x in per_round)})")
    print(f"  time waiting in next(iterator): {median([w for w, _ in waits]):.2%} of step time "
          f"(rounds: {', '.join(f'{w:.2%}' for w, _ in waits)}; "
          f"{median([r for _, r in waits]):,.0f} examples/s)")


if __name__ == "__main__":
    main()
