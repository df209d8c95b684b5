"""``ig``, integrated gradients (Sundararajan et al. 2017): A_i = sum_c (x - x')[i, c] times
the gradient averaged along the straight path from x' to x (``STEPS`` midpoints), with x'
the all-missing genotype (every SNP in the missing channel): an input the model has a
meaning for that carries no genotype information and does not depend on the data.  The A_i
of a sample sum to f(x) - f(x') (completeness); the shard sums |A_i|."""

from __future__ import annotations

import tensorflow as tf

from hpcsnp.cnn.attribution._gradient import gradient

STEPS = 32


def missing_baseline(x):
    """The all-missing genotype: every SNP in the missing channel (one-hot [1, 0, 0, 0])."""
    return tf.one_hot(tf.zeros(tf.shape(x)[:-1], tf.int32), 4, dtype=x.dtype)


def integrated_gradients(model, x, steps: int = STEPS, training: bool = False):
    """Per-SNP signed attributions [b, N] of one-hot inputs x [b, N, 4] against the
    all-missing baseline (midpoint rule over ``steps`` points)."""
    base = missing_baseline(x)
    diff = x - base
    total = tf.zeros_like(x)
    for k in range(steps):
        total += gradient(model, base + ((k + 0.5) / steps) * diff, training)
    return tf.reduce_sum(diff * total / steps, axis=-1)


def per_snp(model, x, training: bool = False, steps: int = STEPS):
    """|A_i| [b, N]."""
    return tf.abs(integrated_gradients(model, x, steps, training))
