"""Cost of measuring the gradient noise scale in the framework's train step.

Run (from the repository root):

    .venv/bin/python bench/noise_scale_overhead.py
    .venv/bin/python bench/noise_scale_overhead.py --rounds 8 --steps 30 --batch_size 256
    .venv/bin/python bench/noise_scale_overhead.py --smoke     # 1 round of 1 step: runs, no number

The framework's `TrainStep` (training/steps/train_step.py) on the default experiment's network
(the seed-002 Fashion-MNIST CNN, dropout off) and real Fashion-MNIST training images already in
memory, momentum SGD, global batch 128, once without and once with the noise-scale probe
(`noise_scale_reference_batch`, training/steps/noise_scale_step.py), for 1 replica (the probe
splits the batch into two micro-batches) and 2 logical CPU replicas (the probe reads the
optimizer's all-reduced gradient, training/steps/reduced_gradients.py, and adds four scalars to
the step's one reduce). The two variants of a replica count start from the same weights and
alternate round by round (bench/timing.py). Printed: ms per update of each and the with /
without ratio (median of the per-round ratios and their range); the issue's goal for "on by
default" is <= 1.02.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")  # two logical CPUs, before TF starts
tf.config.set_logical_device_configuration(_cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
from timing import alternate, bench_parser, median, ratios, seconds, session, smoke  # noqa: E402

from keras_largebatch.data.sources import fashion_mnist  # noqa: E402
from keras_largebatch.models import build_model  # noqa: E402
from keras_largebatch.schedules.progress import Progress  # noqa: E402
from keras_largebatch.training.metrics import RunningMetrics  # noqa: E402
from keras_largebatch.training.steps.train_step import TrainStep  # noqa: E402


def real_dataset(batch_size: int, num_batches: int) -> tf.data.Dataset:
    """The first `num_batches` batches of real Fashion-MNIST, in memory, repeated."""
    source = fashion_mnist()
    images, labels = source.train_arrays
    n = batch_size * num_batches
    x = (images[:n].astype("float32") / 255.0 - source.mean[0]) / source.std[0]
    return (tf.data.Dataset.from_tensor_slices((x.reshape(n, 28, 28, 1), labels[:n]))
            .batch(batch_size).cache().repeat())


def make_step(strategy, weights, probe: bool, batch_size: int) -> tuple:
    with strategy.scope():
        model = build_model("cnn_fashion", input_shape=(28, 28, 1), num_classes=10,
                            dropout=0.0)
        model.set_weights(weights)
        optimizer = keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)
        optimizer.build(model.trainable_variables)
        metrics = RunningMetrics()
    return TrainStep(model=model, optimizer=optimizer, strategy=strategy, progress=Progress(),
                     metrics=metrics,
                     noise_scale_reference_batch=batch_size if probe else None)


def main(argv=None) -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20, help="updates per round")
    parser.add_argument("--batches", type=int, default=16, help="distinct batches")
    args = smoke(parser.parse_args(argv), batch_size=16, rounds=1, steps=1, batches=2)
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    weights = build_model("cnn_fashion", input_shape=(28, 28, 1), num_classes=10,
                          dropout=0.0).get_weights()
    data = real_dataset(args.batch_size, args.batches)
    with session(f"TF {tf.__version__}, Keras {keras.__version__}; cnn_fashion, batch "
                 f"{args.batch_size}, {args.rounds} rounds x {args.steps} updates"):
        for replicas in (1, 2):
            strategy = tf.distribute.MirroredStrategy(devices[:replicas])
            variants = {}
            for name, probe in (("without", False), ("with", True)):
                step = make_step(strategy, weights, probe, args.batch_size)
                it = iter(strategy.experimental_distribute_dataset(data))
                step(it)  # trace and warm up, untimed
                variants[name] = (lambda _r, step=step, it=it: seconds(
                    lambda: [step(it) for _ in range(args.steps)]) / args.steps)
            times = alternate(variants, args.rounds)
            per_round = ratios(times["with"], times["without"])
            print(f"{replicas} replica(s): without {median(times['without']) * 1e3:.2f} ms, "
                  f"with {median(times['with']) * 1e3:.2f} ms per update; with / without "
                  f"{median(per_round):.3f} (per-round {min(per_round):.3f}.."
                  f"{max(per_round):.3f})", flush=True)


if __name__ == "__main__":
    main()
