"""Batch augmentation (seed 003): policies, M copies per sample, labels, determinism, replicas,
dropout copies, gradient-norm adaptation, bad input.

Index fixture: image i is constant per channel - channel 0 = i // 256, channel 1 = i % 256,
channel 2 = 255 - with mean 0 and std 1, so the normalised batch is the augmented [0, 1] batch.
Cropping pads zeros and Cutout (fill = mean = 0) writes zeros, so the per-channel maximum over
the pixels still reads i back exactly after any augmentation here.
"""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_largebatch.data import DataSource, get_source, train_dataset_fn
from keras_largebatch.data.augment import make_augment, pad_and_crop
from keras_largebatch.errors import UserInputError
from keras_largebatch.models import build_model
from keras_largebatch.training.steps.grad_norm import (
    adapt_grad_norm_scale,
    estimate_grad_norm_scale,
    split_copies,
)

N, S = 600, 8  # examples, image side


@functools.cache
def _index_source() -> DataSource:
    idx = np.arange(N)
    images = np.zeros((N, S, S, 3), np.uint8)
    images[..., 0] = (idx // 256)[:, None, None]
    images[..., 1] = (idx % 256)[:, None, None]
    images[..., 2] = 255
    return DataSource(name="index", input_shape=(S, S, 3), num_classes=10, num_train=N,
                      num_test=N, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                      train_arrays=(images, idx % 10), test_arrays=(images, idx % 10))


@functools.cache
def _fashion(n=512) -> DataSource:
    return get_source("fashion_mnist", max_train_examples=n, max_test_examples=100)


def _indices(images) -> np.ndarray:
    px = np.rint(np.asarray(images) * 255).astype(int).max(axis=(1, 2))
    return px[:, 0] * 256 + px[:, 1]


def _batches(source, **kw):
    return [(x.numpy(), y.numpy()) for x, y in train_dataset_fn(source, **kw)()]


def _augment(policy, source=None, **kw):
    source = source or _index_source()
    return make_augment(policy, input_shape=source.input_shape, mean=source.mean, **kw)


def _copies_differ(x: np.ndarray, repeats: int) -> np.ndarray:
    """Per sample: how many distinct images among its M copies (copy-major batch)."""
    copies = x.reshape(repeats, -1, *x.shape[1:])
    return np.array([len({c.tobytes() for c in copies[:, i]}) for i in range(copies.shape[1])])


# ---- M copies: present, different, labels aligned, same number of updates ---------------------

@pytest.mark.parametrize("policy", ["standard", "cutout"])
def test_m_copies_present_differ_and_labels_follow(policy):
    src = _index_source()
    plain = _batches(src, global_batch_size=32, epoch=0, seed=0)
    rep = _batches(src, global_batch_size=32, epoch=0, seed=0, repeats=4,
                   augment=_augment(policy, cutout_size=3))
    assert len(rep) == len(plain)
    for (px, _), (x, y) in zip(plain, rep[:4]):
        assert x.shape == (128, S, S, 3)
        idx = _indices(x)
        np.testing.assert_array_equal(idx, np.tile(_indices(px), 4))  # every sample M times
        np.testing.assert_array_equal(y, idx % 10)  # labels follow their images
        distinct = _copies_differ(x, 4)
        assert distinct.min() >= 2 and distinct.mean() > 3.5, distinct


def test_labels_follow_copies_with_a_marker_augmentation():
    """Identity + marker: pixel (0, 0) of channel 2 records the row -> copy j = row // b."""
    src = _index_source()

    def marker(images, seed):
        n = tf.shape(images)[0]
        rows = tf.cast(tf.range(n), tf.float32) / 255.0
        mask = tf.pad(tf.ones([1, 1, 1]), [[0, S - 1], [0, S - 1], [2, 0]]) > 0
        return tf.where(mask[None], rows[:, None, None, None], images)

    for x, y in _batches(src, global_batch_size=16, epoch=1, seed=3, repeats=3,
                         augment=marker)[:3]:
        row = np.rint(x[:, 0, 0, 2] * 255).astype(int)
        np.testing.assert_array_equal(row, np.arange(48))  # order kept: copy j = row // 16
        idx = _indices(x)
        base = idx[:16]
        for j in range(3):
            np.testing.assert_array_equal(idx[16 * j:16 * (j + 1)], base)
            np.testing.assert_array_equal(y[16 * j:16 * (j + 1)], base % 10)


def test_updates_per_epoch_do_not_change_with_m():
    src = _index_source()
    counts = {}
    for m in (1, 2, 4, 8):
        ds = train_dataset_fn(src, global_batch_size=64, epoch=0, seed=0, repeats=m,
                              augment=_augment("cutout", cutout_size=2))()
        sizes = [int(y.shape[0]) for _, y in ds]
        counts[m] = len(sizes)
        assert set(sizes) == {64 * m}
    assert set(counts.values()) == {N // 64}


def test_m1_with_policy_none_is_exactly_the_plain_pipeline():
    src = _fashion()
    assert _augment("none", src) is None
    plain = _batches(src, global_batch_size=64, epoch=2, seed=7)
    none = _batches(src, global_batch_size=64, epoch=2, seed=7, repeats=1,
                    augment=_augment("none", src))
    assert len(plain) == len(none) == 512 // 64
    for (a, la), (b, lb) in zip(plain, none):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)


# ---- Determinism: resume gives identical batches, new epochs new augmentations ---------------

def test_same_seed_identical_batches_resume_and_epochs_differ():
    src = _fashion()
    aug = _augment("cutout", src)
    kw = dict(global_batch_size=64, seed=1, repeats=2, augment=aug)
    full = _batches(src, epoch=0, **kw)
    again = _batches(src, epoch=0, **kw)
    resumed = _batches(src, epoch=0, skip_steps=3, **kw)
    for (a, la), (b, lb) in zip(full, again):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)
    assert len(resumed) == len(full) - 3
    for (a, _), (b, _) in zip(full[3:], resumed):
        np.testing.assert_array_equal(a, b)
    # The same sample in two epochs is augmented differently (index fixture reads ids back).
    isrc = _index_source()
    iaug = _augment("standard", isrc)
    by_epoch = []
    for epoch in (0, 1):
        seen = {}
        for x, _ in _batches(isrc, global_batch_size=64, epoch=epoch, seed=1, augment=iaug):
            seen.update(zip(_indices(x), x))
        by_epoch.append(seen)
    common = sorted(set(by_epoch[0]) & set(by_epoch[1]))
    differ = np.mean([not np.array_equal(by_epoch[0][i], by_epoch[1][i]) for i in common])
    assert len(common) > 400 and differ > 0.9, differ


