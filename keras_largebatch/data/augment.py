"""Augmentation policies by name, stateless and vectorised: the `augment` of the pipeline.

    augment = make_augment("cutout", input_shape=source.input_shape, mean=source.mean)
    dataset_fn = train_dataset_fn(source, global_batch_size=64, epoch=e, seed=s,
                                  repeats=4, augment=augment)

`train_dataset_fn` calls `augment(images, seed)` once per replica batch, after tiling the
chunk M times (`repeats=M`, seed 003 batch augmentation) and before normalisation: `images` is
float32 in [0, 1], shape [M*b, h, w, c], and `seed` an int32[2] unique to (epoch, chunk). Every
random draw here is a `tf.random.stateless_*` / `tf.image.stateless_*` op keyed by that seed, so
an epoch rebuilt for resume yields bit-identical batches. Each op draws one row of randomness
per example (shape [n, ...], seed = fold_in(batch seed, op id)), so the M copies of a sample,
which sit at different rows, are augmented independently.

| policy    | ops (in order)                                                               |
|-----------|------------------------------------------------------------------------------|
| none      | `make_augment` returns None (M copies still differ through dropout, 3.3)     |
| standard  | zero-pad `pad` px + random crop back to h x w; horizontal flip if `flip`      |
| cutout    | standard, then Cutout (DeVries & Taylor 2017) of `cutout_size` px            |
| inception | random-resized-crop (area `scale`, aspect `ratio`) to h x w; flip if `flip`   |

Defaults follow the papers: `pad` 4 for images of side >= 32 (CIFAR, He et al. 2016), else 2
(28x28 Fashion-MNIST/MNIST); `flip` on for colour images and for `inception`, off for grey
images (digits must not flip; Fashion-MNIST may: pass `flip=True`); `cutout_size` 16 for side
>= 32 (DeVries & Taylor's CIFAR-10 value), else min(8, side // 2) (8 for 28x28).

Cutout fill. Seed 003 says "zero-valued squares"; the authors' code, like DeVries & Taylor's,
applies Cutout after `Normalize`, so the zeros are zeros of the normalised image, i.e. the
dataset mean. This function runs before the pipeline normalises, so with the default
`cutout_fill="mean"` it writes the per-channel dataset `mean` (on the [0, 1] scale, the same
float32 constants the normaliser subtracts): after normalisation the hole is exactly 0, as in
the authors' code. `cutout_fill=0.0` gives black holes instead. The padding of the crop is 0
before normalisation (black), as in torchvision's RandomCrop(padding=4) that the authors used.

Cutout geometry, as in DeVries & Taylor's code: the centre is uniform over all h x w pixels and
the square is clipped at the border (it may extend past it), so a hole covers between
ceil(L/2)^2 and L^2 pixels. Rows [cy - L//2, cy - L//2 + L) are cut, so an interior hole is
exactly L x L (their code cuts L-1 for odd L).

Library pieces: `tf.image.stateless_random_flip_left_right` (per-image flips on a 4-D batch,
stateless) and `tf.image.crop_and_resize` (one box per image, vectorised) are used. Rejected,
because they are stateful or batch-wide: `keras_cv.layers.RepeatedAugmentation` (tiling is
already the pipeline's; it shuffles with `tf.random.shuffle` and its augmenters draw from a
stateful `tf.random.Generator`), `keras_cv.layers.RandomCutout` / `RandomCropAndResize` (same
generator; RandomCutout also has no "mean after normalisation" fill), Keras 3 `RandomCrop` (one
offset for the whole batch, no padding) and `RandomErasing` (boxes kept inside the image),
`tf.image.stateless_random_crop` and `stateless_sample_distorted_bounding_box` (one crop per
call: per-example use would need `tf.map_fn`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from keras_largebatch.errors import UserInputError

POLICIES = ("none", "standard", "cutout", "inception")

# Op ids folded into the batch seed: one independent stream per random op.
_CROP, _FLIP, _CUTOUT_Y, _CUTOUT_X, _RRC = 1, 2, 3, 4, 5
_RRC_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes, then falls back


def _op_seed(seed: tf.Tensor, op: int) -> tf.Tensor:
    return tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int32), op)


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


# ---- Ops: images [n, h, w, c] float32, seed int32[2] -> images --------------------------------

def pad_and_crop(images: tf.Tensor, seed: tf.Tensor, pad: int) -> tf.Tensor:
    """Zero-pad `pad` pixels on every side, then crop a random h x w window per image."""
    if pad == 0:
        return images
    n = tf.shape(images)[0]
    h, w = images.shape[1], images.shape[2]
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    offsets = tf.random.stateless_uniform([n, 2], _op_seed(seed, _CROP), minval=0,
                                          maxval=2 * pad + 1, dtype=tf.int32)
    rows = offsets[:, :1] + tf.range(h)[None]  # [n, h]
    cols = offsets[:, 1:] + tf.range(w)[None]  # [n, w]
    out = tf.gather(padded, rows, axis=1, batch_dims=1)  # [n, h, w + 2 pad, c]
    return tf.gather(out, cols, axis=2, batch_dims=1)  # [n, h, w, c]


def random_flip(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Flip each image left-right with probability 1/2."""
    return tf.image.stateless_random_flip_left_right(images, _op_seed(seed, _FLIP))


