"""Attribution of predictions to SNPs: one module per method, named for it.

A gradient method (``saliency``, ``smoothgrad``, ``ig``) defines ``per_snp(model, x,
training)``: the per-SNP attribution magnitude [b, N] of a one-hot batch x [b, N, 4];
``make_attribution`` compiles it over int8 genotypes (one-hot inside the graph) summed
over the batch, and a fold's shard holds the sum over its test samples and their count,
so averaging over all folds is a sum of shards divided by the number of samples.
``marginal`` (``MarginalAssociation``) is computed from a model's predictions over every
line of the store instead.  ``f`` is the network's output, i.e. the prediction on the
standardised scale when the target was standardised.  A method is registered by its name
in ``hpcsnp.config.ATTRIBUTION_METHODS`` (which orders the output columns); a new one is a
module here plus that name.
"""

from __future__ import annotations

import importlib
import time
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from hpcsnp.cnn.data import one_hot
from hpcsnp.config import ATTRIBUTION_METHODS


def method_module(name: str):
    """The module of attribution ``name``."""
    if name not in ATTRIBUTION_METHODS:
        raise ValueError(f"unknown attribution {name!r} (one of {', '.join(ATTRIBUTION_METHODS)})")
    return importlib.import_module(f"{__name__}.{name}")


def is_gradient(name: str) -> bool:
    """Whether ``name`` is computed from gradients on the test lines (it defines ``per_snp``)."""
    return hasattr(method_module(name), "per_snp")


def _input_spec(model, encoded: bool):
    n = model.inputs[0].shape[1] if getattr(model, "inputs", None) else None
    return tf.TensorSpec((None, n, 4), tf.float32) if encoded else tf.TensorSpec((None, n), tf.int8)


def make_attribution(model, method: str = "saliency", training: bool = False, encoded: bool = True,
                     **options):
    """A compiled function: one-hot batch [b, N, 4] (or, with ``encoded=False``, int8
    genotypes [b, N], one-hot inside the graph) -> per-SNP attribution magnitude summed
    over the batch.  Traced once for any batch length."""
    if not is_gradient(method):
        raise ValueError(f"{method!r} is not a gradient attribution")
    per_snp = method_module(method).per_snp

    @tf.function(input_signature=(_input_spec(model, encoded),), autograph=False)
    def batch_attribution(x):
        if not encoded:
            x = one_hot(x)
        return tf.reduce_sum(per_snp(model, x, training=training, **options), axis=0)

    return batch_attribution


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
    """Per gradient method, the sum over every sample of ``batches`` ((int8 genotypes, y, row)
    tuples) of its per-SNP attribution; the count; the seconds each method took."""
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
