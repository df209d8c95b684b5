"""The ensemble: hpcsnp's headline prediction when the linear baseline ran.

Per fold, a convex combination of the CNN's and the baselines' predictions, its
weights chosen on validation predictions (from models that did not see those
phenotypes) of every line outside the test fold, then applied to the test fold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from hpcsnp.errors import InputError
from hpcsnp.folds import validation_fold
from hpcsnp.metrics import regression_metrics
from hpcsnp.rundir import (
    METRICS_JSON,
    PREDICTIONS_CSV,
    VAL_PREDICTIONS_CSV,
    DatasetRecord,
    FoldMetrics,
    RunDir,
)

WEIGHT_STEP = 0.05


def simplex_weights(k: int, step: float = WEIGHT_STEP) -> np.ndarray:
    """Every weight vector of length k with entries in multiples of ``step`` summing to 1."""
    m = int(round(1 / step))
    grid = [c for c in np.ndindex(*(m + 1,) * (k - 1)) if sum(c) <= m]
    return np.array([[*c, m - sum(c)] for c in grid], dtype=np.float64) / m


def ensemble_folds(run_dir: Path, ds: DatasetRecord, baselines: list[str]) -> list[tuple[dict, dict, pd.DataFrame]]:
    """The ``ensemble`` model: per fold, a convex combination of the CNN's and the baselines'
    predictions, weights (a grid of step WEIGHT_STEP) chosen by the mean squared error on
    validation predictions from models that did not see those phenotypes (the CNN only
    early-stops on them; the GBLUP is refitted on the training folds alone).  For test fold
    k they are pooled over every fold whose validation fold is not k: every line outside
    fold k once, K - 1 folds' worth (``pooled_validation``), since one fold's validation
    lines are too few to choose among several members.  The test fold plays no part in the
    choice.  Each member's test predictions are its usual ones (fitted on training +
    validation).  Returns (log row, weight row, test predictions) per fold; nothing when a
    fold lacks validation predictions (runs older than this)."""
    name = ds.dataset
    run = RunDir(run_dir)
    models = ["cnn", *baselines]
    if len(models) < 2:
        return []
    dirs = {i: {m: run.model_fold(name, m, i) for m in models} for i in range(1, ds.n_folds + 1)}
    if not all((d / VAL_PREDICTIONS_CSV).exists() for fold in dirs.values() for d in fold.values()):
        return []
    val = {i: _aligned([pd.read_csv(d[m] / VAL_PREDICTIONS_CSV, dtype={"sample_id": str}) for m in models])
           for i, d in dirs.items()}
    out = []
    grid = simplex_weights(len(models))
    for i, d in dirs.items():
        test = _aligned([pd.read_csv(d[m] / PREDICTIONS_CSV, dtype={"sample_id": str}) for m in models])
        P, y = pooled_validation(val, i, ds.n_folds)
        mse = (((P @ grid.T) - y[:, None]) ** 2).mean(axis=0)
        w = grid[int(np.argmin(mse))]
        pred = test["P"] @ w
        m = regression_metrics(test["truth"], pred)
        secs = sum(FoldMetrics.read(d[k] / METRICS_JSON).seconds for k in models)
        row = {"dataset": name, "model": "ensemble", "fold": i, **m, "seconds": round(secs, 2),
               "saliency_seconds": 0.0, "n_test": len(pred)}
        vm = regression_metrics(y, P @ w)
        weights = {"dataset": name, "fold": i, **{f"w_{k}": v for k, v in zip(models, w)},
                   "val_mse": vm["mse"], "val_pcc": vm["pcc"], "n_val": len(y),
                   **{f"val_pcc_{k}": regression_metrics(y, P[:, j])["pcc"] for j, k in enumerate(models)}}
        preds = pd.DataFrame({"dataset": name, "fold": i, "sample_id": test["ids"], "truth": test["truth"],
                              "prediction": pred})
        out.append((row, weights, preds))
    return out


def pooled_validation(val: dict, test_fold: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The members' validation predictions [lines, members] and the phenotypes of every fold
    whose validation fold is not ``test_fold``: each line outside the test fold once.

    >>> val = {j: {"P": np.full((2, 1), j), "truth": np.full(2, j)} for j in (1, 2, 3)}
    >>> pooled_validation(val, 1, 3)[1].tolist()  # fold 3 validates on fold 1: left out
    [1, 1, 2, 2]
    """
    folds = [j for j in sorted(val) if validation_fold(j, k) != test_fold]
    return (np.vstack([val[j]["P"] for j in folds]), np.concatenate([val[j]["truth"] for j in folds]))


def _aligned(frames: list[pd.DataFrame]) -> dict:
    """Predictions of several models for the same samples, as columns of one matrix."""
    ids = frames[0]["sample_id"].to_numpy()
    cols = []
    for f in frames:
        f = f.set_index("sample_id")
        if len(f) != len(ids) or not f.index.isin(ids).all():
            raise InputError("ensemble: the models' prediction files cover different samples")
        cols.append(f.loc[ids, "prediction"].to_numpy(np.float64))
    return {"ids": ids, "truth": frames[0]["truth"].to_numpy(np.float64), "P": np.column_stack(cols)}