def cutout(images: tf.Tensor, seed: tf.Tensor, size: int, fill: tf.Tensor) -> tf.Tensor:
    """Cutout: per image, a size x size square centred uniformly, clipped, set to `fill`[c]."""
    n = tf.shape(images)[0]
    h, w = images.shape[1], images.shape[2]
    cy = tf.random.stateless_uniform([n, 1], _op_seed(seed, _CUTOUT_Y), 0, h, dtype=tf.int32)
    cx = tf.random.stateless_uniform([n, 1], _op_seed(seed, _CUTOUT_X), 0, w, dtype=tf.int32)
    top, left = cy - size // 2, cx - size // 2
    r, c = tf.range(h)[None], tf.range(w)[None]
    in_rows = (r >= top) & (r < top + size)  # [n, h]
    in_cols = (c >= left) & (c < left + size)  # [n, w]
    hole = in_rows[:, :, None, None] & in_cols[:, None, :, None]  # [n, h, w, 1]
    return tf.where(hole, tf.cast(fill, images.dtype), images)


def random_resized_crop(
    images: tf.Tensor, seed: tf.Tensor, scale: tuple[float, float],
    ratio: tuple[float, float],
) -> tf.Tensor:
    """Inception-style crop (Szegedy et al. 2015), resized back to h x w (bilinear).

    torchvision's RandomResizedCrop, vectorised: per image 10 candidate boxes with area
    fraction ~ U(scale) and log aspect ~ U(log ratio); the first that fits is placed uniformly;
    if none fits, the largest centred box with aspect clamped to `ratio`. Box sides are whole
    pixels; resampling is `tf.image.crop_and_resize` (corner-aligned bilinear, no antialias).
    """
    n = tf.shape(images)[0]
    h, w = images.shape[1], images.shape[2]
    draws = tf.random.stateless_uniform([n, _RRC_ATTEMPTS + 1, 2], _op_seed(seed, _RRC))
    u_area, u_ratio = draws[:, :-1, 0], draws[:, :-1, 1]
    area = float(h * w) * (scale[0] + (scale[1] - scale[0]) * u_area)
    log_r0, log_r1 = math.log(ratio[0]), math.log(ratio[1])
    aspect = tf.exp(log_r0 + (log_r1 - log_r0) * u_ratio)
    cw = tf.round(tf.sqrt(area * aspect))
    ch = tf.round(tf.sqrt(area / aspect))
    fits = (cw >= 1) & (cw <= w) & (ch >= 1) & (ch <= h)  # [n, attempts]
    first = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)
    any_fit = tf.reduce_any(fits, axis=1)
    cw = tf.gather(cw, first, axis=1, batch_dims=1)
    ch = tf.gather(ch, first, axis=1, batch_dims=1)
    # Fallback: whole image with the aspect clamped to `ratio`, centred.
    in_ratio = w / h
    if in_ratio < ratio[0]:
        fw, fh = float(w), float(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        fw, fh = float(round(h * ratio[1])), float(h)
    else:
        fw, fh = float(w), float(h)
    cw = tf.where(any_fit, cw, fw)
    ch = tf.where(any_fit, ch, fh)
    u_pos = draws[:, -1]  # [n, 2]: placement
    top = tf.where(any_fit, tf.floor(u_pos[:, 0] * (h - ch + 1)), tf.floor((h - ch) / 2))
    left = tf.where(any_fit, tf.floor(u_pos[:, 1] * (w - cw + 1)), tf.floor((w - cw) / 2))
    # crop_and_resize maps normalised y to pixel y * (h - 1): box = first..last pixel centre.
    boxes = tf.stack([top / (h - 1), left / (w - 1),
                      (top + ch - 1) / (h - 1), (left + cw - 1) / (w - 1)], axis=1)
    return tf.image.crop_and_resize(images, boxes, tf.range(n), (h, w), method="bilinear")


# ---- Policies ---------------------------------------------------------------------------------

class BatchAugment:
    """`augment(images, seed) -> images` for one policy; built by `make_augment`."""

    def __init__(self, policy: str, *, input_shape: tuple[int, int, int], pad: int,
                 flip: bool, cutout_size: int | None, fill: tuple[float, ...] | None,
                 scale: tuple[float, float], ratio: tuple[float, float]):
        self.policy = policy
        self.input_shape = input_shape
        self.pad = pad
        self.flip = flip
        self.cutout_size = cutout_size
        self.fill = fill
        self.scale = scale
        self.ratio = ratio

    def __call__(self, images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        got = tuple(images.shape[1:])
        if len(got) != 3 or any(g is not None and g != e for g, e in zip(got, self.input_shape)):
            raise UserInputError(
                f"augmentation built for input_shape={self.input_shape} got images of shape "
                f"{got}; pass the data source's input_shape to make_augment"
            )
        images = tf.ensure_shape(images, (None, *self.input_shape))  # static h, w for the ops
        if self.policy == "inception":
            images = random_resized_crop(images, seed, self.scale, self.ratio)
        else:
            images = pad_and_crop(images, seed, self.pad)
        if self.flip:
            images = random_flip(images, seed)
        if self.policy == "cutout":
            images = cutout(images, seed, self.cutout_size, tf.constant(self.fill, tf.float32))
        return images

    def __repr__(self) -> str:
        parts = {"standard": f"pad={self.pad}, flip={self.flip}",
                 "cutout": f"pad={self.pad}, flip={self.flip}, cutout_size={self.cutout_size}, "
                           f"fill={self.fill}",
                 "inception": f"scale={self.scale}, ratio={self.ratio}, flip={self.flip}"}
        return f"BatchAugment({self.policy!r}, {parts[self.policy]})"


def make_augment(
    policy: str,
    *,
    input_shape: Sequence[int],
    mean: Sequence[float] | None = None,
    cutout_size: int | None = None,
    cutout_fill: str | float = "mean",
    flip: bool | None = None,
    pad: int | None = None,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
) -> BatchAugment | None:
    """The augmentation `policy` for images of `input_shape` (h, w, c); None for "none".

    `mean` is the data source's per-channel mean on the [0, 1] scale (`source.mean`), needed
    only by Cutout's default fill; the training loop supplies `input_shape` and `mean`.
    `cutout_size`, `pad`, `flip`: None = the defaults in this module's docstring. `scale`,
    `ratio`: the random-resized-crop ranges of policy "inception".
    """
    if policy not in POLICIES:
        raise UserInputError(
            f"unknown augmentation policy {policy!r}; choose one of {', '.join(POLICIES)}")
    if (not isinstance(input_shape, Sequence) or len(input_shape) != 3
            or not all(_is_int(d) and d > 0 for d in input_shape)):
        raise UserInputError(
            f"make_augment input_shape must be (height, width, channels) positive integers; "
            f"got {input_shape!r}")
    h, w, c = (int(d) for d in input_shape)
    side = min(h, w)
    if cutout_size is not None:
        if not _is_int(cutout_size) or cutout_size < 1:
            raise UserInputError(
                f"cutout_size must be a positive integer (pixels); got {cutout_size!r}")
        if cutout_size > side:
            raise UserInputError(
                f"cutout_size {cutout_size} is larger than the {h}x{w} image; use at most "
                f"{side}")
    if pad is not None and (not _is_int(pad) or pad < 0):
        raise UserInputError(f"pad must be a non-negative integer (pixels); got {pad!r}")
    if flip is not None and not isinstance(flip, bool):
        raise UserInputError(f"flip must be True, False or None; got {flip!r}")
    scale = tuple(float(s) for s in scale)
    ratio = tuple(float(r) for r in ratio)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise UserInputError(f"scale must be (low, high) with 0 < low <= high <= 1; got {scale}")
    if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
        raise UserInputError(f"ratio must be (low, high) with 0 < low <= high; got {ratio}")
    if policy == "none":
        return None
    if policy == "inception" and side < 2:
        raise UserInputError(f"policy 'inception' needs images of at least 2x2; got {h}x{w}")

    if pad is None:
        pad = 4 if side >= 32 else 2
    if flip is None:
        flip = policy == "inception" or c == 3
    fill = None
    if policy == "cutout":
        if cutout_size is None:
            cutout_size = 16 if side >= 32 else max(1, min(8, side // 2))
        fill = _cutout_fill(cutout_fill, mean, c)
    return BatchAugment(policy, input_shape=(h, w, c), pad=pad, flip=flip,
                        cutout_size=cutout_size, fill=fill, scale=scale, ratio=ratio)


def _cutout_fill(cutout_fill, mean, channels: int) -> tuple[float, ...]:
    if isinstance(cutout_fill, str):
        if cutout_fill != "mean":
            raise UserInputError(
                f"cutout_fill must be 'mean' or a number on the [0, 1] scale; got "
                f"{cutout_fill!r}")
        if mean is None:
            raise UserInputError(
                "cutout_fill='mean' needs the dataset mean; pass mean=source.mean to "
                "make_augment or set cutout_fill=0.0")
        values = tuple(float(m) for m in mean)
    elif isinstance(cutout_fill, (int, float, np.number)) and not isinstance(cutout_fill, bool):
        values = (float(cutout_fill),)
    else:
        raise UserInputError(
            f"cutout_fill must be 'mean' or a number on the [0, 1] scale; got {cutout_fill!r}")
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise UserInputError(
            f"mean has {len(values)} values for {channels}-channel images; pass one per channel")
    return values
