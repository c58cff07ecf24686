"""`train.jit_compile = True` (issue 28): every shipped optimizer, model and layer compiles with
XLA and trains to the weights of the uncompiled run; what cannot compile is refused up front.

The reference is the same run without XLA (float tolerance: XLA fuses and reorders float32
sums). Models are the registry's, at the smallest sizes the tests use; the big networks
(alexnet_bn, vgg19_bn, resnet50: 20-25M parameters, 1-2 min of XLA compilation each here) are
covered layer class by layer class: every class they use is compiled in a model trained here.
"""

from pathlib import Path

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_largebatch import config
from keras_largebatch.errors import UserInputError
from keras_largebatch.layers import GhostBatchNormalization
from keras_largebatch.models import build_model, model_names
from keras_largebatch.training.loop import train
from keras_largebatch.training.optimizer_factory import OPTIMIZERS

from .helpers import fashion_subset

REPO = Path(__file__).resolve().parents[2]
SMALL_CNN = {"filters": (4, 8), "dropout": 0.0}
# model -> options of the trained case (ghost BN wherever the model has BN)
MODELS = {
    "cnn_fashion": SMALL_CNN,
    "resnet8": {"bn_batch_size": 6},
    "alexnet_reduced": {"batch_norm": "all", "bn_batch_size": 6},
}
NOT_JIT = ("ba_momentum", "ba_sgd")  # refused, test below


def final_weights(tmp_path, name, **kwargs) -> list[np.ndarray]:
    run_dir = tmp_path / name
    settings = dict(dataset=fashion_subset(120, 50), model="cnn_fashion", model_options=SMALL_CNN,
                    optimizer="momentum", learning_rate=0.02, batch_size=20, epochs=1,
                    verbose=False, checkpoint_every_steps=None)
    train(run_dir=str(run_dir), **{**settings, **kwargs})
    return keras.models.load_model(run_dir / "model.keras").get_weights()


def assert_same_weights(a, b, tol=1e-4):
    """Per variable ||a - b|| / ||a|| < tol."""
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        scale = max(float(np.linalg.norm(x)), 1e-6)
        assert float(np.linalg.norm(x - y)) / scale < tol


def model_distance(a, b) -> float:
    """||a - b|| / ||a|| over all the model's weights at once (as tests/training/test_step.py
    compares replicas: a per-variable ratio on a near-zero BN beta is round-off over zero)."""
    diff = np.sqrt(sum(float(np.sum((x - y) ** 2)) for x, y in zip(a, b, strict=True)))
    return diff / np.sqrt(sum(float(np.sum(x ** 2)) for x in a))


@pytest.mark.parametrize("optimizer", [n for n in sorted(OPTIMIZERS) if n not in NOT_JIT])
def test_every_optimizer_under_xla_equals_the_uncompiled_run(optimizer, tmp_path,
                                                             one_cpu_strategy):
    # 6 updates of batch 20 on the small CNN (max pooling, no BN)
    runs = [final_weights(tmp_path, f"jit{jit}", optimizer=optimizer, jit_compile=jit,
                          strategy=one_cpu_strategy) for jit in (False, True)]
    assert_same_weights(*runs)


def test_alexnet_with_ghost_bn_gradients_under_xla():
    # One forward / backward as TrainStep compiles it, batch 20 = 6 + 6 + 6 + 2 (remainder).
    # A gradient, not a run: its 3x3 max pools see ties, which XLA may route elsewhere, and
    # a few updates amplify that (measured: 2.5e-4 relative per variable on one step here;
    # with Keras' own BN 4.5e-2, the layer unchanged: not a float tolerance).
    source = fashion_subset(120, 50)
    x = source.train_arrays[0][:20].astype("float32").reshape(20, 28, 28, 1) / 255.0
    y = source.train_arrays[1][:20].astype("int32")
    keras.utils.set_random_seed(0)
    model = build_model("alexnet_reduced", input_shape=(28, 28, 1), num_classes=10,
                        **MODELS["alexnet_reduced"])
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def grads(images, labels):
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model(images, training=True))
        return tape.gradient(loss, model.trainable_variables)

    spec = [tf.TensorSpec([None, 28, 28, 1]), tf.TensorSpec([None], tf.int32)]
    graph, xla = (tf.function(grads, jit_compile=jit, input_signature=spec)(x, y)
                  for jit in (False, True))
    assert_same_weights([g.numpy() for g in graph], [g.numpy() for g in xla], tol=1e-3)


def test_dropout_under_xla_drops_at_its_rate():
    # XLA lowers the stateless RNG differently, so compiled dropout draws other masks than the
    # uncompiled run (a run with dropout takes another, equally valid, random trajectory):
    # checked against Keras' definition instead (rate zeroed, the rest scaled 1 / (1 - rate)).
    layer = keras.layers.Dropout(0.25, seed=3)
    out = tf.function(lambda t: layer(t, training=True), jit_compile=True)(tf.ones([200_000]))
    out = out.numpy()
    assert abs(float(np.mean(out == 0.0)) - 0.25) < 0.005
    np.testing.assert_allclose(out[out != 0.0], 1.0 / 0.75, rtol=1e-6)


