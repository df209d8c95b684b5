"""Attribution of predictions to SNPs.

Gradient saliency (SPEC section 5): for one sample's one-hot input x,
S_i = max_c |d f(x) / d x[i, c]|, computed for a whole batch in one compiled
call.  ``f`` is the network's output, i.e. the prediction on the
standardised scale when the target was standardised.  A fold's shard holds
the sum of S over its test samples and their count, so averaging over all
folds is a sum of shards divided by the number of samples.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def make_gradient_saliency(model, training: bool = False):
    """A compiled function: one-hot batch [b, N, 4] -> per-SNP S summed over the batch."""

    @tf.function(reduce_retracing=True)
    def batch_saliency(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            # sum over the batch: d(sum_j f(x_j))/dx_j = df(x_j)/dx_j, samples are independent
            y = tf.reduce_sum(model(x, training=training))
        g = tape.gradient(y, x)
        return tf.reduce_sum(tf.reduce_max(tf.abs(g), axis=-1), axis=0)

    return batch_saliency


def fold_saliency(model, dataset, n_variants: int, training: bool = False) -> tuple[np.ndarray, int]:
    """Sum of S over every sample of ``dataset`` (batches of (x, y, row)), and the count."""
    fn = make_gradient_saliency(model, training)
    total = np.zeros(n_variants, dtype=np.float64)
    count = 0
    for x, _, _ in dataset:
        total += fn(x).numpy()
        count += int(x.shape[0])
    return total, count