# ---- The ops ---------------------------------------------------------------------------------

def test_cutout_zeroes_a_square_of_the_right_size_after_normalisation():
    """Fill = dataset mean before normalisation -> exactly 0 after (the authors' code)."""
    src = _fashion()
    size = 8
    (x, _), = _batches(src, global_batch_size=256, epoch=0, seed=0, repeats=2,
                       augment=_augment("cutout", src, cutout_size=size))[:1]
    plain, = [b for b, _ in _batches(src, global_batch_size=256, epoch=0, seed=0)[:1]]
    assert not (plain == 0).any()  # no Fashion-MNIST pixel normalises to exactly 0
    full = 0
    for img in x[..., 0]:
        rows, cols = np.nonzero(img == 0)
        assert rows.size, "every image has a hole"
        h = rows.max() - rows.min() + 1
        w = cols.max() - cols.min() + 1
        assert rows.size == h * w  # one filled rectangle
        assert size // 2 <= h <= size and size // 2 <= w <= size
        full += (h, w) == (size, size)
        if h < size:  # clipped squares touch the border
            assert rows.min() == 0 or rows.max() == 27
        if w < size:
            assert cols.min() == 0 or cols.max() == 27
    assert full > 0.4 * len(x)  # interior holes are exactly size x size


def test_cutout_fill_zero_and_sizes_near_the_border():
    aug = make_augment("cutout", input_shape=(12, 12, 1), cutout_size=5, cutout_fill=0.0,
                       pad=0, flip=False)
    out = aug(tf.ones([400, 12, 12, 1]), tf.constant([1, 2], tf.int32)).numpy()
    holes = (out == 0).sum(axis=(1, 2, 3))
    assert holes.min() >= 9 and holes.max() == 25  # ceil(5/2)^2 .. 5^2
    assert set(np.unique(out)) == {0.0, 1.0}


