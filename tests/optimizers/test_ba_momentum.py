"""BAMomentum (seed 002, Algorithm 1): statistics, decisions, updates, state, replicas, model.fit.

Algorithmic tests use a synthetic least-squares test problem (a Dense layer, Gaussian inputs,
optional label noise); the decision-agreement and model.fit tests use real Fashion-MNIST.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_largebatch.data.sources import fashion_mnist
from keras_largebatch.models import build_model
from keras_largebatch.optimizers.ba_math import optimal_batch_size
from keras_largebatch.optimizers.ba_model import BAModel, ba_chunk_step
from keras_largebatch.optimizers.ba_momentum import BAMomentum

SQUARED = lambda y, p: 0.5 * tf.reduce_sum(tf.square(y - p), axis=-1)  # noqa: E731


def least_squares(noise, n=2048, d=8, seed=0, w_scale=1.0):
    """X ~ N(0, I), y = X w + noise; returns X, Y and the optimal training loss (the floor)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    w = (w_scale * rng.normal(size=(d, 1))).astype("float32")
    y = (x @ w + noise * rng.normal(size=(n, 1))).astype("float32")
    a = np.c_[x, np.ones(n)]
    sol = np.linalg.lstsq(a, y, rcond=None)[0]
    return x, y, float(0.5 * np.mean((a @ sol - y) ** 2))


def linear_model(d, hidden=0, seed=0):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((d,))]
    if hidden:
        layers.append(keras.layers.Dense(hidden, activation="tanh"))
    layers.append(keras.layers.Dense(1))
    return keras.Sequential(layers)


def chunk_runner(model, opt, loss_fn):
    spec = (tf.TensorSpec([None, None], tf.float32), tf.TensorSpec([None, None], tf.float32))
    return tf.function(lambda x, y: ba_chunk_step(model, opt, loss_fn, x, y), input_signature=spec)


def run_epochs(step, x, y, m0, epochs, seed=0):
    rng = np.random.default_rng(seed)
    sizes = []
    for _ in range(epochs):
        perm = rng.permutation(len(x))
        for i in range(0, len(x) - m0 + 1, m0):
            out = step(x[perm[i : i + m0]], y[perm[i : i + m0]])
            if bool(out["did_update"]):
                sizes.append(int(out["batch_size_of_update"]))
    return np.array(sizes)


# -- bad input, serialisation ---------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(learning_rate=0.0), "learning_rate=0.0"),
        (dict(learning_rate=-1.0), "learning_rate=-1.0"),
        (dict(learning_rate=float("nan")), "learning_rate=nan"),
        (dict(momentum=1.0), "momentum=1.0"),
        (dict(momentum=-0.1), "momentum=-0.1"),
        (dict(min_increment=0), "min_increment=0"),
        (dict(min_increment=2.5), "min_increment=2.5"),
        (dict(min_increment=64, max_batch_size=32), "max_batch_size=32"),
        (dict(covariance="exact"), "covariance='exact'"),
        (dict(loss_floor=float("inf")), "loss_floor=inf"),
        (dict(dataset_size=0), "dataset_size=0"),
        (dict(fd_step=0.0), "fd_step=0.0"),
        (dict(weight_decay=0.1), "weight_decay=0.1"),
        (dict(gradient_accumulation_steps=4), "gradient_accumulation_steps=4"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern.replace("(", r"\(").replace(".", r"\.")):
        BAMomentum(**kwargs)


def test_config_and_serialization_round_trip():
    opt = BAMomentum(
        learning_rate=0.02,
        momentum=0.5,
        min_increment=16,
        max_batch_size=256,
        loss_floor=0.1,
        covariance="diagonal",
        dataset_size=1000,
        fd_step=1e-4,
        clipnorm=1.0,
    )
    config = opt.get_config()
    again = BAMomentum.from_config(config)
    assert again.get_config() == config
    blob = json.dumps(keras.optimizers.serialize(opt))
    restored = keras.optimizers.deserialize(json.loads(blob))
    assert isinstance(restored, BAMomentum)
    assert restored.get_config() == config
    for key, value in dict(
        momentum=0.5,
        min_increment=16,
        max_batch_size=256,
        loss_floor=0.1,
        covariance="diagonal",
        dataset_size=1000,
        fd_step=1e-4,
    ).items():
        assert config[key] == value


