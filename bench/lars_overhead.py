"""Step-time overhead of LARS over Keras SGD(momentum=0.9), same model, same batch.

Run (from the repository root):

    .venv/bin/python bench/lars_overhead.py
    .venv/bin/python bench/lars_overhead.py --models cnn_fashion --rounds 8 --steps 30
    .venv/bin/python bench/lars_overhead.py --smoke     # CNN, 1 round of 1 step: runs, no number

For each model (the seed-002 Fashion-MNIST CNN and ResNet-20, on real Fashion-MNIST training
images, global batch 128) two copies start from the same weights, one with
`keras.optimizers.SGD(momentum=0.9)` and one with `LARS(momentum=0.9, weight_decay=5e-4)`. Each
has its own compiled train step (forward, loss, gradient, `optimizer.apply_gradients`). After
one untimed warm-up round each, the two alternate for `--rounds` rounds of `--steps` steps
(order A B, then B A, ...) so both see the same machine load (bench/timing.py's `alternate`);
the batches cycle through the first `--batches` batches of the training set, already in memory,
so no input-pipeline time is measured.

Printed: median images/s of each optimizer and the LARS/SGD step-time ratio (median of
the per-round ratios, with their range). On a shared, busy machine the per-round ratio
is noisy, so the same alternation is also run on `apply_gradients` alone (fixed
gradients of one real batch): the update-only time of each optimizer and the step-time
ratio it implies, 1 + (LARS update - SGD update) / SGD step. The issue's goal is a ratio
<= 1.05.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from timing import alternate, bench_parser, median, ratios, seconds, session, smoke  # noqa: E402

from keras_largebatch.data.sources import fashion_mnist  # noqa: E402
from keras_largebatch.models import build_model, model_names  # noqa: E402
from keras_largebatch.optimizers import LARS  # noqa: E402

DEFAULT_MODELS = ("cnn_fashion", "resnet20")
MODEL_OPTIONS = {"cnn_fashion": {"dropout": 0.0}}


def real_batches(batch_size: int, num_batches: int) -> list[tuple[tf.Tensor, tf.Tensor]]:
    """The first `num_batches` batches of real Fashion-MNIST training images."""
    source = fashion_mnist()
    images, labels = source.train_arrays
    n = batch_size * num_batches
    x = (images[:n].astype("float32") / 255.0 - source.mean[0]) / source.std[0]
    y = labels[:n]
    return [
        (tf.constant(x[i : i + batch_size]), tf.constant(y[i : i + batch_size]))
        for i in range(0, n, batch_size)
    ]


def make_step(model: keras.Model, optimizer: keras.optimizers.Optimizer, jit: bool):
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function(jit_compile=jit)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    return step


def make_apply_only(model: keras.Model, optimizer, batch):
    """A compiled `apply_gradients` on fixed gradients of one real batch."""
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    x, y = batch
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    grads = tape.gradient(loss, model.trainable_variables)

    @tf.function
    def apply(x, y):
        del x, y
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return optimizer.iterations

    return apply


def run_round(step, batches, steps: int) -> float:
    """Seconds for `steps` train steps (synchronised on the last loss)."""
    def steps_then_sync():
        loss = None
        for i in range(steps):
            x, y = batches[i % len(batches)]
            loss = step(x, y)
        float(loss)

    return seconds(steps_then_sync)


def bench_model(name: str, batches, *, rounds: int, steps: int, jit: bool) -> dict:
    x0 = batches[0][0]
    keras.utils.set_random_seed(0)
    options = MODEL_OPTIONS.get(name, {})
    reference = build_model(name, input_shape=tuple(x0.shape[1:]), num_classes=10, **options)
    optimizers = {
        "sgd": keras.optimizers.SGD(learning_rate=0.01, momentum=0.9),
        "lars": LARS(learning_rate=1.0, momentum=0.9, weight_decay=5e-4),
    }
    step_fns, apply_fns = {}, {}
    for key, optimizer in optimizers.items():
        model = build_model(name, input_shape=tuple(x0.shape[1:]), num_classes=10, **options)
        model.set_weights(reference.get_weights())
        step_fns[key] = make_step(model, optimizer, jit)
        run_round(step_fns[key], batches, 2)  # trace + warm up
        apply_fns[key] = make_apply_only(model, optimizer, batches[0])
        run_round(apply_fns[key], batches, 2)
    step_times = alternate_rounds(step_fns, batches, rounds=rounds, steps=steps)
    apply_times = alternate_rounds(apply_fns, batches, rounds=rounds, steps=steps)
    per_round = ratios(step_times["lars"], step_times["sgd"])
    step_s = {key: median(t) / steps for key, t in step_times.items()}
    apply_s = {key: median(t) / steps for key, t in apply_times.items()}
    return {
        "images_per_s": {key: int(x0.shape[0]) / t for key, t in step_s.items()},
        "ratio": median(per_round),
        "ratio_range": (min(per_round), max(per_round)),
        "apply_ms": {key: 1e3 * t for key, t in apply_s.items()},
        # The step-time ratio implied by the difference in update-only cost.
        "implied_ratio": 1 + (apply_s["lars"] - apply_s["sgd"]) / step_s["sgd"],
        "num_variables": len(reference.trainable_variables),
    }


def alternate_rounds(fns: dict, batches, *, rounds: int, steps: int) -> dict:
    """Per-round seconds of each fn, alternating A B, B A, ... between rounds."""
    return alternate({key: lambda _r, fn=fn: run_round(fn, batches, steps)
                      for key, fn in fns.items()}, rounds)


def main(argv=None) -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=10, help="train steps per round")
    parser.add_argument("--batches", type=int, default=16, help="distinct batches")
    parser.add_argument("--jit_compile", action="store_true")
    args = smoke(parser.parse_args(argv), models=["cnn_fashion"], batch_size=16, rounds=1,
                 steps=1, batches=2)

    batches = real_batches(args.batch_size, args.batches)
    with session(
        f"GPUs: {len(tf.config.list_physical_devices('GPU'))}; TF {tf.__version__}, "
        f"Keras {keras.__version__}; batch {args.batch_size}, {args.rounds} rounds x "
        f"{args.steps} steps, jit_compile={args.jit_compile}"
    ):
        report(args, batches)


def report(args, batches) -> None:
    for name in args.models:
        if name not in model_names():
            print(f"{name}: not in the model registry, skipped")
            continue
        result = bench_model(
            name, batches, rounds=args.rounds, steps=args.steps, jit=args.jit_compile
        )
        ips = result["images_per_s"]
        low, high = result["ratio_range"]
        print(
            f"{name:12s} ({result['num_variables']} variables): "
            f"SGD {ips['sgd']:7.0f} img/s  LARS {ips['lars']:7.0f} img/s  "
            f"LARS/SGD step time {result['ratio']:.3f} "
            f"(per-round {low:.3f}..{high:.3f})\n{'':12s} apply_gradients alone: "
            f"SGD {result['apply_ms']['sgd']:.2f} ms, LARS {result['apply_ms']['lars']:.2f} "
            f"ms -> implied step-time ratio {result['implied_ratio']:.3f}"
        )


if __name__ == "__main__":
    main()
