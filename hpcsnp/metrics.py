"""Accuracy of predictions against the truth: the numbers every model reports."""

from __future__ import annotations

import numpy as np


def regression_metrics(truth, pred) -> dict:
    """Pearson correlation (nan when either side is constant), mean squared and absolute error.

    >>> m = regression_metrics([1.0, 2.0, 3.0], [1.0, 2.5, 2.5])
    >>> round(m["pcc"], 4), round(m["mse"], 4), round(m["mae"], 4)
    (0.866, 0.1667, 0.3333)
    """
    truth = np.asarray(truth, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    err = pred - truth
    if len(truth) > 1 and np.std(pred) > 0 and np.std(truth) > 0:
        pcc = float(np.corrcoef(pred, truth)[0, 1])
    else:
        pcc = float("nan")  # undefined for constant predictions; reported, not hidden
    return {"pcc": pcc, "mse": float(np.mean(err ** 2)), "mae": float(np.mean(np.abs(err)))}


def all_finite(m: dict) -> bool:
    """Whether pcc, mse and mae are all finite numbers (what a finished fold must have)."""
    return all(isinstance(m.get(k), (int, float)) and np.isfinite(m[k]) for k in ("pcc", "mse", "mae"))