def test_plain_apply_gradients_is_refused():
    model = linear_model(3)
    opt = BAMomentum()
    opt.build(model.trainable_variables)
    grads = [tf.zeros_like(v) for v in model.trainable_variables]
    with pytest.raises(RuntimeError, match="BAModel"):
        opt.apply_gradients(zip(grads, model.trainable_variables))


def test_full_covariance_refuses_large_models():
    model = build_model("cnn_fashion", input_shape=(28, 28, 1), num_classes=10)
    with pytest.raises(ValueError, match="113162x113162"):
        BAMomentum(covariance="full").build(model.trainable_variables)


# -- statistics against a per-example reference ---------------------------------------------


def reference_gradients(model, loss_fn, x, y):
    """Per-example gradients, one example at a time (the slow reference)."""
    rows, losses = [], []
    for i in range(len(x)):
        with tf.GradientTape() as tape:
            loss = loss_fn(y[i : i + 1], model(x[i : i + 1], training=True))[0]
        grads = tape.gradient(loss, model.trainable_variables)
        rows.append(np.concatenate([g.numpy().ravel() for g in grads]).astype(np.float64))
        losses.append(float(loss))
    return np.array(rows), np.array(losses)


def test_exact_statistics_match_gradients_one_example_at_a_time():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(24, 5)).astype("float32")
    y = rng.integers(0, 3, size=(24,)).astype("int32")
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(3)]
    )
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    opts = {
        mode: BAMomentum(learning_rate=0.1, covariance=mode, min_increment=8, max_batch_size=64)
        for mode in ("diagonal", "full", "projection")
    }
    for opt in opts.values():
        opt.build(model.trainable_variables)
    all_g, all_losses = reference_gradients(model, loss_fn, x, y)  # no update happens below
    for k in range(3):  # three chunks of 8: Y_t grows, no update in between
        xs, ys = x[8 * k : 8 * k + 8], y[8 * k : 8 * k + 8]
        for opt in opts.values():
            opt.accumulate(opt.compute_chunk_statistics(model, loss_fn, xs, ys))
        g, losses = all_g[: 8 * k + 8], all_losses[: 8 * k + 8]
        f = g.mean(axis=0)
        cov = (g - f).T @ (g - f) / (len(g) - 1)  # Eq. 4
        want_diag = np.sqrt(np.sum(f**2 * np.diag(cov)))
        want_full = np.sqrt(f @ cov @ f)
        stats = {mode: opt.statistics() for mode, opt in opts.items()}
        np.testing.assert_allclose(float(stats["diagonal"]["sigma"]), want_diag, rtol=1e-4)
        np.testing.assert_allclose(float(stats["full"]["sigma"]), want_full, rtol=1e-4)
        for st in stats.values():
            np.testing.assert_allclose(float(st["s"]), losses.mean(), rtol=1e-5)
            np.testing.assert_allclose(float(st["mu"]), f @ f, rtol=1e-4)  # mu_p_{t-1} = 0
            assert float(st["accumulated"]) == 8 * k + 8
        # projection: exact on the first chunk (up to the finite difference), then it reuses
        # the direction each chunk was projected on
        rtol = 2e-3 if k == 0 else 0.25
        np.testing.assert_allclose(float(stats["projection"]["sigma"]), want_full, rtol=rtol)


