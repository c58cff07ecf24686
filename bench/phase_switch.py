"""Cost of a batch-size phase switch in the framework loop, seed-002 CNN on Fashion-MNIST.

    .venv/bin/python bench/phase_switch.py [--examples 20000] [--schedule 128,128,256,256,128]
        [--release_in_background 0]     # compare with destroying the iterator on the main thread
    .venv/bin/python bench/phase_switch.py --smoke   # 512 images, schedule 64,64,128: runs only

Trains one epoch per entry of --schedule with the loop's own pieces (TrainStep over a
per-epoch `distribute_datasets_from_function` pipeline), syncing after every step so each
step is timed. At every epoch boundary the overhead is

    (time from the end of the last step to the end of the first step of the next epoch)
    - (median step time of the next epoch)

i.e. pipeline rebuild + iterator creation + first-batch latency + any retrace. Boundaries where
the batch size changes ("switch") are compared with boundaries where it does not; the loop
rebuilds the pipeline at every epoch anyway (each epoch has its own seeded permutation), so a
switch should cost what any epoch boundary costs. Prints the extra seconds per switch, the
retrace count (traces - 1), and the switch cost as a fraction of an epoch (of the measured
subset epoch, and extrapolated to a full 60k-image epoch from the measured time per sample).
"""

from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from timing import bench_parser, median, session, smoke  # noqa: E402

from keras_largebatch.data import get_source, steps_per_epoch, train_dataset_fn  # noqa: E402
from keras_largebatch.models import build_model  # noqa: E402
from keras_largebatch.schedules.progress import Progress  # noqa: E402
from keras_largebatch.training.inputs import epoch_inputs, release_in_background  # noqa: E402
from keras_largebatch.training.metrics import RunningMetrics  # noqa: E402
from keras_largebatch.training.steps.train_step import TrainStep  # noqa: E402


def main(argv=None) -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--examples", type=int, default=20000)
    parser.add_argument("--schedule", default="128,128,256,256,128")
    parser.add_argument("--release_in_background", type=int, default=1,
                        help="1: retire each epoch's iterator as the loop does; 0: plain del")
    args = smoke(parser.parse_args(argv), examples=512, schedule="64,64,128")
    batches = [int(b) for b in args.schedule.split(",")]
    with session(f"phase switch: seed-002 CNN, {args.examples} images, schedule "
                 f"{args.schedule}, release_in_background={args.release_in_background}"):
        measure(args, batches)


def measure(args, batches: list[int]) -> None:

    source = get_source("fashion_mnist", max_train_examples=args.examples)
    strategy = tf.distribute.MirroredStrategy([tf.config.list_logical_devices("CPU")[0].name])
    with strategy.scope():
        model = build_model("cnn_fashion", input_shape=source.input_shape, num_classes=10)
        opt = keras.optimizers.SGD(0.05, momentum=0.9)
        opt.build(model.trainable_variables)
        metrics = RunningMetrics()
    progress = Progress()
    step = TrainStep(model=model, optimizer=opt, strategy=strategy, progress=progress,
                     metrics=metrics)

    def sync():
        return float(metrics.count.numpy())

    epochs = []  # per epoch: (boundary_seconds, [step seconds], epoch seconds)
    last_end = None
    for epoch, batch in enumerate(batches):
        steps = steps_per_epoch(source.num_train, batch)
        progress.begin_epoch(epoch, steps)
        start = time.perf_counter()
        inputs = epoch_inputs(strategy, train_dataset_fn(
            source, global_batch_size=batch, epoch=epoch, seed=0))
        times, t = [], start
        for _ in range(steps):
            step(inputs["iterator"])
            sync()
            now = time.perf_counter()
            times.append(now - t)
            t = now
        if args.release_in_background:
            release_in_background(inputs)  # as the loop does
        else:
            del inputs
        boundary = (times[0] + (start - last_end)) if last_end is not None else None
        epochs.append((boundary, times, t - start))
        last_end = t
        print(f"epoch {epoch + 1}: batch {batch}, {steps} steps, {t - start:.2f} s, median step "
              f"{median(times) * 1e3:.1f} ms, first step {times[0] * 1e3:.1f} ms",
              flush=True)

    switch, same = [], []
    for e in range(1, len(batches)):
        boundary, times, _ = epochs[e]
        overhead = boundary - median(times[1:])
        (switch if batches[e] != batches[e - 1] else same).append(overhead)
    epoch_time = median(s for _, _, s in epochs)
    per_sample = median(s / (len(ts) * b) for (_, ts, s), b in zip(epochs, batches))
    full_epoch = per_sample * 60000
    mean_switch = statistics.mean(switch) if switch else float("nan")
    mean_same = statistics.mean(same) if same else float("nan")
    print(f"boundary overhead: switch {mean_switch * 1e3:.1f} ms (n={len(switch)}), "
          f"same batch {mean_same * 1e3:.1f} ms (n={len(same)}); extra per switch vs a plain "
          f"epoch boundary {(mean_switch - mean_same) * 1e3:.1f} ms")
    print(f"retraces: {step.trace_count - 1}; switch cost = {mean_switch / epoch_time:.2%} of "
          f"the measured {args.examples}-image epoch, {mean_switch / full_epoch:.2%} of a full "
          f"60k-image epoch (extrapolated, {full_epoch:.1f} s)")


if __name__ == "__main__":
    main()
