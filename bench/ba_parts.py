"""Where BA-Momentum's extra time per chunk goes: one BA chunk against one plain step, by part.

    .venv/bin/python bench/ba_parts.py [--modes projection,diagonal] [--rounds 5] [--chunks 40]
    .venv/bin/python bench/ba_parts.py --smoke

The seed-002 CNN (dropout 0.25) on real Fashion-MNIST chunks of m0 = 32, one process, no
strategy, as bench/ba_overhead.py. Each part is its own compiled `tf.function`, timed over
`--chunks` calls per round, the parts alternating round by round (bench/timing.py):

- plain: momentum SGD's whole step (forward, backward, apply);
- fwd+bwd: forward and backward only; forward: the training-mode forward pass alone;
- ba_stats: `BAMomentum.compute_chunk_statistics` (the mode's forward/backward: for
  "projection" the ordinary backward to the weights and the outputs, for "diagonal" the batched
  sums of squared per-example gradients of ba_sum_grad_squared.py);
- ba_stats+accumulate: plus `accumulate` (sums, f, sigma^2 -- for "projection" the extra forward
  pass at theta + eps f --, mu, Eq. 9's m* search, the state written);
- ba_full: `ba_chunk_step`, i.e. plus the masked update `apply_accumulated`.

Differences between consecutive rows are the parts' costs. Printed per part: median ms per
call in wall and in process CPU time (all TF threads; steadier on a shared machine), and CPU
time relative to the plain step. Not a test.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from ba_overhead import real_chunks  # noqa: E402
from timing import alternate, bench_parser, median, session, smoke  # noqa: E402

from keras_largebatch.models import build_model  # noqa: E402
from keras_largebatch.optimizers.ba_model import ba_chunk_step  # noqa: E402
from keras_largebatch.optimizers.ba_momentum import BAMomentum  # noqa: E402


def cnn():
    keras.utils.set_random_seed(0)
    return build_model("cnn_fashion", input_shape=(28, 28, 1), num_classes=10)


def plain_parts(lr: float) -> dict:
    model = cnn()
    optimizer = keras.optimizers.SGD(learning_rate=lr, momentum=0.9)
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def grads(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        return tape.gradient(loss, model.trainable_variables)

    def step(x, y):
        optimizer.apply_gradients(zip(grads(x, y), model.trainable_variables, strict=True))
        return optimizer.iterations

    return {"plain": tf.function(step), "fwd+bwd": tf.function(grads),
            "forward": tf.function(lambda x, y: model(x, training=True))}


def ba_parts(lr: float, m0: int, mode: str) -> dict:
    model = cnn()
    optimizer = BAMomentum(learning_rate=lr, momentum=0.9, min_increment=m0, covariance=mode)
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)

    def stats(x, y):
        s = optimizer.compute_chunk_statistics(model, loss_fn, x, y)
        return s.loss_sum, s.grad_sum

    def stats_accumulate(x, y):
        return optimizer.accumulate(optimizer.compute_chunk_statistics(model, loss_fn, x, y))

    return {f"{mode}: ba_stats": tf.function(stats),
            f"{mode}: ba_stats+accumulate": tf.function(stats_accumulate),
            f"{mode}: ba_full": tf.function(
                lambda x, y: ba_chunk_step(model, optimizer, loss_fn, x, y))}


def timed(fn, chunks, count: int) -> tuple[float, float]:
    """(wall ms, CPU ms) per call over `count` calls, waiting for the last result."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = None
    for i in range(count):
        out = fn(*chunks[i % len(chunks)])
    tf.nest.map_structure(lambda t: t.numpy(), out)
    return ((time.perf_counter() - t0) / count * 1e3, (time.process_time() - c0) / count * 1e3)


def main(argv=None) -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--modes", default="projection,diagonal")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chunks", type=int, default=40, help="timed calls per part and round")
    parser.add_argument("--m0", type=int, default=32)
    args = smoke(parser.parse_args(argv), rounds=1, chunks=2)
    with session(f"BA-Momentum chunk vs momentum SGD step by part, seed-002 CNN, m0={args.m0}"):
        measure(args)


def measure(args) -> None:
    chunks = real_chunks(args.m0, args.m0 * 64)
    parts = plain_parts(0.01)
    for mode in args.modes.split(","):
        parts.update(ba_parts(0.01, args.m0, mode))
    for fn in parts.values():  # trace and warm up, not timed
        timed(fn, chunks, 3)
    times = alternate({name: lambda _r, fn=fn: timed(fn, chunks, args.chunks)
                       for name, fn in parts.items()}, args.rounds)
    plain_cpu = median([c for _, c in times["plain"]])
    print(f"{args.chunks} calls x {args.rounds} rounds per part; median per call")
    for name, values in times.items():
        wall, cpu = median([w for w, _ in values]), median([c for _, c in values])
        print(f"{name:32s} wall {wall:7.2f} ms  CPU {cpu:7.2f} ms  "
              f"CPU / plain {cpu / plain_cpu:.2f}")


if __name__ == "__main__":
    main()