def test_pad_and_crop_is_an_exact_window_of_the_padded_image():
    x = tf.random.stateless_uniform([64, 28, 28, 1], [0, 1])
    out = pad_and_crop(x, tf.constant([4, 2], tf.int32), pad=2).numpy()
    padded = np.pad(x.numpy(), [(0, 0), (2, 2), (2, 2), (0, 0)])
    offsets = set()
    for i in range(64):
        hits = [(a, b) for a in range(5) for b in range(5)
                if np.array_equal(out[i], padded[i, a:a + 28, b:b + 28])]
        assert hits, i
        offsets.add(hits[0])
    assert len(offsets) > 10  # offsets vary per example


def test_policy_defaults_follow_the_papers():
    grey = make_augment("standard", input_shape=(28, 28, 1))
    assert (grey.pad, grey.flip) == (2, False)
    assert make_augment("standard", input_shape=(28, 28, 1), flip=True).flip
    cifar = make_augment("cutout", input_shape=(32, 32, 3), mean=(0.5, 0.5, 0.5))
    assert (cifar.pad, cifar.flip, cifar.cutout_size) == (4, True, 16)
    assert make_augment("cutout", input_shape=(28, 28, 1), mean=(0.3,)).cutout_size == 8
    assert make_augment("inception", input_shape=(64, 64, 3)).flip


def test_inception_crop_is_stateless_and_varies():
    x = tf.random.stateless_uniform([16, 40, 40, 3], [3, 4])
    seed = tf.constant([9, 9], tf.int32)
    aug = make_augment("inception", input_shape=(40, 40, 3))
    a, b = aug(x, seed).numpy(), aug(x, seed).numpy()
    np.testing.assert_array_equal(a, b)
    assert a.shape == (16, 40, 40, 3)
    assert not np.array_equal(a, aug(x, tf.constant([9, 10], tf.int32)).numpy())
    same = make_augment("inception", input_shape=(40, 40, 3), scale=(1.0, 1.0),
                        ratio=(1.0, 1.0), flip=False)
    np.testing.assert_allclose(same(x, seed).numpy(), x.numpy(), atol=1e-6)  # whole image


# ---- Replicas and dropout copies -------------------------------------------------------------

def test_two_replicas_keep_copies_on_the_replica_that_drew_them(two_cpu_strategy):
    src = _index_source()
    plain = _batches(src, global_batch_size=32, epoch=0, seed=0)
    dist = two_cpu_strategy.distribute_datasets_from_function(
        train_dataset_fn(src, global_batch_size=32, epoch=0, seed=0, repeats=4,
                         augment=_augment("cutout", cutout_size=3)))
    it = iter(dist)
    for step in range(2):
        x, y = next(it)
        xs = [p.numpy() for p in two_cpu_strategy.experimental_local_results(x)]
        ys = [p.numpy() for p in two_cpu_strategy.experimental_local_results(y)]
        chunk = [_indices(plain[step][0])[16 * r:16 * (r + 1)] for r in range(2)]
        for r in range(2):
            assert xs[r].shape == (64, S, S, 3)
            np.testing.assert_array_equal(_indices(xs[r]), np.tile(chunk[r], 4))
            np.testing.assert_array_equal(ys[r], _indices(xs[r]) % 10)
            assert _copies_differ(xs[r], 4).min() >= 2


