"""The gradient every gradient attribution is built from."""

from __future__ import annotations

import tensorflow as tf


def gradient(model, x, training: bool):
    """d f(x_j) / d x_j for every sample j of the batch x, in one tape."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        # sum over the batch: d(sum_j f(x_j))/dx_j = df(x_j)/dx_j, samples are independent
        y = tf.reduce_sum(model(x, training=training))
    return tape.gradient(y, x)
