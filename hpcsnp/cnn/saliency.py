"""Attribution of predictions to SNPs, each batched in one compiled call.

``saliency`` (docs/method.md, Saliency, the default): for one sample's one-hot input x,
S_i = max_c |d f(x) / d x[i, c]|.  ``smoothgrad`` (Smilkov et al. 2017): the same of the
gradient averaged over ``SMOOTH_SAMPLES`` copies of x with Gaussian noise of sd
``SMOOTH_NOISE`` (15 % of the one-hot range) added; with no noise it is the saliency.
``marginal`` (``MarginalAssociation``): not a gradient but the association of each SNP
with the fold's predictions over every line of the store.  ``ig``, integrated gradients
(Sundararajan et al. 2017): A_i = sum_c (x - x')[i, c] times
the gradient averaged along the straight path from x' to x (``IG_STEPS`` midpoints), with
x' the all-missing genotype (every SNP in the missing channel): an input the model has a
meaning for that carries no genotype information and does not depend on the data; the A_i
of a sample sum to f(x) - f(x') (completeness).  The shard of a method holds the sum over
a fold's test samples of |A_i| (S_i for the gradient methods) and their count, so
averaging over all folds is a sum of shards divided by the number of samples.  ``f`` is
the network's output, i.e. the prediction on the standardised scale when the target was
standardised.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from hpcsnp.cnn.data import one_hot

ATTRIBUTIONS = ("saliency", "smoothgrad", "ig")
SMOOTH_SAMPLES, SMOOTH_NOISE = 16, 0.15
IG_STEPS = 32


def _encoded(model, encoded: bool):
    n = model.inputs[0].shape[1] if getattr(model, "inputs", None) else None
    return tf.TensorSpec((None, n, 4), tf.float32) if encoded else tf.TensorSpec((None, n), tf.int8)


def _gradient(model, x, training):
    with tf.GradientTape() as tape:
        tape.watch(x)
        # sum over the batch: d(sum_j f(x_j))/dx_j = df(x_j)/dx_j, samples are independent
        y = tf.reduce_sum(model(x, training=training))
    return tape.gradient(y, x)


def missing_baseline(x):
    """The all-missing genotype: every SNP in the missing channel (one-hot [1, 0, 0, 0])."""
    return tf.one_hot(tf.zeros(tf.shape(x)[:-1], tf.int32), 4, dtype=x.dtype)


def integrated_gradients(model, x, steps: int = IG_STEPS, training: bool = False):
    """Per-SNP signed attributions [b, N] of one-hot inputs x [b, N, 4] against the
    all-missing baseline (midpoint rule over ``steps`` points)."""
    base = missing_baseline(x)
    diff = x - base
    total = tf.zeros_like(x)
    for k in range(steps):
        total += _gradient(model, base + ((k + 0.5) / steps) * diff, training)
    return tf.reduce_sum(diff * total / steps, axis=-1)


def smoothgrad(model, x, samples: int = SMOOTH_SAMPLES, noise: float = SMOOTH_NOISE, training: bool = False,
               seed: int = 0):
    """max_c |mean gradient over noisy copies| [b, N]; the noise comes from fixed seeds, so a
    fold's shard is the same on every run."""
    total = tf.zeros_like(x)
    for k in range(samples):
        eps = tf.random.stateless_normal(tf.shape(x), seed=[seed, k]) * noise if noise else 0.0
        total += _gradient(model, x + eps, training)
    return tf.reduce_max(tf.abs(total / samples), axis=-1)