def resnet50_extras():
    """The layer classes only ResNet-50 uses, in a model small enough to compile in seconds."""
    inputs = keras.Input((8, 8, 2))
    x = keras.layers.ZeroPadding2D(1)(inputs)
    x = keras.layers.Conv2D(3, 3)(x)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x))


def test_resnet50s_own_layer_classes_under_xla():
    keras.utils.set_random_seed(0)
    model = resnet50_extras()
    x = np.random.RandomState(0).normal(size=(4, 8, 8, 2)).astype("float32")

    def grads(images):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(model(images, training=True)))
        return tape.gradient(loss, model.trainable_variables)

    graph, xla = (tf.function(grads, jit_compile=jit)(x) for jit in (False, True))
    assert_same_weights([g.numpy() for g in graph], [g.numpy() for g in xla], tol=1e-5)


def test_every_layer_class_of_every_shipped_model_is_covered():
    # Dropout and ResNet-50's extras: tests above
    trained = {keras.layers.Dropout} | layer_classes(resnet50_extras())
    for name, options in MODELS.items():
        trained |= layer_classes(build_model(name, input_shape=(28, 28, 1), num_classes=10,
                                             **options))
    for name in model_names():
        shape = (32, 32, 3) if name == "resnet50" else (28, 28, 1)
        options = {"bn_batch_size": 6} if name not in ("cnn_fashion", "alexnet_reduced") else {}
        model = build_model(name, input_shape=shape, num_classes=10, **options)
        assert layer_classes(model) <= trained, (name, layer_classes(model) - trained)
    assert GhostBatchNormalization in trained


def layer_classes(model) -> set:
    return {type(layer) for layer in model._flatten_layers(include_self=False)}  # noqa: SLF001


@pytest.fixture
def _gin():
    config.register_configurables()
    gin.clear_config()
    gin.add_config_file_search_path(str(REPO))
    yield
    gin.clear_config()


@pytest.mark.usefixtures("_gin")
def test_the_loop_from_a_gin_config_on_two_replicas(tmp_path, two_cpu_strategy):
    # gin/tests/jit_ghost_bn.gin: ResNet-8, ghost BN of 6, per-replica batch 10 = 6 + 4;
    # deterministic, which XLA allows for a model without max pooling.
    weights = []
    for jit in (True, False):
        gin.clear_config()
        gin.parse_config_files_and_bindings([str(REPO / "gin/tests/jit_ghost_bn.gin")],
                                            [f"train.jit_compile = {jit}",
                                             "train.deterministic = True"])
        configured = config.register_configurables()
        run_dir = tmp_path / f"jit{jit}"
        results = configured.train(components=configured.components, run_dir=str(run_dir),
                                   strategy=two_cpu_strategy, verbose=False)
        assert results["trace_count"] == 1
        weights.append(keras.models.load_model(run_dir / "model.keras").get_weights())
    # XLA reorders float32 sums; BN over groups of 6 and 4 samples amplifies that over the
    # updates (measured, whole model: 1.4e-5 after these 3 updates, 7.0e-4 after 10; per
    # variable up to 3e-2 after 10, on a BN beta of norm 0.04)
    distance = model_distance(*weights)
    print(f"jit vs uncompiled, whole model: {distance:.2e}")
    assert distance < 2e-4


@pytest.mark.parametrize("kwargs, needle", [
    ({"optimizer": "ba_momentum", "batch_size": 32}, "optimizer 'ba_momentum'"),
    ({"optimizer": "ba_sgd", "batch_size": 32}, "optimizer 'ba_momentum'"),
    ({"deterministic": True}, "train.deterministic = True"),
])
def test_what_xla_cannot_compile_is_refused_before_anything_is_written(kwargs, needle, tmp_path,
                                                                      one_cpu_strategy):
    run_dir = tmp_path / "run"
    with pytest.raises(UserInputError) as info:
        train(run_dir=str(run_dir), dataset=fashion_subset(), model="cnn_fashion",
              model_options=SMALL_CNN, epochs=1, jit_compile=True, strategy=one_cpu_strategy,
              verbose=False, **{"batch_size": 20, **kwargs})
    message = str(info.value)
    assert needle in message and "train.jit_compile = True" in message and "\n" not in message
    assert not run_dir.exists()



def test_bamodel_never_asks_keras_for_xla_on_tensorflow():
    """Keras' jit_compile="auto" turns XLA on where a GPU is; on TensorFlow BAModel must stay
    out of it (its non-finite-loss assert would be dropped; on JAX its step is jitted by design:
    tests/optimizers/test_ba_jax.py). Keras decides through model_supports_jit."""
    import keras
    from keras.src.trainers.trainer import model_supports_jit

    from keras_largebatch.optimizers import BAModel

    net = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    assert model_supports_jit(net) and not model_supports_jit(BAModel(net))
