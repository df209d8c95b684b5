"""Linear baseline on the same folds: GBLUP / rrBLUP with REML shrinkage.

Model: y = 1 mu + g + e, g ~ N(0, sg2 K), e ~ N(0, se2 I), K = Z Z' / p with
Z the centred marker matrix of the fitting samples.  delta = se2 / sg2 is
estimated by REML on the fitting samples only (one eigendecomposition of
S K S, S projecting out the intercept, then a 1-D search over log delta, as in
EMMA, Kang et al. 2008); no test-fold information is used.  Predictions for
test samples are mu + K_test,fit (K + delta I)^-1 (y - mu): the same as ridge
regression on the markers with lambda = delta * p (rrBLUP).

Two encodings: ``dosage`` (0/1/2 centred by the fitting samples' means, missing
calls replaced by the column mean over all genotyped samples of the store - no
phenotypes are involved) and ``onehot`` (the CNN's four channels, missing as its
own category, centred the same way).

How it is computed: centring the columns of X by the fitting samples' means is
double-centring its Gram matrix, so every fold's kernels come from one uncentred
Gram matrix X X' of all samples per encoding, computed once per store and cached
in the run directory (``gram.npy``; exact integers in float32 where the encoding
is integer).  REML needs the eigenvalues of S K S and the projections of y on its
eigenvectors, not the eigenvectors themselves: a Householder reflection that
maps y onto the first axis, then tridiagonalisation (which keeps that axis), gives
both from the first components of the tridiagonal matrix's eigenvectors - about a
third of a full eigendecomposition.  Solves use Cholesky factorisations.  Fitting samples are the training and
validation folds ("everything but the test fold", as GBLUP is used; the CNN
sees the validation fold for early stopping).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from hpcsnp.errors import InputError

ENCODINGS = ("dosage", "onehot")
GRAM_VERSION = 1
GRAM_BLOCK = 1024  # SNPs per block when accumulating a Gram matrix


def dosage_fill(g: np.ndarray) -> np.ndarray:
    """Per-SNP mean dosage over the called genotypes (0 for an all-missing SNP)."""
    called = g >= 0
    n = called.sum(axis=0)
    total = np.where(called, g, 0).sum(axis=0, dtype=np.int64)
    return np.where(n > 0, total / np.maximum(n, 1), 0.0)


def uncentred(g: np.ndarray, encoding: str, fill: np.ndarray | None = None) -> np.ndarray:
    """int8 codes [n, p] -> the uncentred design (float64): dosage with missing calls
    replaced by ``fill`` (default: the column means of ``g``), or the one-hot channels."""
    if encoding == "dosage":
        x = g.astype(np.float64)
        miss = g < 0
        if miss.any():
            fill = dosage_fill(g) if fill is None else fill
            x = np.where(miss, fill, x)
        return x
    if encoding == "onehot":
        from hpcsnp.data import ONE_HOT_TABLE

        return ONE_HOT_TABLE[g.astype(np.int64) + 1].reshape(len(g), -1).astype(np.float64)
    raise InputError(f"unknown encoding {encoding!r} (one of {', '.join(ENCODINGS)})")


def encode(g: np.ndarray, encoding: str, means: np.ndarray | None = None, fill: np.ndarray | None = None):
    """int8 codes [n, p] -> float64 centred design; returns (Z, column means used).
    Missing dosages are replaced by ``fill`` (default: ``means``, else the column means),
    so with the default they centre to 0."""
    if encoding == "dosage":
        x = g.astype(np.float64)
        miss = g < 0
        x[miss] = np.nan
        if means is None:
            means = np.nanmean(x, axis=0) if fill is None else np.where(miss, fill, x).mean(axis=0)
            means = np.where(np.isnan(means), 0.0, means)  # an all-missing column
        x = np.where(miss, means if fill is None else fill, x)
    elif encoding == "onehot":
        from hpcsnp.data import ONE_HOT_TABLE

        x = uncentred(g, encoding)
        if means is None:
            means = x.mean(axis=0)
    else:
        raise InputError(f"unknown encoding {encoding!r} (one of {', '.join(ENCODINGS)})")
    return x - means, means


def gram_matrix(g: np.ndarray, encoding: str, fill: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Uncentred Gram matrix X X' of all rows of ``g`` [n, p] and the design's width.
    Accumulated over SNP blocks (memory: one n x block design).  Where the design holds
    small integers (one-hot; dosage without missing calls) the products are computed in
    float32, which is exact below 2^24; otherwise in float64."""
    n, p = g.shape
    exact = encoding == "onehot" or not (g < 0).any()
    if encoding == "dosage" and not exact and fill is None:
        fill = dosage_fill(g)
    dt = np.float32 if exact else np.float64
    out = np.zeros((n, n), dt)
    width = 0
    for j in range(0, p, GRAM_BLOCK):
        x = uncentred(g[:, j:j + GRAM_BLOCK], encoding,
                      None if fill is None else fill[j:j + GRAM_BLOCK]).astype(dt)
        width += x.shape[1]
        out += x @ x.T
    if exact and width * 4 >= 1 << 24:
        raise InputError(f"{width} design columns: too many for an exact float32 Gram matrix")
    return out.astype(np.float64), width


