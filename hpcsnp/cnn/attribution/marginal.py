"""``marginal``: not a gradient but the association of each SNP with the fold's predictions
over every line of the store (a GWAS of the model's predictions).  Signed; numpy only."""

from __future__ import annotations

import numpy as np


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