def test_projection_repeats_dropout_masks():
    """The perturbed pass must see the main pass's dropout masks: sigma is then independent
    of the finite-difference step (with other masks it would grow like 1 / fd_step)."""
    src = fashion_mnist(max_train_examples=32)
    x = src.train_arrays[0].reshape(32, 28, 28, 1).astype("float32") / 255.0
    y = src.train_arrays[1].astype("int32")
    keras.utils.set_random_seed(2)
    model = build_model(
        "cnn_fashion", input_shape=(28, 28, 1), num_classes=10, filters=(8, 16), dropout=0.3
    )
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    seeds = [v.numpy() for v in model.non_trainable_variables]  # dropout seed states
    sigmas = []
    for step in (1e-3, 1e-4):
        for var, value in zip(model.non_trainable_variables, seeds):
            var.assign(value)  # same masks in both main passes
        opt = BAMomentum(fd_step=step)
        opt.build(model.trainable_variables)
        opt.accumulate(opt.compute_chunk_statistics(model, loss_fn, x, y))
        sigmas.append(float(opt.statistics()["sigma"]))
    assert sigmas[0] > 0
    assert sigmas[1] == pytest.approx(sigmas[0], rel=0.02)


def test_exact_mode_gives_each_example_its_own_dropout_mask():
    keras.utils.set_random_seed(4)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(1),
        ]
    )
    x = np.repeat(np.random.default_rng(4).normal(size=(1, 6)), 8, axis=0).astype("float32")
    y = np.ones((8, 1), "float32")
    seeds = [v for v in model.non_trainable_variables if v.name == "seed_generator_state"]
    before = seeds[0].numpy().copy()
    opt = BAMomentum(covariance="diagonal", min_increment=8)
    opt.build(model.trainable_variables)
    opt.accumulate(opt.compute_chunk_statistics(model, SQUARED, x, y))
    # eight copies of one example differ only through their masks
    assert float(opt.statistics()["sigma"]) > 0
    np.testing.assert_array_equal(seeds[0].numpy(), before + [0, 1])  # one draw per chunk


# -- decisions ------------------------------------------------------------------------------


def test_label_noise_grows_the_batch():
    # The loss starts far above the noise floor (|w| ~ 3 per input), so early steps are
    # signal-dominated; near the floor the label noise dominates and the batch grows.
    x, y, floor = least_squares(noise=3.0, w_scale=3.0)
    model = linear_model(8)
    opt = BAMomentum(
        learning_rate=0.005, momentum=0.9, min_increment=32, max_batch_size=1024, loss_floor=floor
    )
    opt.build(model.trainable_variables)
    sizes = run_epochs(chunk_runner(model, opt, SQUARED), x, y, 32, epochs=3)
    fifth = len(sizes) // 5
    assert sizes[:fifth].mean() < 40
    assert sizes[-fifth:].mean() > 1.5 * sizes[:fifth].mean()


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_without_noise_the_batch_stays_at_m0(momentum):
    x, y, _ = least_squares(noise=0.0)
    model = linear_model(8)
    opt = BAMomentum(
        learning_rate=0.01, momentum=momentum, min_increment=32, max_batch_size=1024, loss_floor=0.0
    )
    opt.build(model.trainable_variables)
    sizes = run_epochs(chunk_runner(model, opt, SQUARED), x, y, 32, epochs=4)
    assert len(sizes) == 4 * 2048 // 32
    assert set(sizes.tolist()) == {32}