def centred_kernels(G: np.ndarray, width: int, fit: np.ndarray, new: np.ndarray):
    """K = Z_fit Z_fit' / width and Z_new Z_fit' / width for the design centred by the
    fitting rows' column means, from the uncentred Gram matrix G of all rows:
    Z_a Z_b' = X_a X_b' - (X_a m) 1' - 1 (X_b m)' + m'm 1 1' with m = X_fit' 1 / n_fit."""
    G_ff = G[np.ix_(fit, fit)]
    r = G_ff.mean(axis=1)  # X_fit m
    c = r.mean()  # m'm
    G_ff -= r[:, None]
    G_ff -= r[None, :]
    G_ff += c
    G_ff /= width
    G_nf = G[np.ix_(new, fit)]
    K_nf = (G_nf - G_nf.mean(axis=1)[:, None] - r[None, :] + c) / width
    return G_ff, K_nf


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
    A -= r[None, :]
    A -= r[:, None]
    A += r.mean()
    vals, eta2 = spectral_projections(A, y)
    del A
    keep = np.argsort(vals)[1:]
    xi, eta2 = np.maximum(vals[keep] - 1.0, 0.0), eta2[keep]
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


def spectral_projections(A: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues of the symmetric matrix A and the squared projections (u_i' y)^2 of y
    on its eigenvectors, without forming them.  With H a Householder reflection taking
    y to |y| e1, H A H = Q T Q' (LAPACK sytrd, lower: Q e1 = e1) and T = V diag(lam) V',
    so u_i' y = +-|y| V[0, i].  Within a repeated eigenvalue the single projections are
    not unique, their sum is (and REML uses only such sums).  ``A`` is overwritten."""
    from scipy.linalg import eigh_tridiagonal, lapack
    from scipy.linalg.blas import dsyr2

    n = len(y)
    norm = float(np.linalg.norm(y))
    if n < 3 or norm == 0.0:
        vals, vecs = np.linalg.eigh(A)
        return vals, (vecs.T @ y) ** 2
    u = y / norm
    s = -1.0 if u[0] > 0 else 1.0  # H u = s e1; v = u - s e1 avoids cancellation
    v = u.copy()
    v[0] -= s
    beta = 2.0 / (v @ v)
    w = A @ v
    q = beta * (w - 0.5 * beta * (v @ w) * v)
    A = A.T if A.flags.c_contiguous else np.asfortranarray(A)  # symmetric: the transpose is A, in Fortran order
    # H A H = A - v q' - q v' (lower triangle only: all that sytrd reads)
    A = dsyr2(-1.0, v, q, a=A, lower=1, overwrite_a=1)
    lwork = int(lapack.dsytrd_lwork(n, lower=1)[0])
    _, d, e, _, info = lapack.dsytrd(A, lower=1, lwork=lwork, overwrite_a=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"dsytrd failed (info {info})")
    del A
    lam, V = eigh_tridiagonal(d, e)
    return lam, (norm * V[0]) ** 2


def gblup_fit_predict(Z_fit, y_fit, Z_new, delta=None, inner=None):
    """GBLUP with K = Z Z'/p; returns (predictions for Z_new, delta, mu, inner_pred).

    ``inner`` = (fit rows, held-out rows), positions into Z_fit: also refit on the
    first set alone with the same delta (one Cholesky, no new REML) and predict the
    second; ``inner_pred`` holds those predictions (None without ``inner``).  The CV
    uses it for validation-fold predictions of a model that never saw the validation
    phenotypes, which is what ensemble weights are chosen on.
    """
    p = Z_fit.shape[1]
    return gblup_kernel_predict(Z_fit @ Z_fit.T / p, y_fit, Z_new @ Z_fit.T / p, delta, inner)


def gblup_kernel_predict(K, y_fit, K_new, delta=None, inner=None, overwrite=False):
    """GBLUP from kernels: K [fit, fit] and K_new [new, fit]; as gblup_fit_predict.
    ``overwrite``: K may be overwritten (saves one n x n copy)."""
    if delta is None:
        delta, _ = reml_delta(K, y_fit)
    inner_pred = None
    if inner is not None:  # before the full solve, which may overwrite K
        fit, held = inner
        a_in, mu_in = _gblup_solve(K[np.ix_(fit, fit)], y_fit[fit], delta, overwrite=True)
        inner_pred = mu_in + K[np.ix_(held, fit)] @ a_in
    alpha, mu = _gblup_solve(K, y_fit, delta, overwrite=overwrite)
    pred = mu + K_new @ alpha
    return pred, float(delta), mu, inner_pred


def _gblup_solve(K, y, delta, overwrite=False):
    """alpha = (K + delta I)^-1 (y - mu 1) with mu the GLS intercept; returns (alpha, mu).
    One Cholesky factorisation for both right-hand sides; alpha is linear in them."""
    from scipy.linalg import cho_factor, cho_solve

    n = len(y)
    H = K if overwrite else K.copy()
    H[np.diag_indices(n)] += delta
    Hi1, Hiy = cho_solve(cho_factor(H, lower=True, overwrite_a=True, check_finite=False),
                         np.column_stack([np.ones(n), y]), check_finite=False).T
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
    y = store.phenotype.astype(np.float64)
    out = []
    for enc in encodings:
        final = Path(run_dir) / dataset / f"baseline_{enc}" / f"fold_{fold}"
        if (final / "metrics.json").exists() and not force:
            out.append(json.loads((final / "metrics.json").read_text()))
            continue
        t0 = time.perf_counter()
        G, width, gram_s = cached_gram(store, enc, final.parent, log=log)
        K, K_test = centred_kernels(G, width, fit_rows, split.test)
        del G
        # validation-fold predictions from a fit on the training folds alone (same delta):
        # what `reduce` chooses the CNN + GBLUP ensemble weights on
        inner = (np.flatnonzero(~np.isin(fit_rows, split.val)), np.flatnonzero(np.isin(fit_rows, split.val)))
        pred, delta, mu, val_pred = gblup_kernel_predict(K, y[fit_rows], K_test, inner=inner, overwrite=True)
        del K
        m = regression_metrics(y[split.test], pred)
        m.update({"dataset": dataset, "fold": fold, "model": f"gblup_{enc}", "encoding": enc,
                  "delta": delta, "h2_reml": 1.0 / (1.0 + delta), "mu": mu, "seconds": time.perf_counter() - t0,
                  "gram_seconds": gram_s,
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


def cached_gram(store, encoding: str, cache_dir: Path, log=None) -> tuple[np.ndarray, int, float]:
    """The store's uncentred Gram matrix for one encoding: computed by the first fold that
    needs it and saved in ``cache_dir`` (gram.npy + gram.json, written atomically; a lock
    makes concurrent folds wait instead of computing it twice), then read by the others.
    A cache made from another store, or an older version of the store, is recomputed.
    Returns (G, design width, seconds spent computing it here; 0 when read)."""
    import fcntl

    from hpcsnp.store import atomic_write_text

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    meta_path, data_path = cache_dir / "gram.json", cache_dir / "gram.npy"
    zj = Path(store.path) / "zarr.json"
    key = {"gram_version": GRAM_VERSION, "encoding": encoding, "store": str(Path(store.path).resolve()),
           "store_mtime_ns": zj.stat().st_mtime_ns if zj.exists() else None,
           "n_samples": store.n_samples, "n_variants": store.n_variants,
           "source": store.attrs.get("source")}
    with open(cache_dir / "gram.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            meta = json.loads(meta_path.read_text()) if meta_path.exists() else None
        except ValueError:
            meta = None
        if meta and meta.get("key") == key and data_path.exists():
            return np.load(data_path).astype(np.float64), int(meta["width"]), 0.0
        t0 = time.perf_counter()
        g = _read_rows(store, np.arange(store.n_samples))
        G, width = gram_matrix(g, encoding)
        del g
        exact = bool(np.array_equal(G, np.round(G)) and np.abs(G).max(initial=0) < 1 << 24)
        tmp = data_path.with_name(f".gram.{os.getpid()}.npy")
        np.save(tmp, G.astype(np.float32) if exact else G)
        os.replace(tmp, data_path)
        seconds = time.perf_counter() - t0
        atomic_write_text(meta_path, json.dumps({"key": key, "width": width, "seconds": seconds,
                                                 "dtype": "float32" if exact else "float64"}, indent=2) + "\n")
        if log:
            log(f"[{store.name}] {encoding} Gram matrix of {store.n_samples} samples: {seconds:.1f}s "
                f"(cached in {data_path})")
        return G, width, seconds


def _read_rows(store, rows):
    from hpcsnp.data import RowSource

    src = RowSource(store, rows, np.zeros(len(rows), np.float32), cache=True)
    return src.cached
