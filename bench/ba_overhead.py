"""Wall time per sample of BA-Momentum (fast and exact statistics) vs plain momentum SGD.

Run (from the repository root):

    .venv/bin/python bench/ba_overhead.py
    .venv/bin/python bench/ba_overhead.py --samples 20000 --rounds 4 --modes projection,diagonal
    .venv/bin/python bench/ba_overhead.py --smoke    # 256 samples, 1 round: runs, no number

The seed-002 Fashion-MNIST CNN (App. A, dropout 0.25) on real Fashion-MNIST training images,
chunk / batch m0 = 32, one process, no distribution strategy. Each method trains its own copy of
the model from the same initial weights with its own compiled step:

- plain:      `keras.optimizers.SGD(learning_rate, momentum=0.9)`, one update per batch of m0;
- projection: `BAMomentum(covariance="projection")` (the fast default) via `ba_chunk_step`;
- diagonal:   `BAMomentum(covariance="diagonal")`, the paper's App. C mode: exact sums of
              squared per-example gradients from one batched pass (ba_sum_grad_squared.py);
- diagonal_per_example (not run by default): the same statistics from per-example gradients
              (`tf.vectorized_map`), the path models with uncovered layers fall back to.

After one untimed warm-up (tracing) each, the methods alternate for `--rounds` rounds (the
order rotates every round so all see the same machine load); every round each method consumes
`samples / rounds` samples in chunks of m0 taken in order from the first `--samples` training
images, already in memory (no input-pipeline time). Printed per method: samples/s, the wall time
per sample relative to plain SGD (total, and median / range of the per-round ratios), the same
ratio in process CPU time (all TF threads; steadier than wall time when other jobs share the
machine), and BA's number of updates and batch sizes. Goals (issue 17): diagonal <= 1.6x,
projection <= 1.4x.
"""

from __future__ import annotations

import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from timing import alternate, bench_parser, median, session, smoke  # noqa: E402

from keras_largebatch.data.sources import fashion_mnist  # noqa: E402
from keras_largebatch.models import build_model  # noqa: E402
from keras_largebatch.optimizers.ba_covariance import DiagonalCovariance  # noqa: E402
from keras_largebatch.optimizers.ba_model import ba_chunk_step  # noqa: E402
from keras_largebatch.optimizers.ba_momentum import BAMomentum  # noqa: E402


def real_chunks(m0: int, samples: int) -> list[tuple[tf.Tensor, tf.Tensor]]:
    source = fashion_mnist(max_train_examples=samples)
    images, labels = source.train_arrays
    x = (images.astype("float32")[..., None] / 255.0 - source.mean[0]) / source.std[0]
    n = (len(x) // m0) * m0
    return [
        (tf.constant(x[i : i + m0]), tf.constant(labels[i : i + m0].astype("int32")))
        for i in range(0, n, m0)
    ]


def plain_step(model, lr):
    optimizer = keras.optimizers.SGD(learning_rate=lr, momentum=0.9)
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return {"did_update": tf.constant(True), "batch_size_of_update": tf.shape(y)[0]}

    return step


def ba_step(model, lr, m0, covariance):
    per_example = covariance == "diagonal_per_example"
    optimizer = BAMomentum(learning_rate=lr, momentum=0.9, min_increment=m0,
                           covariance="diagonal" if per_example else covariance)
    if per_example:
        optimizer._estimator = DiagonalCovariance(per_example=True)  # noqa: SLF001
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    return tf.function(lambda x, y: ba_chunk_step(model, optimizer, loss_fn, x, y))


def run(step, chunks, start, count, sizes):
    """(wall seconds, process CPU seconds) for `count` chunks."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = None
    for i in range(start, start + count):
        out = step(*chunks[i % len(chunks)])
        if bool(out["did_update"]):  # syncs every chunk, as a loop logging BA sizes would
            sizes.append(int(out["batch_size_of_update"]))
    return time.perf_counter() - t0, time.process_time() - c0


def main(argv=None):
    parser = bench_parser(__doc__)
    parser.add_argument("--samples", type=int, default=20_000, help="per method")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--m0", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=0.01)
    parser.add_argument("--modes", default="projection,diagonal")
    args = smoke(parser.parse_args(argv), samples=256, rounds=1)
    with session(f"BA-Momentum vs momentum SGD per sample, seed-002 CNN, m0={args.m0}"):
        measure(args)


def measure(args):
    chunks = real_chunks(args.m0, args.samples)
    per_round = len(chunks) // args.rounds
    keras.utils.set_random_seed(0)
    base = build_model("cnn_fashion", input_shape=(28, 28, 1), num_classes=10)
    weights = base.get_weights()
    methods = {}
    for name in ["plain"] + args.modes.split(","):
        model = build_model("cnn_fashion", input_shape=(28, 28, 1), num_classes=10)
        model.set_weights(weights)
        if name == "plain":
            methods[name] = plain_step(model, args.learning_rate)
        else:
            methods[name] = ba_step(model, args.learning_rate, args.m0, name)

    print(f"{platform.platform()}, TF {tf.__version__}, Keras {keras.__version__}")
    print(
        f"seed-002 CNN, real Fashion-MNIST, m0={args.m0}, {per_round * args.m0} samples x "
        f"{args.rounds} rounds per method"
    )
    sizes = {name: [] for name in methods}
    for step in methods.values():  # warm-up: trace and run a few chunks
        run(step, chunks, 0, 5, [])
    names = list(methods)
    times = alternate({name: lambda r, name=name: run(methods[name], chunks, r * per_round,
                                                      per_round, sizes[name])
                       for name in names}, args.rounds)
    samples = per_round * args.m0
    for name in names:
        wall = [t[0] for t in times[name]]
        cpu = [t[1] for t in times[name]]
        rate = samples * args.rounds / sum(wall)
        ratios = [t[0] / p[0] for t, p in zip(times[name], times["plain"])]
        cpu_ratio = sum(cpu) / sum(t[1] for t in times["plain"])
        line = (
            f"{name:>10}: {rate:6.0f} samples/s  time/sample vs plain: wall "
            f"{sum(wall) / sum(t[0] for t in times['plain']):.2f}x (rounds: median "
            f"{median(ratios):.2f}, {min(ratios):.2f}-{max(ratios):.2f}), "
            f"CPU {cpu_ratio:.2f}x"
        )
        if name != "plain":
            s = np.array(sizes[name])
            line += f"  | {len(s)} updates, mean batch {s.mean():.1f}, max {s.max()}"
        print(line)


if __name__ == "__main__":
    main()
