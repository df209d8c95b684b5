"""``smoothgrad`` (Smilkov et al. 2017): the saliency of the gradient averaged over
``SAMPLES`` copies of x with Gaussian noise of sd ``NOISE`` (15 % of the one-hot range)
added; with no noise it is the saliency."""

from __future__ import annotations

import tensorflow as tf

from hpcsnp.cnn.attribution._gradient import gradient

SAMPLES, NOISE = 16, 0.15


def per_snp(model, x, training: bool = False, samples: int = SAMPLES, noise: float = NOISE, seed: int = 0):
    """max_c |mean gradient over noisy copies| [b, N]; the noise comes from fixed seeds, so a
    fold's shard is the same on every run."""
    total = tf.zeros_like(x)
    for k in range(samples):
        eps = tf.random.stateless_normal(tf.shape(x), seed=[seed, k]) * noise if noise else 0.0
        total += gradient(model, x + eps, training)
    return tf.reduce_max(tf.abs(total / samples), axis=-1)