def numpy_ba_momentum(x, y, w, b, order, m0, lr, rho, floor, cap):
    """Algorithm 1 by hand for a linear model with loss (x.w + b - y)^2 / 2, diagonal Sigma."""
    theta = np.r_[w.ravel(), b.ravel()].astype(np.float64)
    velocity, mean = np.zeros_like(theta), np.zeros_like(theta)
    grads, losses, sizes = [], [], []
    for start in range(0, len(order), m0):
        idx = order[start : start + m0]
        xa = np.c_[x[idx], np.ones(len(idx))].astype(np.float64)
        r = xa @ theta - y[idx, 0]
        grads += list(r[:, None] * xa)
        losses += list(0.5 * r**2)
        g = np.array(grads)
        n, f, s = len(g), g.mean(axis=0), np.mean(losses)
        var = ((g - f) ** 2).sum(axis=0) / max(n - 1, 1)
        sigma = np.sqrt(np.sum(f**2 * var))
        mu = f @ (rho * mean + f)
        m_star = optimal_batch_size(s, floor, mu, sigma, lr, cap) if mu > 0 else 1
        if n < 2:
            m_star = max(m_star, 2)
        if n >= min(m_star, cap):
            velocity = rho * velocity + lr * f
            theta = theta - velocity
            mean = rho * mean + f
            sizes.append(n)
            grads, losses = [], []
    return theta, sizes


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_matches_a_hand_written_numpy_update(momentum):
    """momentum=0 is BA-SGD (theta -= lr f with batch growth); 0.9 adds v and mu_p."""
    x, y, floor = least_squares(noise=2.0, n=256, d=4, seed=3)
    model = linear_model(4, seed=3)
    opt = BAMomentum(
        learning_rate=0.05,
        momentum=momentum,
        min_increment=8,
        max_batch_size=128,
        loss_floor=floor,
        covariance="diagonal",
    )
    opt.build(model.trainable_variables)
    step = chunk_runner(model, opt, SQUARED)
    w0, b0 = (v.numpy() for v in model.trainable_variables)
    order = np.concatenate([np.random.default_rng(k).permutation(256) for k in range(2)])
    sizes = []
    for start in range(0, len(order), 8):
        idx = order[start : start + 8]
        out = step(x[idx], y[idx])
        if bool(out["did_update"]):
            sizes.append(int(out["batch_size_of_update"]))
    theta, want_sizes = numpy_ba_momentum(x, y, w0, b0, order, 8, 0.05, momentum, floor, 128)
    assert sizes == want_sizes
    assert max(sizes) > 8  # the batch did grow on this problem
    got = np.concatenate([v.numpy().ravel() for v in model.trainable_variables])
    np.testing.assert_allclose(got, theta, rtol=1e-4, atol=1e-5)


def test_dataset_size_caps_the_batch():
    x, y, floor = least_squares(noise=3.0, n=512)
    model = linear_model(8)
    opt = BAMomentum(
        learning_rate=0.05,
        momentum=0.0,
        min_increment=32,
        max_batch_size=512,
        loss_floor=floor,
        dataset_size=64,
    )
    opt.build(model.trainable_variables)
    sizes = run_epochs(chunk_runner(model, opt, SQUARED), x, y, 32, epochs=4)
    assert sizes.max() == 64


