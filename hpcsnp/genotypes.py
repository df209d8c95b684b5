"""The genotype codes every stage reads: int8 -1 (missing), 0, 1, 2 (copies of the ALT
allele), their one-hot channels, and the per-SNP mean dosage (the fill of a missing call
in the linear models and in the CNN's additive basis)."""

from __future__ import annotations

import numpy as np

# Rows of the one-hot table indexed by code + 1: -1, 0, 1, 2 (docs/method.md, Encoding).
ONE_HOT_TABLE = np.array([[1, 0, 0, 0],   # -1 missing
                          [0, 0, 1, 0],   # 0 AA
                          [0, 1, 0, 0],   # 1 Aa
                          [0, 0, 0, 1]],  # 2 aa
                         dtype=np.float32)



def mean_dosage(batches, n_snps: int, *, centred: bool = False, block_bytes: int = 1 << 24) -> np.ndarray:
    """Per-SNP mean dosage over the called genotypes of int8 code batches [b, n_snps]: 0..2,
    or centred (code - 1) with ``centred``; 0 for a SNP with no call.  Integer sums over
    blocks of ~16 MB, so cached rows are read without a float copy of them.

    >>> g = np.array([[0, 2, -1], [1, 2, -1]], np.int8)
    >>> mean_dosage([g[:1], g[1:]], 3).tolist(), mean_dosage([g], 3, centred=True).tolist()
    ([0.5, 2.0, 0.0], [-0.5, 1.0, 0.0])
    """
    total, called = np.zeros(n_snps, np.int64), np.zeros(n_snps, np.int64)
    step = max(1, block_bytes // max(n_snps, 1))
    for g in batches:
        for lo in range(0, len(g), step):
            b = g[lo:lo + step]
            missing = np.count_nonzero(b < 0, axis=0)
            total += b.sum(axis=0, dtype=np.int64) + missing  # a missing call's -1 taken back out
            called += len(b) - missing
    return np.divide(total - called if centred else total, called, out=np.zeros(n_snps), where=called > 0)
