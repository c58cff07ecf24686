"""What exact resume costs: checkpoint save/restore time and the divergence checks, per model,
next to one training update of the same model.

Run (from the repository root):

    .venv/bin/python bench/checkpoint_overhead.py
    .venv/bin/python bench/checkpoint_overhead.py --models cnn_fashion --repeats 20
    .venv/bin/python bench/checkpoint_overhead.py --smoke   # CNN, batch 16, 1 repeat: runs only

For each model (real Fashion-MNIST shapes, momentum SGD, global batch 128, one replica) the
framework's `Checkpointer` is built as the loop builds it (model, optimizer slots, Progress,
RunningMetrics, dropout RNG, RunState) and the script times, as medians over `--repeats`:
one `train_step` update; one checkpoint save (`CheckpointManager.save`, atomic, into a temporary
directory on the same disk as /tmp); one restore; the finite-weights check run before every save;
the loss check run every `log_every_steps` updates (a host read of two variables).

Printed per model: parameters, checkpoint size, and the times in ms, plus the save time in
"updates' worth", i.e. what `train.checkpoint_every_steps = N` costs: save / (N x update).
"""

from __future__ import annotations

import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from timing import bench_parser, median, seconds, session, smoke  # noqa: E402

from keras_largebatch.data.sources import fashion_mnist  # noqa: E402
from keras_largebatch.models import build_model  # noqa: E402
from keras_largebatch.schedules.progress import Progress  # noqa: E402
from keras_largebatch.training.checkpoint import Checkpointer  # noqa: E402
from keras_largebatch.training.divergence import DivergenceGuard  # noqa: E402
from keras_largebatch.training.metrics import RunningMetrics  # noqa: E402
from keras_largebatch.training.optimizer_factory import create_optimizer  # noqa: E402
from keras_largebatch.training.steps.train_step import TrainStep  # noqa: E402


def _median_ms(fn, repeats: int) -> float:
    return 1e3 * median([seconds(fn) for _ in range(repeats)])


def bench(model_name: str, repeats: int, batch: int) -> dict:
    source = fashion_mnist()
    strategy = tf.distribute.MirroredStrategy([tf.config.list_logical_devices("CPU")[0].name])
    progress, guard = Progress(), DivergenceGuard()
    with strategy.scope():
        net = build_model(model_name, input_shape=source.input_shape,
                          num_classes=source.num_classes)
        opt = create_optimizer("momentum", learning_rate=0.01)
        opt.build(net.trainable_variables)
        metrics = RunningMetrics()
    step = TrainStep(model=net, optimizer=opt, strategy=strategy, progress=progress,
                     metrics=metrics)
    x, y = source.train_arrays
    images = (x[:batch].astype(np.float32) / 255.0 - source.mean) / source.std
    data = tf.data.Dataset.from_tensors((images, y[:batch])).repeat()
    iterator = iter(strategy.experimental_distribute_dataset(data))
    progress.begin_epoch(0, 10**6)
    run_dir = tempfile.mkdtemp(prefix="ckpt_bench-")
    try:
        checkpointer = Checkpointer(run_dir=run_dir, model=net, optimizer=opt,
                                    progress=progress, metrics=metrics, strategy=strategy,
                                    chief=True, step=step, keep=2, verbose=False)
        finite_fn = guard.finite_check([*net.variables, *opt.variables])
        step(iterator)  # trace
        update = _median_ms(lambda: (step(iterator), float(metrics.count.numpy())), repeats)
        counter = iter(range(1, 10**6))
        save = _median_ms(lambda: checkpointer.save(next(counter)), repeats)
        latest = checkpointer.latest()
        size = sum(os.path.getsize(p) for p in tf.io.gfile.glob(latest + ".*"))
        restore = _median_ms(lambda: checkpointer.restore_from(latest), repeats)
        finite_fn()  # trace
        finite = _median_ms(finite_fn, repeats)
        loss_check = _median_ms(lambda: guard.check(metrics), repeats)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return {"model": model_name, "params": net.count_params(), "size_mb": size / 2**20,
            "update": update, "save": save, "restore": restore, "finite": finite,
            "loss_check": loss_check}


def main(argv=None) -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--models", nargs="+", default=["cnn_fashion", "resnet20"])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=128)
    args = smoke(parser.parse_args(argv), models=["cnn_fashion"], repeats=1, batch=16)
    with session(f"TF {tf.__version__}, batch {args.batch}, median of {args.repeats}"):
        report(args)


def report(args) -> None:
    print(f"{'model':12s} {'params':>9s} {'ckpt MB':>8s} {'update':>8s} {'save':>8s} "
          f"{'restore':>8s} {'finite':>8s} {'loss chk':>8s}  save/(1000 updates)")
    for name in args.models:
        r = bench(name, args.repeats, args.batch)
        print(f"{r['model']:12s} {r['params']:9d} {r['size_mb']:8.2f} {r['update']:7.1f}ms "
              f"{r['save']:7.1f}ms {r['restore']:7.1f}ms {r['finite']:7.2f}ms "
              f"{r['loss_check']:7.3f}ms  {100 * r['save'] / (1000 * r['update']):.2f}%")


if __name__ == "__main__":
    main()
