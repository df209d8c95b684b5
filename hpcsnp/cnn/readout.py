"""Predictions of the linear network without its convolutions.

With linear convolutions (the default, as published) and dropout off, the network of
``hpcsnp.cnn.model.build_model`` is ISRU(z(x)) with z an affine function of the one-hot
input x [N, 4]: a fixed basis map, convolutions with biases and 'same' zero padding, a
residual sum, flatten and one dense unit.  So z(x) = z(0) + sum_n beta[n] . x[n] with
beta = dz/dx, the same for every input, and a line's prediction is z(0) plus one table
entry per SNP, T[n, code] = beta[n] . one_hot(code).  ``AffineReadout`` computes z(0) and
T with one forward and one backward pass of a single zero input, then predicts a batch of
int8 codes by a gather and a sum: ~4 operations per SNP and line instead of the ~12,500
FLOPs per SNP and line of the convolutions.  The same table gives every line's saliency
(``saliency_sum``): the gradient is the table's row times ISRU's slope at the line's z.
Training validates its model after every epoch and ``marginal`` predicts every line of the
store: on SoyNAM a fold took 6-7.5 % less time.  The result is the convolutions' to float32
rounding (the sum runs in float64; a test checks it).
"""

from __future__ import annotations

import numpy as np

from hpcsnp.cnn.fused import layer_sequence_problem
from hpcsnp.genotypes import ONE_HOT_TABLE


def affine_problem(model, cfg) -> str | None:
    """Why the model is not ISRU of an affine function of its input, or None when it is:
    the layer sequence ``fused.layer_sequence_problem`` checks (linear 'same' convolutions,
    dropout, residual sum, flatten, dense, ISRU) with linear convolutions."""
    if cfg.activation != "linear":
        return f"activation {cfg.activation}"
    return layer_sequence_problem(model)


class AffineReadout:
    """``model``'s predictions (dropout off) from its per-SNP effect table; the model's
    current weights are read by each ``table()`` call."""

    def __init__(self, model):
        import keras
        import tensorflow as tf

        pre = keras.Model(model.input, model.get_layer("dense").output)  # z: the weights are shared
        self.alpha = float(model.get_layer("isru").alpha)
        n = int(model.input.shape[1])
        self.offsets = 4 * np.arange(n, dtype=np.intp)[None, :] + 1  # code c of SNP j: T.flat[4 j + c + 1]
        codes_onehot = tf.constant(ONE_HOT_TABLE)  # row c + 1: the one-hot vector of code c

        @tf.function(autograph=False)
        def effects():
            x = tf.zeros([1, n, 4], tf.float32)
            with tf.GradientTape() as tape:
                tape.watch(x)
                z = pre(x, training=False)[0, 0]
            beta = tape.gradient(z, x)[0]  # [N, 4]: dz/dx, the same at every x
            return z, tf.matmul(beta, codes_onehot, transpose_b=True)  # [N, code + 1]

        self._effects = effects

    def table(self) -> tuple[float, np.ndarray]:
        """(z(0), T flattened [N * 4], row-major by SNP then code + 1), in float64."""
        z0, t = self._effects()
        return float(z0), t.numpy().astype(np.float64).reshape(-1)

    def z(self, codes, table) -> np.ndarray:
        """z (float64, before ISRU) for a batch of int8 codes [b, N] (-1 missing, 0, 1, 2), from ``table()``."""
        z0, t = table
        return z0 + t[self.offsets + np.asarray(codes, np.intp)].sum(axis=1)

    def predict(self, codes, table) -> np.ndarray:
        """The model's output (float32) for a batch of int8 codes [b, N], from ``table()``."""
        z = self.z(codes, table)
        return (z / np.sqrt(1.0 + self.alpha * z * z)).astype(np.float32)

    @staticmethod
    def peak(table) -> np.ndarray:
        """Per SNP, the largest magnitude of its table entries, max_c |beta[n, c]| (the table's
        4 entries of a SNP are its beta's 4: ONE_HOT_TABLE is a permutation)."""
        return np.abs(table[1].reshape(-1, 4)).max(axis=1)

    def saliency_sum(self, codes, table, peak) -> np.ndarray:
        """The publication's saliency (attribution/saliency.py) summed over a batch of int8
        codes [b, N]: per SNP, sum_b max_c |df(x_b) / dx_b[n, c]|.  df/dx = ISRU'(z) beta with
        ISRU'(z) = (1 + alpha z^2)^(-3/2) > 0, so it is sum_b ISRU'(z_b) times ``peak(table)``:
        no gradient pass (the gradient's to float32 rounding; a test checks it)."""
        z = self.z(codes, table)
        return np.power(1.0 + self.alpha * z * z, -1.5).sum() * peak
