"""The library pieces' cost on the current Keras backend: LARS vs SGD, ghost BN vs Keras BN.

    KERAS_BACKEND=jax PYTHONPATH=.jax-packages .venv/bin/python bench/backends.py [--batch 256]
    KERAS_BACKEND=torch python bench/backends.py --data_dir DIR     # where PyTorch is installed
    .venv/bin/python bench/backends.py --smoke     # ResNet-8, batch 16, 1 step, 1 round: runs only
    KERAS_BACKEND=jax PYTHONPATH=.jax-packages .venv/bin/python bench/backends.py --ba_only \
        --ba_chunk 32 --ba_modes diagonal,diagonal_per_example   # BA's diagonal, both paths

Backend-neutral (Keras and NumPy only; no TensorFlow), so it runs on JAX, PyTorch and TensorFlow
alike, on whatever device the backend picks (a GPU if there is one). Data: the real
Fashion-MNIST training images, read from the IDX files in `--data_dir` with gzip/NumPy, scaled
to [0, 1]. Two comparisons, each between two ResNet-20s (`build_model("resnet20")`, or
`--model`; --smoke: resnet8), 28x28x1, 10 classes) that start from the same weights, trained
with plain `model.fit` (the backend's default compilation, e.g. jit on JAX) on the same
`--steps` x `--batch` images:

1. optimizer: `keras.optimizers.SGD(0.1, momentum=0.9)` vs `LARS(0.1, momentum=0.9,
   weight_decay=5e-4)` (every variable adapted, the library default), Keras BN in both;
2. normalisation: Keras `BatchNormalization` vs `GhostBatchNormalization` with
   `--virtual_batch` (the model builders' `bn_batch_size`), SGD momentum in both;
3. BA-Momentum (seed 002; TensorFlow and JAX): the seed-002 CNN (`cnn_fashion`) with SGD
   momentum at batch `--ba_chunk` vs `BAModel` + `BAMomentum(min_increment=--ba_chunk)` in
   each covariance mode, fed chunks of that size: time per sample (BA applies fewer, larger
   updates; its extra cost is the per-example statistics of every chunk). `--ba_modes` picks
   the modes; `diagonal_per_example` times the per-example path of "diagonal".

The first `fit` of each model (compilation) is not timed; then the two alternate for `--rounds`
rounds (A B, then B A, ...: bench/timing.py's `alternate`) so both see the same machine state.
Printed: median images/s of each and the median of the per-round time ratios (B / A; 1.00 = no
cost). Not a test.
"""

from __future__ import annotations

import gzip
import os

import keras
import numpy as np
from timing import alternate, bench_parser, median, ratios, seconds, session, smoke, spread

from keras_largebatch.models import build_model
from keras_largebatch.optimizers import LARS


def read_idx(path: str) -> np.ndarray:
    """An IDX file (big-endian header: magic with dtype/ndim, then the dimensions)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(data_dir: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    x = read_idx(os.path.join(data_dir, "train-images-idx3-ubyte.gz"))[:n]
    y = read_idx(os.path.join(data_dir, "train-labels-idx1-ubyte.gz"))[:n]
    return (x.astype("float32") / 255.0)[..., None], y.astype("int32")


def model(bn_batch_size: int | None, optimizer: keras.optimizers.Optimizer,
          name: str = "resnet20") -> keras.Model:
    keras.utils.set_random_seed(0)  # the same initial weights for both sides of a pair
    m = build_model(name, input_shape=(28, 28, 1), num_classes=10,
                    bn_batch_size=bn_batch_size)
    m.compile(optimizer=optimizer, metrics=["accuracy"],
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return m


def compare(name: str, a: keras.Model, b: keras.Model, x, y, args, batch=None) -> None:
    def fit(m) -> float:
        return seconds(lambda: m.fit(x, y, batch_size=batch or args.batch, epochs=1,
                                     shuffle=False, verbose=0))

    fit(a), fit(b)  # compile (not timed)
    times = alternate({"a": lambda _r: fit(a), "b": lambda _r: fit(b)}, args.rounds)
    per_s = {k: len(x) / median(v) for k, v in times.items()}
    print(f"{name}: {per_s['a']:,.0f} vs {per_s['b']:,.0f} img/s; "
          f"{spread('time ratio', ratios(times['b'], times['a']))}", flush=True)


def main(argv=None) -> None:
    p = bench_parser(__doc__)
    p.add_argument("--data_dir", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--virtual_batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=40, help="steps per timed fit")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--ba_chunk", type=int, default=128, help="BA's min_increment (0: skip)")
    p.add_argument("--ba_modes", default="projection,diagonal",
                   help="BA covariance modes, comma-separated (also: diagonal_per_example)")
    p.add_argument("--model", default="resnet20", help="the network of comparisons 1 and 2")
    p.add_argument("--ba_only", action="store_true", help="comparison 3 only")
    args = smoke(p.parse_args(argv), batch=16, virtual_batch=8, steps=1, rounds=1, ba_chunk=16,
                 model="resnet8")
    x, y = load(args.data_dir, args.steps * args.batch)
    with session(f"backend {keras.backend.backend()}, Keras {keras.__version__}, batch "
                 f"{args.batch}, {args.steps} steps x {args.rounds} rounds"):
        measure(x, y, args)


def measure(x, y, args) -> None:
    sgd = lambda: keras.optimizers.SGD(0.1, momentum=0.9)
    net = args.model
    if args.ba_only:
        compare_ba(x, y, args)
        return
    compare(f"SGD momentum vs LARS (Keras BN, {net})", model(None, sgd(), net),
            model(None, LARS(0.1, momentum=0.9, weight_decay=5e-4), net), x, y, args)
    compare(f"Keras BN vs ghost BN {args.virtual_batch} (SGD momentum, {net})",
            model(None, sgd(), net), model(args.virtual_batch, sgd(), net), x, y, args)
    if args.ba_chunk:
        compare_ba(x, y, args)


def ba_models(mode: str, chunk: int) -> tuple[keras.Model, keras.Model]:
    """(cnn_fashion with SGD momentum, the same weights in a BAModel with BAMomentum);
    mode "diagonal_per_example": "diagonal" from per-example gradients (the path for models
    with layers the batched pass does not cover)."""
    from keras_largebatch.optimizers import BAModel, BAMomentum
    from keras_largebatch.optimizers.ba_covariance import DiagonalCovariance

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    keras.utils.set_random_seed(0)
    plain = build_model("cnn_fashion", input_shape=(28, 28, 1), num_classes=10)
    plain.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss=loss)
    keras.utils.set_random_seed(0)
    ba = BAModel(build_model("cnn_fashion", input_shape=(28, 28, 1), num_classes=10))
    per_example = mode == "diagonal_per_example"
    optimizer = BAMomentum(0.01, momentum=0.9, min_increment=chunk, max_batch_size=4096,
                           covariance="diagonal" if per_example else mode)
    if per_example:
        optimizer._estimator = DiagonalCovariance(per_example=True)  # noqa: SLF001
    ba.compile(optimizer=optimizer, loss=loss)
    return plain, ba


def compare_ba(x, y, args) -> None:
    if keras.backend.backend() not in ("tensorflow", "jax"):
        print(f"BA-Momentum: not on {keras.backend.backend()} (supported: tensorflow, jax)")
        return
    for mode in args.ba_modes.split(","):
        compare(f"SGD momentum vs BA-Momentum {mode} (cnn_fashion, chunks of {args.ba_chunk})",
                *ba_models(mode, args.ba_chunk), x, y, args, batch=args.ba_chunk)


if __name__ == "__main__":
    main()