def test_fast_estimator_decisions_match_exact_mode():
    """Projection (fast) vs exact full covariance on real Fashion-MNIST (7x7 pooled images,
    a 49-32-10 tanh MLP): the exact optimizer drives training; the fast one sees the same
    chunks and the same momentum state and is asked for its decision at every chunk."""
    n = 1024
    src = fashion_mnist(max_train_examples=n)
    images = src.train_arrays[0].reshape(n, 28, 28, 1).astype("float32") / 255.0
    x = tf.nn.avg_pool2d(images, 4, 4, "VALID").numpy().reshape(n, 49)
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)
    y = src.train_arrays[1].astype("int32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((49,)), keras.layers.Dense(32, activation="tanh"), keras.layers.Dense(10)]
    )
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    kw = dict(
        learning_rate=0.1, momentum=0.9, min_increment=32, max_batch_size=1024, loss_floor=0.4
    )
    exact, fast = BAMomentum(covariance="full", **kw), BAMomentum(covariance="projection", **kw)
    exact.build(model.trainable_variables)
    fast.build(model.trainable_variables)

    @tf.function
    def step(xc, yc):
        fast.accumulate(fast.compute_chunk_statistics(model, loss_fn, xc, yc))
        fast_decision, fast_sigma = fast.should_update(), fast.statistics()["sigma"]
        return ba_chunk_step(model, exact, loss_fn, xc, yc), fast_decision, fast_sigma

    @tf.function
    def follow_exact():
        fast.discard_accumulated()
        for src_var, dst_var in zip(exact._momentum_means, fast._momentum_means):
            dst_var.assign(src_var)

    rng = np.random.default_rng(0)
    same, ratios, sizes = [], [], []
    for _ in range(4):
        perm = rng.permutation(n)
        for i in range(0, n, 32):
            out, decision, sigma = step(x[perm[i : i + 32]], y[perm[i : i + 32]])
            did = bool(out["did_update"])
            same.append(did == bool(decision))
            ratios.append(float(sigma) / float(out["sigma"]))
            if did:
                sizes.append(int(out["batch_size_of_update"]))
                follow_exact()
    sizes = np.array(sizes)
    assert np.mean(sizes > 32) > 0.05  # decisions are not trivial on this problem (13%)
    assert np.mean(same) >= 0.98
    assert np.median(ratios) == pytest.approx(1.0, abs=0.01)


# -- failure, state, replicas ---------------------------------------------------------------


def test_non_finite_loss_stops_before_writing_state():
    x, y, _ = least_squares(noise=1.0, n=64)
    model = linear_model(8)
    opt = BAMomentum(min_increment=16, max_batch_size=64)
    opt.build(model.trainable_variables)
    step = chunk_runner(model, opt, SQUARED)
    step(x[:16], y[:16])
    before = [v.numpy().copy() for v in opt.variables + model.trainable_variables]
    bad = x[16:32].copy()
    bad[3, 2] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="non-finite loss.*update"):
        step(bad, y[16:32])
    after = [v.numpy() for v in opt.variables + model.trainable_variables]
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_resume_continues_the_same_trajectory(tmp_path):
    x, y, floor = least_squares(noise=3.0, n=1024)
    order = np.concatenate([np.random.default_rng(k).permutation(1024) for k in range(3)])

    def fresh():
        model = linear_model(8, hidden=4, seed=5)
        opt = BAMomentum(
            learning_rate=0.02, momentum=0.9, min_increment=32, max_batch_size=512, loss_floor=floor
        )
        opt.build(model.trainable_variables)
        return model, opt, chunk_runner(model, opt, SQUARED)

    def run(step, chunks):
        out = [step(x[order[32 * i : 32 * i + 32]], y[order[32 * i : 32 * i + 32]]) for i in chunks]
        return [int(o["batch_size_of_update"]) for o in out]

    model, opt, step = fresh()
    run(step, range(0, 60))
    while float(opt.accumulated_count) == 0:  # save in the middle of a growing batch
        run(step, [60])
    ckpt = tf.train.Checkpoint(model=model, optimizer=opt)
    path = ckpt.save(str(tmp_path / "ba"))
    saved_count = float(opt.accumulated_count)
    sizes_a = run(step, range(61, 96))
    weights_a = [v.numpy() for v in model.trainable_variables]

    model_b, opt_b, step_b = fresh()
    tf.train.Checkpoint(model=model_b, optimizer=opt_b).restore(path).assert_consumed()
    assert float(opt_b.accumulated_count) == saved_count > 0
    sizes_b = run(step_b, range(61, 96))
    assert sizes_a == sizes_b
    for a, b in zip(weights_a, [v.numpy() for v in model_b.trainable_variables]):
        np.testing.assert_array_equal(a, b)