def test_dropout_gives_m_different_copies_inside_the_model():
    """Seed 003 3.3: no input augmentation, M copies still differ after Dropout (training)."""
    src = _fashion()
    m, b = 4, 8
    (x, _), = _batches(src, global_batch_size=b, epoch=0, seed=0, repeats=m)[:1]
    copies = x.reshape(m, b, *x.shape[1:])
    assert all(np.array_equal(copies[0], c) for c in copies)  # identical inputs
    model = build_model("cnn_fashion", input_shape=(28, 28, 1), num_classes=10)
    probe = keras.Model(model.input, model.get_layer("dropout1").output)
    train_act = keras.ops.convert_to_numpy(probe(x, training=True)).reshape(m, b, -1)
    eval_act = keras.ops.convert_to_numpy(probe(x, training=False)).reshape(m, b, -1)
    for i in range(b):
        # Equal up to float rounding: oneDNN may vectorise rows at different batch positions
        # differently (bitwise equality failed on a loaded machine, also before issue 12).
        for j in range(m):
            np.testing.assert_allclose(eval_act[j, i], eval_act[0, i], rtol=1e-5, atol=1e-6)
        for j in range(1, m):
            assert not np.array_equal(train_act[0, i], train_act[j, i])
    # The masks are independent: the copies' zero patterns mostly disagree where active.
    active = eval_act[0] > 0
    zero = train_act == 0
    disagree = (zero[0] != zero[1])[active].mean()
    assert 0.25 < disagree < 0.5  # 2 p (1 - p) = 0.375 for p = 0.25


# ---- Gradient-norm adaptation ----------------------------------------------------------------

def test_grad_norm_scale_matches_the_authors_formula():
    rng = np.random.default_rng(0)
    w = tf.Variable(rng.normal(size=(6, 3)).astype(np.float32))
    b, m = 5, 3
    x = tf.constant(rng.normal(size=(m * b, 6)).astype(np.float32))
    y = tf.constant(np.tile(rng.integers(0, 3, size=b), m).astype(np.int32))

    def grad_fn(xb, yb):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(yb, xb @ w))
        return tape.gradient(loss, [w])

    scale = float(estimate_grad_norm_scale(grad_fn, x, y, repeats=m))
    copy_norms = [np.linalg.norm(grad_fn(x[j * b:(j + 1) * b], y[j * b:(j + 1) * b])[0])
                  for j in range(m)]
    full = np.linalg.norm(grad_fn(x, y)[0])
    np.testing.assert_allclose(scale, np.mean(copy_norms) / full, rtol=1e-5)
    assert scale >= 1.0  # no batch statistics: full gradient = mean of copy gradients
    assert float(estimate_grad_norm_scale(grad_fn, x, y, repeats=1)) == 1.0
    assert float(adapt_grad_norm_scale([1.0, 2.0], 0.0)) == 1.0
    parts = split_copies(x, y, m)
    assert len(parts) == m and all(p[0].shape[0] == b for p in parts)


# ---- Bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    (dict(policy="autoaugment"), "unknown augmentation policy 'autoaugment'; choose one of"),
    (dict(policy="cutout", cutout_size=40), "cutout_size 40 is larger than the 32x32 image"),
    (dict(policy="cutout", cutout_size=0), "cutout_size must be a positive integer.*got 0"),
    (dict(policy="cutout", cutout_size=-3), "cutout_size must be a positive integer.*got -3"),
    (dict(policy="cutout", cutout_size=2.5), "got 2.5"),
    (dict(policy="standard", pad=-1), "pad must be a non-negative integer.*got -1"),
    (dict(policy="inception", scale=(0.5, 1.5)), r"scale must be .*got \(0.5, 1.5\)"),
    (dict(policy="cutout", mean=None), "cutout_fill='mean' needs the dataset mean"),
    (dict(policy="cutout", cutout_fill="black"), "cutout_fill must be 'mean' or a number"),
    (dict(policy="standard", input_shape=(32, 32)), r"input_shape must be .*got \(32, 32\)"),
])
def test_bad_inputs(kwargs, match):
    args = dict(input_shape=(32, 32, 3), mean=(0.5, 0.5, 0.5)) | kwargs
    with pytest.raises(UserInputError, match=match):
        make_augment(args.pop("policy"), **args)


def test_bad_repeats_and_wrong_image_shape():
    with pytest.raises(UserInputError, match="repeats must be an integer >= 1; got 2.5"):
        train_dataset_fn(_index_source(), global_batch_size=8, epoch=0, seed=0, repeats=2.5)
    aug = make_augment("standard", input_shape=(32, 32, 3))
    with pytest.raises(UserInputError, match=r"input_shape=\(32, 32, 3\) got images"):
        aug(tf.zeros([2, 28, 28, 1]), tf.constant([0, 0], tf.int32))
