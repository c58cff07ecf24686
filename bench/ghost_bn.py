"""Ghost BN vs Keras BatchNormalization: training images/s on ResNet-20, real Fashion-MNIST.

    .venv/bin/python bench/ghost_bn.py [--batch 128] [--virtual-batch 32] [--steps 20]
                                       [--rounds 3] [--static-batch] [--jit]
                                       [--baseline REV]
    .venv/bin/python bench/ghost_bn.py --smoke    # ResNet-8, batch 16, 1 step: runs, no number

Two ResNet-20s (`build_model("resnet20", bn_batch_size=None | virtual_batch)`, 28x28x1 inputs,
10 classes) train with SGD (momentum 0.9) on the same real Fashion-MNIST images, read from the
IDX files in /usr/share/datasets/fashion-mnist with numpy/gzip and normalised. The train step is
a `tf.function` with a `None` batch dimension, as in the framework loop (so the ghost layer
takes its in-graph `tf.cond` path); `--static-batch` traces with a fixed batch instead, as
`model.fit` on a `drop_remainder=True` dataset would. Rounds alternate between the two models
(bench/timing.py's `alternate`) so both see the same machine load; the first (tracing) call of
each is not timed. Prints the median images/s of each and the ratio ghost / BN (goal >= 0.95),
with the CPU's AVX flags and the load average before and after. `--jit` compiles each step with
XLA (`tf.function(jit_compile=True)`). `--baseline REV` adds a third model whose ghost layers
are the GhostBatchNormalization of git revision REV (its module read with `git show`, loaded
under another name), timed in the same rounds: before / after side by side. Not a test.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import platform
import subprocess
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from timing import alternate, bench_parser, median, seconds, session, smoke  # noqa: E402

from keras_largebatch.layers import GhostBatchNormalization  # noqa: E402
from keras_largebatch.models import build_model  # noqa: E402

DATA_DIR = "/usr/share/datasets/fashion-mnist"


def read_idx(path: str) -> np.ndarray:
    """An IDX file (big-endian header: magic with dtype/ndim, then the dimensions)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_train(n: int) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(f"{DATA_DIR}/train-images-idx3-ubyte.gz")[:n].astype(np.float32) / 255.0
    labels = read_idx(f"{DATA_DIR}/train-labels-idx1-ubyte.gz")[:n].astype(np.int32)
    images = (images - images.mean()) / images.std()
    return images[..., None], labels


def baseline_layer_class(rev: str):
    """GhostBatchNormalization as of git revision `rev`, loaded as a separate module (not
    registered for serialization, so it does not clash with the current class)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    source = subprocess.run(
        ["git", "show", f"{rev}:keras_largebatch/layers/ghost_batch_norm.py"], cwd=root,
        check=True, capture_output=True, text=True).stdout
    source = source.replace('@keras.saving.register_keras_serializable(package="keras_largebatch")',
                            "")
    folder = tempfile.mkdtemp(prefix="ghost_bn_baseline_")
    path = os.path.join(folder, "ghost_bn_baseline.py")
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("ghost_bn_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.GhostBatchNormalization


def with_layer_class(model, cls):
    """A clone of `model` whose ghost BN layers are instances of `cls`, same weights."""
    def clone(layer):
        if isinstance(layer, GhostBatchNormalization):
            return cls.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def make_step(model, optimizer, batch: int | None, jit: bool = False):
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function(
        jit_compile=jit,
        input_signature=[
            tf.TensorSpec([batch, 28, 28, 1], tf.float32),
            tf.TensorSpec([batch], tf.int32),
        ]
    )
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return step


def main(argv=None) -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--model", default="resnet20", help="a model with BN (--smoke: resnet8)")
    parser.add_argument("--virtual-batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--static-batch", action="store_true")
    parser.add_argument("--jit", action="store_true", help="XLA-compile each train step")
    parser.add_argument("--baseline", default=None,
                        help="git revision whose ghost BN layer is timed alongside")
    args = smoke(parser.parse_args(argv), batch=16, virtual_batch=8, steps=1, rounds=1,
                 model="resnet8")
    with session(f"ghost BN vs Keras BN, {args.model}, batch {args.batch}"):
        measure(args)


def measure(args) -> None:
    x, y = load_train(args.batch * args.steps)
    batches = [
        (tf.constant(x[i : i + args.batch]), tf.constant(y[i : i + args.batch]))
        for i in range(0, len(x), args.batch)
    ]
    sides = {}
    variants = [("keras_bn", None, None), ("ghost_bn", args.virtual_batch, None)]
    if args.baseline:
        variants.append((f"ghost_bn@{args.baseline}", args.virtual_batch,
                         baseline_layer_class(args.baseline)))
    for name, bn_batch, layer_class in variants:
        keras.utils.set_random_seed(0)
        model = build_model(
            args.model, input_shape=(28, 28, 1), num_classes=10, bn_batch_size=bn_batch
        )
        if layer_class is not None:
            model = with_layer_class(model, layer_class)
        optimizer = keras.optimizers.SGD(learning_rate=0.05, momentum=0.9)
        optimizer.build(model.trainable_variables)
        step = make_step(model, optimizer, args.batch if args.static_batch else None,
                         args.jit)
        float(step(*batches[0]))  # trace + warm up, not timed
        sides[name] = step

    def steps_then_sync(step):
        for xb, yb in batches:
            loss = step(xb, yb)
        float(loss)

    rates = alternate({name: lambda _r, step=step: len(batches) * args.batch / seconds(
        lambda: steps_then_sync(step)) for name, step in sides.items()}, args.rounds)

    print(
        f"machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        f"GPUs: {len(tf.config.list_physical_devices('GPU'))}, TF {tf.__version__}, "
        f"Keras {keras.__version__}"
    )
    print(
        f"{args.model}, Fashion-MNIST 28x28, batch {args.batch}, virtual batch "
        f"{args.virtual_batch} ({args.batch // args.virtual_batch} groups), "
        f"{'static' if args.static_batch else 'dynamic (None)'} batch dim, "
        f"{'XLA' if args.jit else 'no XLA'}, "
        f"{args.steps} steps x {args.rounds} rounds"
    )
    for name, values in rates.items():
        rounded = [round(v, 1) for v in values]
        print(f"{name:9s} images/s: median {median(values):7.1f}  rounds {rounded}")
    keras_rate = median(rates["keras_bn"])
    for name in rates:
        if name != "keras_bn":
            ratio = median(rates[name]) / keras_rate
            print(f"ratio {name}/keras_bn: {ratio:.3f} (goal >= 0.95)")


if __name__ == "__main__":
    main()
