"""Gradient-norm adaptation for batch augmentation (off by default).

Seed 003, 4.2: with M augmented copies per sample the mini-batch gradient has a smaller L2 norm
(Fig. 4), and "as the effective learning step is affected by this variance reduction, we can
adapt the learning rate to partially account for this change". The paper gives no formula; the
authors' code does (eladhoffer/convNet.pytorch, `trainer.py`, `Trainer.forward`, option
`--adapt-grad-norm N`, default None = off):

    every N steps, on the current batch of B samples x M copies:
        grad_mean  = (1/M) * sum_j || grad L(copy j of the B samples) ||_2    # M passes of B
        grad_all   = || grad L(all M*B examples) ||_2                         # one pass of M*B
        grad_scale = grad_mean / grad_all
    and until the next estimate the training loss is multiplied by grad_scale (so gradient and
    SGD update are), L being the mean cross-entropy of the batch, model in training mode.

So the update magnitude of the M*B batch matches that of an average single-copy batch of B.
Without batch-statistics layers grad L(all) is the mean of the M copy gradients, hence
grad_scale >= 1 (triangle inequality) and = 1 for M = 1. Weight decay is part of the authors'
optimizer, not of the loss, so it is not scaled: scale the data loss only.

Layout: `train_dataset_fn(..., repeats=M)` gives each replica [x_0..x_{b-1}] tiled M times
(copy-major), so copy j of a replica's batch is rows [j*b, (j+1)*b). Under a multi-replica
strategy the norms must be those of the all-reduced (global) gradients, i.e. copy j of the
global batch of B - let `grad_fn` return globally averaged gradients (e.g. all-reduce in the
replica context) or call this in a one-replica setting.

    scale = estimate_grad_norm_scale(grad_fn, images, labels, repeats=M)   # every N steps
    loss = data_loss * scale + regularisation                               # each step
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tensorflow as tf

GradFn = Callable[[tf.Tensor, tf.Tensor], Sequence[tf.Tensor]]


def adapt_grad_norm_scale(copy_grad_norms, full_grad_norm) -> tf.Tensor:
    """grad_scale = mean(copy_grad_norms) / full_grad_norm; 1.0 if the full norm is 0.

    `copy_grad_norms`: the M L2 norms of the gradients of single-copy batches (B samples each);
    `full_grad_norm`: the L2 norm of the gradient of the whole M*B batch.
    """
    copy_grad_norms = tf.convert_to_tensor(copy_grad_norms, tf.float32)
    full = tf.convert_to_tensor(full_grad_norm, tf.float32)
    grad_mean = tf.reduce_mean(copy_grad_norms)
    return tf.where(full > 0, grad_mean / tf.where(full > 0, full, 1.0), 1.0)


def split_copies(images: tf.Tensor, labels: tf.Tensor, repeats: int
                 ) -> list[tuple[tf.Tensor, tf.Tensor]]:
    """The M copy batches of one copy-major replica batch: [(x[j*b:(j+1)*b], y[...]) ...]."""
    b = tf.shape(labels)[0] // repeats
    return [(images[j * b:(j + 1) * b], labels[j * b:(j + 1) * b]) for j in range(repeats)]


def estimate_grad_norm_scale(grad_fn: GradFn, images: tf.Tensor, labels: tf.Tensor, *,
                             repeats: int) -> tf.Tensor:
    """The authors' grad_scale on one batch: M + 1 gradient evaluations with `grad_fn`.

    `grad_fn(images, labels)` returns the gradients of the mean training loss of that batch
    (data loss only, model in training mode), globally averaged across replicas if any.
    """
    if repeats == 1:
        return tf.constant(1.0)
    copy_norms = [tf.linalg.global_norm(list(grad_fn(x, y)))
                  for x, y in split_copies(images, labels, repeats)]
    full_norm = tf.linalg.global_norm(list(grad_fn(images, labels)))
    return adapt_grad_norm_scale(tf.stack(copy_norms), full_norm)