def test_two_replicas_make_the_same_decisions_as_one(one_cpu_strategy, two_cpu_strategy):
    x, y, floor = least_squares(noise=3.0, n=1024)

    def train(strategy):
        with strategy.scope():
            model = linear_model(8, hidden=4, seed=7)
            opt = BAMomentum(
                learning_rate=0.02,
                momentum=0.9,
                min_increment=32,
                max_batch_size=512,
                loss_floor=floor,
            )
            opt.build(model.trainable_variables)
        data = tf.data.Dataset.from_tensor_slices((x, y)).repeat(3).batch(32)
        iterator = iter(strategy.experimental_distribute_dataset(data))

        @tf.function
        def step():
            xb, yb = next(iterator)
            out = strategy.run(ba_chunk_step, args=(model, opt, SQUARED, xb, yb))
            return strategy.experimental_local_results(out)[0]

        sizes = [int(step()["batch_size_of_update"]) for _ in range(3 * 1024 // 32)]
        return sizes, [v.numpy() for v in model.trainable_variables]

    sizes_1, weights_1 = train(one_cpu_strategy)
    sizes_2, weights_2 = train(two_cpu_strategy)
    assert sizes_1 == sizes_2
    assert max(sizes_1) > 32
    for a, b in zip(weights_1, weights_2):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_one_trace_for_all_chunk_sizes_and_updates():
    x, y, floor = least_squares(noise=3.0, n=256)
    model = linear_model(8)
    opt = BAMomentum(learning_rate=0.05, min_increment=16, max_batch_size=256, loss_floor=floor)
    opt.build(model.trainable_variables)
    step = chunk_runner(model, opt, SQUARED)
    run_epochs(step, x, y, 32, epochs=1)
    run_epochs(step, x, y, 16, epochs=1)
    assert step.experimental_get_tracing_count() == 1


# -- model.fit ------------------------------------------------------------------------------


def fashion_images(n):
    src = fashion_mnist(max_train_examples=n)
    images, labels = src.train_arrays
    x = (images.reshape(n, 28, 28, 1).astype("float32") / 255.0 - src.mean[0]) / src.std[0]
    return x, labels.astype("int32")


def test_bamodel_fit_on_real_fashion_mnist():
    x, y = fashion_images(256)
    keras.utils.set_random_seed(0)
    model = BAModel(
        build_model("cnn_fashion", input_shape=(28, 28, 1), num_classes=10, filters=(8,))
    )
    model.compile(
        optimizer=BAMomentum(learning_rate=0.01, momentum=0.9, min_increment=32, dataset_size=384),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    logs = history.history
    for key in (
        "loss",
        "accuracy",
        "batch_size_per_update",
        "updates",
        "m_star",
        "mu",
        "sigma",
        "s",
    ):
        assert len(logs[key]) == 2, key
    assert logs["loss"][-1] < logs["loss"][0]
    assert all(1 <= u <= 8 for u in logs["updates"])  # 8 chunks per epoch
    assert all(b >= 32 for b in logs["batch_size_per_update"])
    assert np.isfinite(logs["sigma"]).all()
    assert model.evaluate(x[:64], y[:64], verbose=0)[0] > 0
    config = model.get_config()
    rebuilt = BAModel.from_config(config)
    assert len(rebuilt.model.layers) == len(model.model.layers)


def test_bamodel_fit_under_mirrored_strategy(two_cpu_strategy):
    x, y, floor = least_squares(noise=1.0, n=256)
    with two_cpu_strategy.scope():
        model = BAModel(linear_model(8, hidden=4))
        model.compile(
            optimizer=BAMomentum(learning_rate=0.02, min_increment=32, loss_floor=floor),
            loss=keras.losses.MeanSquaredError(),
        )
    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    assert history.history["updates"][-1] >= 1
    assert np.isfinite(history.history["loss"]).all()


def test_bamodel_requires_bamomentum():
    model = BAModel(linear_model(8))
    model.compile(optimizer="sgd", loss="mse")
    x, y, _ = least_squares(noise=1.0, n=64)
    with pytest.raises(ValueError, match="BAMomentum"):
        model.fit(x, y, batch_size=32, epochs=1, verbose=0)
