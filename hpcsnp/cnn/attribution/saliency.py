"""``saliency``, the publication's attribution (docs/method.md, Saliency): for one sample's
one-hot input x, S_i = max_c |d f(x) / d x[i, c]|."""

from __future__ import annotations

import tensorflow as tf

from hpcsnp.cnn.attribution._gradient import gradient


def per_snp(model, x, training: bool = False):
    """S [b, N] of one-hot inputs x [b, N, 4]."""
    return tf.reduce_max(tf.abs(gradient(model, x, training)), axis=-1)