def make_attribution(model, method: str = "saliency", training: bool = False, encoded: bool = True,
                     **options):
    """A compiled function: one-hot batch [b, N, 4] (or, with ``encoded=False``, int8
    genotypes [b, N], one-hot inside the graph) -> per-SNP attribution magnitude summed
    over the batch.  Traced once for any batch length."""
    if method not in ATTRIBUTIONS:
        raise ValueError(f"unknown attribution {method!r} (one of {', '.join(ATTRIBUTIONS)})")

    @tf.function(input_signature=(_encoded(model, encoded),), autograph=False)
    def batch_attribution(x):
        if not encoded:

            x = one_hot(x)
        if method == "saliency":
            per = tf.reduce_max(tf.abs(_gradient(model, x, training)), axis=-1)
        elif method == "smoothgrad":
            per = smoothgrad(model, x, training=training, **options)
        else:
            per = tf.abs(integrated_gradients(model, x, training=training, **options))
        return tf.reduce_sum(per, axis=0)

    return batch_attribution


class MarginalAssociation:
    """The ``marginal`` attribution, accumulated over batches of (int8 codes, predictions): per
    SNP, the covariance between the model's prediction and the SNP's dosage over the lines
    where it is called, divided by the dosage's standard deviation there -- the change in
    the predicted phenotype per standard deviation of the dosage, as a regression of the
    predictions on that SNP alone estimates it (a GWAS of the model's predictions, so a
    SNP's LD partners share its score, as in a GWAS).  Signed; a ranking uses its magnitude.

    >>> acc = MarginalAssociation(2)
    >>> acc.add(np.array([[0, 1], [1, 1], [2, -1]], np.int8), np.array([1.0, 2.0, 3.0]))
    >>> acc.result().round(4).tolist()  # SNP 1: called only where it is constant
    [0.8165, 0.0]
    """

    def __init__(self, n_variants: int):
        self.s_yd, self.s_y, self.s_d, self.s_dd = (np.zeros(n_variants) for _ in range(4))
        self.called = np.zeros(n_variants, dtype=np.int64)

    def add(self, codes: np.ndarray, pred: np.ndarray) -> None:
        ok = codes >= 0
        d = np.where(ok, codes, 0).astype(np.float64)
        pred = np.asarray(pred, dtype=np.float64)
        self.s_yd += pred @ d
        self.s_y += pred @ ok
        self.s_d += d.sum(axis=0)
        self.s_dd += (d * d).sum(axis=0)
        self.called += ok.sum(axis=0)

    def result(self) -> np.ndarray:
        n = np.maximum(self.called, 1)
        mean = self.s_d / n
        sd = np.sqrt(np.maximum(self.s_dd / n - mean * mean, 0.0))
        cov = (self.s_yd - mean * self.s_y) / n
        return np.where(sd > 1e-12, cov / np.where(sd > 1e-12, sd, 1.0), 0.0)


def make_gradient_saliency(model, training: bool = False, encoded: bool = True):
    """The publication's saliency as a compiled batch function (see make_attribution)."""
    return make_attribution(model, "saliency", training, encoded)


class AttributionSums(NamedTuple):
    """Per method, the per-SNP sum of its attribution over a fold's test lines; their count;
    per method, the seconds it took."""

    sums: dict
    n: int
    seconds: dict


def fold_attributions(model, batches, n_variants: int, methods=("saliency",),
                      training: bool = False) -> AttributionSums:
    """Per method, the sum over every sample of ``batches`` ((int8 genotypes, y, row)
    tuples) of its per-SNP attribution; the count; the seconds each method took."""
    import time

    fns = {m: make_attribution(model, m, training, encoded=False) for m in methods}
    totals = {m: np.zeros(n_variants, dtype=np.float64) for m in methods}
    seconds = dict.fromkeys(methods, 0.0)
    count = 0
    for x, _, _ in batches:
        for m, fn in fns.items():
            t = time.perf_counter()
            totals[m] += fn(x).numpy()
            seconds[m] += time.perf_counter() - t
        count += int(x.shape[0])
    return AttributionSums(totals, count, seconds)


def fold_saliency(model, batches, n_variants: int, training: bool = False) -> tuple[np.ndarray, int]:
    """Sum of S over every sample of ``batches`` ((int8 genotypes, y, row) tuples), and the count."""
    totals, count, _ = fold_attributions(model, batches, n_variants, ("saliency",), training)
    return totals["saliency"], count
