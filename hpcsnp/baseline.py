"""Linear baseline on the same folds: GBLUP / rrBLUP with REML shrinkage.

Model: y = 1 mu + g + e, g ~ N(0, sg2 K), e ~ N(0, se2 I), K = Z Z' / p with
Z the centred marker matrix of the fitting samples.  delta = se2 / sg2 is
estimated by REML on the fitting samples only (one eigendecomposition of
S K S, S projecting out the intercept, then a 1-D search over log delta, as in
EMMA, Kang et al. 2008); no test-fold information is used.  Predictions for
test samples are mu + K_test,fit (K + delta I)^-1 (y - mu): the same as ridge
regression on the markers with lambda = delta * p (rrBLUP).

Two encodings: ``dosage`` (0/1/2 centred by the fitting samples' means, missing
calls replaced by that mean) and ``onehot`` (the CNN's four channels, missing as
its own category, centred the same way).  Fitting samples are the training and
validation folds ("everything but the test fold", as GBLUP is used; the CNN
sees the validation fold for early stopping).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from hpcsnp.errors import InputError

ENCODINGS = ("dosage", "onehot")


def encode(g: np.ndarray, encoding: str, means: np.ndarray | None = None):
    """int8 codes [n, p] -> float64 centred design; returns (Z, column means used)."""
    if encoding == "dosage":
        x = g.astype(np.float64)
        miss = g < 0
        x[miss] = np.nan
        if means is None:
            means = np.nanmean(x, axis=0)
            means = np.where(np.isnan(means), 0.0, means)  # an all-missing column
        x = np.where(miss, means, x)  # missing -> mean, so it centres to 0
    elif encoding == "onehot":
        from hpcsnp.data import ONE_HOT_TABLE

        x = ONE_HOT_TABLE[g.astype(np.int64) + 1].reshape(len(g), -1).astype(np.float64)
        if means is None:
            means = x.mean(axis=0)
    else:
        raise InputError(f"unknown encoding {encoding!r} (one of {', '.join(ENCODINGS)})")
    return x - means, means


def reml_loglik(log_delta, xi, eta2, n_q):
    """REML log-likelihood of delta (EMMA eq. 7), up to a constant; xi are the
    non-zero eigenvalues of S K S and eta2 the squared projections of y on them."""
    d = np.exp(log_delta)
    return 0.5 * (n_q * np.log(n_q / (2 * np.pi)) - n_q
                  - n_q * np.log(np.sum(eta2 / (xi + d))) - np.sum(np.log(xi + d)))


def reml_delta(K: np.ndarray, y: np.ndarray, grid=np.linspace(-10, 10, 201)) -> tuple[float, float]:
    """REML estimate of delta = se2/sg2 for y = mu + g + e, g ~ N(0, sg2 K).
    Grid over log delta, then golden-section refinement around the best point."""
    n = len(y)
    # S (K + I) S has eigenvalue 0 on the intercept direction and xi + 1 >= 1 on the
    # n - 1 others, even when K is rank-deficient (p < n): drop the smallest (EMMA).
    # S A S (S = I - 11'/n) is A minus its row and column means plus the grand mean:
    # O(n^2) instead of two n^3 products.
    A = K + np.eye(n)
    r = A.mean(axis=0)
    A = A - r[None, :] - r[:, None] + r.mean()
    vals, vecs = np.linalg.eigh(A)
    del A
    keep = np.argsort(vals)[1:]
    xi, U = np.maximum(vals[keep] - 1.0, 0.0), vecs[:, keep]
    eta2 = (U.T @ y) ** 2
    ll = np.array([reml_loglik(t, xi, eta2, n - 1) for t in grid])
    i = int(np.argmax(ll))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    phi = (np.sqrt(5) - 1) / 2
    a, b = lo, hi
    for _ in range(60):
        c, d = b - phi * (b - a), a + phi * (b - a)
        if reml_loglik(c, xi, eta2, n - 1) > reml_loglik(d, xi, eta2, n - 1):
            b = d
        else:
            a = c
    t = (a + b) / 2
    return float(np.exp(t)), float(reml_loglik(t, xi, eta2, n - 1))


def gblup_fit_predict(Z_fit, y_fit, Z_new, delta=None, inner=None):
    """GBLUP with K = Z Z'/p; returns (predictions for Z_new, delta, mu, inner_pred).

    ``inner`` = (fit rows, held-out rows), positions into Z_fit: also refit on the
    first set alone with the same delta (one Cholesky, no new REML) and predict the
    second; ``inner_pred`` holds those predictions (None without ``inner``).  The CV
    uses it for validation-fold predictions of a model that never saw the validation
    phenotypes, which is what ensemble weights are chosen on.
    """
    p = Z_fit.shape[1]
    K = Z_fit @ Z_fit.T / p
    if delta is None:
        delta, _ = reml_delta(K, y_fit)
    alpha, mu = _gblup_solve(K, y_fit, delta)
    pred = mu + (Z_new @ Z_fit.T / p) @ alpha
    inner_pred = None
    if inner is not None:
        fit, held = inner
        a_in, mu_in = _gblup_solve(K[np.ix_(fit, fit)], y_fit[fit], delta)
        inner_pred = mu_in + K[np.ix_(held, fit)] @ a_in
    return pred, float(delta), mu, inner_pred


def _gblup_solve(K, y, delta):
    """alpha = (K + delta I)^-1 (y - mu 1) with mu the GLS intercept; returns (alpha, mu).
    One factorisation for both right-hand sides; alpha is linear in them."""
    n = len(y)
    H = K + delta * np.eye(n)
    Hi1, Hiy = np.linalg.solve(H, np.column_stack([np.ones(n), y])).T
    mu = float(Hiy.sum() / Hi1.sum())
    return Hiy - mu * Hi1, mu


def baseline_fold(store_path, fold: int, run_dir, *, encodings=ENCODINGS, dataset=None,
                  force=False, log=None) -> list[dict]:
    """Fit the baseline(s) for one test fold; writes RUN/<dataset>/baseline_<enc>/fold_<i>/."""
    import pandas as pd

    from hpcsnp.data import fold_split
    from hpcsnp.resources import provenance
    from hpcsnp.store import atomic_replace_dir, open_store
    from hpcsnp.train import regression_metrics, write_dataset_info

    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    store = open_store(store_path)
    dataset = dataset or store.name
    split = fold_split(store.fold, store.n_folds, fold)
    fit_rows = np.sort(np.concatenate([split.train, split.val]))
    write_dataset_info(run_dir, dataset, store)
    done = {enc: Path(run_dir) / dataset / f"baseline_{enc}" / f"fold_{fold}" / "metrics.json" for enc in encodings}
    if not force and all(p.exists() for p in done.values()):  # nothing to fit: do not read the genotypes
        return [json.loads(p.read_text()) for p in done.values()]
    g_fit = _read_rows(store, fit_rows)
    g_test = _read_rows(store, split.test)
    y = store.phenotype.astype(np.float64)
    out = []
    for enc in encodings:
        final = Path(run_dir) / dataset / f"baseline_{enc}" / f"fold_{fold}"
        if (final / "metrics.json").exists() and not force:
            out.append(json.loads((final / "metrics.json").read_text()))
            continue
        t0 = time.perf_counter()
        Z_fit, means = encode(g_fit, enc)
        Z_test, _ = encode(g_test, enc, means)
        # validation-fold predictions from a fit on the training folds alone (same delta):
        # what `reduce` chooses the CNN + GBLUP ensemble weights on
        inner = (np.flatnonzero(~np.isin(fit_rows, split.val)), np.flatnonzero(np.isin(fit_rows, split.val)))
        pred, delta, mu, val_pred = gblup_fit_predict(Z_fit, y[fit_rows], Z_test, inner=inner)
        m = regression_metrics(y[split.test], pred)
        m.update({"dataset": dataset, "fold": fold, "model": f"gblup_{enc}", "encoding": enc,
                  "delta": delta, "h2_reml": 1.0 / (1.0 + delta), "mu": mu, "seconds": time.perf_counter() - t0,
                  "n_fit": len(fit_rows), "n_test": len(split.test), "fit_on": "training+validation folds",
                  **provenance()})
        partial = final.with_name(final.name + ".partial")
        partial.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"sample_id": store.sample_id[split.test], "fold": fold, "truth": y[split.test],
                      "prediction": pred}).to_csv(partial / "predictions.csv", index=False)
        val_rows = fit_rows[inner[1]]
        pd.DataFrame({"sample_id": store.sample_id[val_rows], "fold": split.val_fold, "truth": y[val_rows],
                      "prediction": val_pred}).to_csv(partial / "val_predictions.csv", index=False)
        (partial / "metrics.json").write_text(json.dumps(m, indent=2) + "\n")
        atomic_replace_dir(partial, final)
        log(f"[{dataset} fold {fold}] GBLUP {enc}: PCC {m['pcc']:.4f}  h2 {m['h2_reml']:.3f}  {m['seconds']:.1f}s")
        out.append(m)
    return out


def _read_rows(store, rows):
    from hpcsnp.data import RowSource

    src = RowSource(store, rows, np.zeros(len(rows), np.float32), cache=True)
    return src.cached
