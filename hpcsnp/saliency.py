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


def make_gradient_saliency(model, training: bool = False, encoded: bool = True):
    """A compiled function: one-hot batch [b, N, 4] (or, with ``encoded=False``, int8
    genotypes [b, N], one-hot inside the graph) -> per-SNP S summed over the batch.
    Traced once for any batch length."""
    n = model.inputs[0].shape[1] if getattr(model, "inputs", None) else None
    spec = tf.TensorSpec((None, n, 4), tf.float32) if encoded else tf.TensorSpec((None, n), tf.int8)

    @tf.function(input_signature=(spec,), autograph=False)
    def batch_saliency(x):
        if not encoded:
            from hpcsnp.data import one_hot

            x = one_hot(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            # sum over the batch: d(sum_j f(x_j))/dx_j = df(x_j)/dx_j, samples are independent
            y = tf.reduce_sum(model(x, training=training))
        g = tape.gradient(y, x)
        return tf.reduce_sum(tf.reduce_max(tf.abs(g), axis=-1), axis=0)

    return batch_saliency


def fold_saliency(model, batches, n_variants: int, training: bool = False) -> tuple[np.ndarray, int]:
    """Sum of S over every sample of ``batches`` ((int8 genotypes, y, row) tuples), and the count."""
    fn = make_gradient_saliency(model, training, encoded=False)
    total = np.zeros(n_variants, dtype=np.float64)
    count = 0
    for x, _, _ in batches:
        total += fn(x).numpy()
        count += int(x.shape[0])
    return total, count
