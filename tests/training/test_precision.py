"""Mixed precision (`train.precision`): each float32-sensitive piece against its float32 result.

Tolerances: bfloat16 keeps 8 significant bits (unit round-off u = 2^-8 = 3.9e-3), float16 11
bits (u = 2^-11 = 4.9e-4). One update's relative error (norm over all weights) compounds the
round-off of the forward and backward passes through three layers: measured 1.8e-2 (4.6 u) for
bfloat16 and 4.3e-3 (8.8 u: its products round to float16 before the float32 accumulation)
for float16 on this batch, so the bounds are about twice that: 4e-2 and 1e-2. Ratios of norms
(LARS) and BA's mu / sigma are held to the update's bound; quantities computed in float32
from 16-bit inputs (BN statistics, the loss of float32 logits) to a few u of bfloat16.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_largebatch.errors import UserInputError
from keras_largebatch.layers import GhostBatchNormalization
from keras_largebatch.models import build_model
from keras_largebatch.optimizers import LARS, BAMomentum
from keras_largebatch.optimizers.ba_model import ba_chunk_step
from keras_largebatch.schedules import AdaBatch, fit_with_batch_schedule
from keras_largebatch.schedules.progress import Progress
from keras_largebatch.training.loop import train
from keras_largebatch.training.metrics import RunningMetrics
from keras_largebatch.training.precision import float32_outputs, precision_policy
from keras_largebatch.training.steps.train_step import TrainStep, per_example_loss_fn

from .helpers import fashion_subset

SMALL = {"filters": (8, 16), "dropout": 0.0}
TOLERANCE = {"mixed_bfloat16": 4e-2, "mixed_float16": 1e-2}


def _batch(n=64):
    x, y = fashion_subset().train_arrays
    images = (x[:n].astype("float32") / 255.0 - 0.286) / 0.353
    return images.reshape(n, 28, 28, 1), y[:n].astype("int32")


@pytest.fixture(scope="module")
def initial_weights():
    keras.utils.set_random_seed(0)
    return build_model("cnn_fashion", input_shape=(28, 28, 1), num_classes=10,
                       **SMALL).get_weights()


def _model(precision, weights):
    with precision_policy(precision):
        model = float32_outputs(build_model("cnn_fashion", input_shape=(28, 28, 1),
                                            num_classes=10, **SMALL))
    model.set_weights(weights)
    return model


def _relative(a, b):
    a = np.concatenate([np.ravel(t) for t in a])
    b = np.concatenate([np.ravel(t) for t in b])
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def _one_update(precision, weights, make_optimizer, strategy):
    """(weight change of one TrainStep update, the optimizer) on a fixed batch of 64."""
    with precision_policy(precision), strategy.scope():
        model = _model(precision, weights)
        optimizer = make_optimizer()
        if precision == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
        metrics = RunningMetrics()
    step = TrainStep(model=model, optimizer=optimizer, strategy=strategy, progress=Progress(),
                     metrics=metrics)
    x, y = _batch()
    data = tf.data.Dataset.from_tensors((x, y))
    step(iter(strategy.experimental_distribute_dataset(data)))
    assert model.outputs[0].dtype == "float32"
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    return [w1 - w0 for w1, w0 in zip(model.get_weights(), weights)], optimizer


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_update_matches_float32_and_float16_scales_the_loss(precision, initial_weights,
                                                            one_cpu_strategy):
    ref, _ = _one_update("float32", initial_weights, lambda: keras.optimizers.SGD(0.1),
                         one_cpu_strategy)
    delta, opt = _one_update(precision, initial_weights, lambda: keras.optimizers.SGD(0.1),
                             one_cpu_strategy)
    assert _relative(delta, ref) < TOLERANCE[precision]
    if precision == "mixed_float16":  # the loss was scaled, the update unscaled
        assert float(opt.dynamic_scale.numpy()) == 2.0 ** 15
    assert keras.mixed_precision.global_policy().name == "float32"


def test_lars_trust_ratios_are_float32_and_match(initial_weights, one_cpu_strategy):
    ratios = {}
    for precision in ("float32", "mixed_bfloat16"):
        _, opt = _one_update(precision, initial_weights,  # kernels only, as MLPerf LARS
                             lambda: LARS(1.0, momentum=0.9, exclude_rank_1=True),
                             one_cpu_strategy)
        ratios[precision] = {k: v.numpy() for k, v in opt.trust_ratios().items()}
        assert all(v.dtype == "float32" for v in opt.trust_ratios().values())
    ref, mixed = ratios["float32"], ratios["mixed_bfloat16"]
    assert ref.keys() == mixed.keys() and len(ref) == 3  # conv1, conv2, logits kernels
    for key in ref:  # a ratio of two norms: each within the gradient's relative error
        np.testing.assert_allclose(mixed[key], ref[key], rtol=TOLERANCE["mixed_bfloat16"])


@pytest.mark.parametrize("covariance", ["projection", "diagonal"])
def test_ba_statistics_match_float32(covariance, initial_weights):
    x, y = _batch(32)
    out = {}
    for precision in ("float32", "mixed_bfloat16"):
        with precision_policy(precision):
            model = _model(precision, initial_weights)
            opt = BAMomentum(learning_rate=0.05, min_increment=32, covariance=covariance)
            opt.build(model.trainable_variables)
            step = tf.function(lambda a, b, m=model, o=opt: ba_chunk_step(
                m, o, per_example_loss_fn(), a, b))
            out[precision] = {k: float(v) for k, v in step(x, y).items()
                              if k in ("loss", "mu", "sigma", "s")}
    ref, mixed = out["float32"], out["mixed_bfloat16"]
    # Without float32 passes for its finite difference, "projection"'s sigma was 4.7% off.
    for key in ("mu", "sigma"):
        assert mixed[key] == pytest.approx(ref[key], rel=TOLERANCE["mixed_bfloat16"]), key
    # The loss: float32 cross-entropy of logits that are within bfloat16 round-off.
    assert mixed["s"] == pytest.approx(ref["s"], rel=4e-3)


def test_ghost_bn_statistics_are_float32(initial_weights):
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(64, 5)).astype("float32")
    moving = {}
    for precision in ("float32", "mixed_bfloat16"):
        with precision_policy(precision):
            layer = GhostBatchNormalization(virtual_batch_size=16, momentum=0.5)
            out = layer(x, training=True)
        assert layer.moving_mean.dtype == "float32" and layer.moving_variance.dtype == "float32"
        assert out.dtype == ("float32" if precision == "float32" else "bfloat16")
        moving[precision] = [layer.moving_mean.numpy(), layer.moving_variance.numpy()]
    # Statistics in float32 of inputs rounded to bfloat16 (relative 2^-9): means of values
    # ~2 +- 3 and variances ~9 move by that relative amount at most.
    for mixed, ref in zip(moving["mixed_bfloat16"], moving["float32"]):
        np.testing.assert_allclose(mixed, ref, rtol=4e-3, atol=4e-3)


def test_run_builds_under_the_policy_and_restores_it(tmp_path, one_cpu_strategy):
    results = train(run_dir=str(tmp_path), dataset=fashion_subset(), model_options=SMALL,
                    epochs=1, batch_size=128, precision="mixed_bfloat16",
                    strategy=one_cpu_strategy, verbose=False)
    assert keras.mixed_precision.global_policy().name == "float32"
    assert results["final_test_accuracy"] > 0.5  # chance 0.1
    model = keras.saving.load_model(tmp_path / "model.keras")
    assert model.get_layer("conv1").dtype_policy.name == "mixed_bfloat16"
    assert model.outputs[0].dtype == "float32"
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "completed"


def test_bad_precision_and_ba_float16_are_one_line_errors(tmp_path, one_cpu_strategy):
    with pytest.raises(UserInputError, match="train.precision"):
        train(run_dir=str(tmp_path), precision="bfloat16", dry_run=True)
    with pytest.raises(UserInputError, match="BA-Momentum"):
        train(run_dir=str(tmp_path), dataset=fashion_subset(), optimizer="ba_momentum",
              batch_size=32, precision="mixed_float16", strategy=one_cpu_strategy,
              dry_run=True, verbose=False)
    assert keras.mixed_precision.global_policy().name == "float32"


def test_fit_with_batch_schedule_under_a_user_policy():
    """The model.fit path: the user sets the policy before building (precision.py docstring)."""
    x, y = _batch(256)
    with precision_policy("mixed_bfloat16"):
        model = float32_outputs(build_model("cnn_fashion", input_shape=(28, 28, 1),
                                            num_classes=10, **SMALL))
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = fit_with_batch_schedule(
            model, lambda b: tf.data.Dataset.from_tensor_slices((x, y)).batch(
                b, drop_remainder=True), AdaBatch(32, 1), epochs=2, verbose=0)
    assert model.get_layer("conv1").compute_dtype == "bfloat16"
    assert len(history.history["loss"]) == 2 and all(np.isfinite(history.history["loss"]))


@pytest.mark.slow  # two real CLI runs and a kill each: 35-57 s on 2 busy cores
@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_cli_resume_after_a_kill_is_bitwise_under_mixed_precision(tmp_path, precision):
    """SIGKILL mid-epoch, rerun the same command: the same final weights as without the kill
    (float16: the dynamic loss scale is checkpointed with the optimizer)."""
    from ..cli import TINY, run_cli

    b = "--gin_bindings="
    config = [*TINY, b + "fashion_mnist.max_train_examples = 6000", b + "train.epochs = 2",
              b + "fashion_mnist.max_test_examples = 1000", b + "train.batch_size = 500",
              b + f"train.precision = '{precision}'", b + "cnn_fashion.dropout = 0.25",
              b + "train.checkpoint_every_steps = 5", b + "train.deterministic = True"]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    proc = run_cli(*config, f"--run_dir={killed}", faults=["kill_at_step=17"])
    assert proc.returncode == -9, proc.stderr[-2000:]   # epoch 2 of 12 + 12 updates
    for run_dir in (killed, whole):
        proc = run_cli(*config, f"--run_dir={run_dir}")
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert ("at epoch 2, step 3" in proc.stdout) == (run_dir == killed)  # ckpt-15
    sha = [json.loads((d / "results.json").read_text())["weights_sha256"] for d in (killed, whole)]
    assert sha[0] == sha[1]
