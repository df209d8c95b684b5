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
is integer).  REML needs the eigenvalues of S K S and y's quadratic forms in it, not
its eigenvectors: a Householder reflection that maps the centred y onto the first
axis, then tridiagonalisation (which keeps that axis), gives the eigenvalues and, for
every delta, the quadratic form from one tridiagonal solve; for a fold's kernel (centred
by its own rows) the same factorisation gives the GBLUP coefficients, so the only
Cholesky factorisation left is the validation-fold refit's.  Fitting samples are the training and
validation folds ("everything but the test fold", as GBLUP is used; the CNN
sees the validation fold for early stopping).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from hpcsnp.atomic import atomic_replace_dir, atomic_write_text
from hpcsnp.errors import FoldFailedError, InputError
from hpcsnp.folds import check_fold_usable, fold_split
from hpcsnp.genotypes import ONE_HOT_TABLE, mean_dosage
from hpcsnp.linear import tridiagonal
from hpcsnp.metrics import all_finite, regression_metrics
from hpcsnp.models import ENCODINGS, KERNELS, KINDS, model_name
from hpcsnp.resources import keep_freed_memory, memory_limit_bytes, provenance
from hpcsnp.rundir import (
    METRICS_JSON,
    PREDICTIONS_CSV,
    VAL_PREDICTIONS_CSV,
    RunDir,
    check_same_store,
    dataset_name,
    read_json,
)
from hpcsnp.store import open_store, read_genotype_rows

logger = logging.getLogger(__name__)

RKHS_THETAS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)  # K = exp(-theta d^2 / median d^2), chosen on the validation fold
RKHS_DISTANCES = ENCODINGS  # d: between dosages or between one-hot codes; chosen on the validation fold with theta
# rkhs_local: the grid's narrowest kernel, fixed.  The validation fold picks a wide kernel for RKHS alone (close to
# GBLUP); a narrow one only calls close relatives alike, which the ensemble can weigh beside it
RKHS_LOCAL_THETAS = (2.0,)
# a distance whose starting width's validation MSE exceeds the best found by more than this share is not
# walked further: along SoyNAM's grids a walk lowered its start's MSE by at most 2.7 %, while the losing
# distance started 40-55 % above the winner on the file with missing calls
RKHS_WALK_MARGIN = 0.10
KERNEL_KINDS = dict(zip(KERNELS, (RKHS_THETAS, RKHS_LOCAL_THETAS)))
# the RKHS fits' REML in float32: 3-4 of them per distance and fold, where they were most of the
# baselines' time
RKHS_SINGLE = True
# GBLUP's REML too, in the CV and predict's refit (its solve is a float64 Cholesky where the two-stage reduction
# runs); the GWAS keeps float64
GBLUP_SINGLE = True
GRAM_VERSION = 1
GRAM_BLOCK = 1024  # SNPs per block when accumulating a Gram matrix


def memory_needed(n_samples: int, n_variants: int) -> int:
    """Bytes the exact baselines need at their peak: the n x n Gram matrix (turned into
    distances in place for RKHS) and up to two more kernels of the fitting rows in float64
    (24 n^2), the int8 genotypes while the Gram matrix is built (n p), and ~200 MB for the
    interpreter and libraries.

    >>> round(memory_needed(5059, 4236) / 2**30, 2), round(memory_needed(100_000, 50_000) / 2**30)
    (0.79, 228)
    """
    return 24 * n_samples ** 2 + n_samples * n_variants + (200 << 20)


def check_memory(store, available: int | None = None) -> None:
    """Refuse, before any work, a baseline that would run out of memory halfway: it needs
    O(n^2) memory (``memory_needed``), and ``available`` (default: what this process may
    use, see resources.memory_limit_bytes) is less."""

    available = memory_limit_bytes() if available is None else available
    need = memory_needed(store.n_samples, store.n_variants)
    if available is not None and need > available:
        raise InputError(f"{store.path}: the GBLUP baseline of {store.n_samples:,} samples needs about "
                         f"{need / 2**30:.1f} GB of memory (it holds n x n matrices) and {available / 2**30:.1f} GB "
                         "is available here: use --solver scalable (GBLUP in memory of (n + p) x a block), "
                         "--no-baseline (hpcsnp cv) or a node with more memory")


def uncentred(g: np.ndarray, encoding: str, fill: np.ndarray | None = None, dtype=np.float64) -> np.ndarray:
    """int8 codes [n, p] -> the uncentred design (float64, or ``dtype``): dosage with missing
    calls replaced by ``fill`` (default: the column means of ``g``), or the one-hot channels."""
    if encoding == "dosage":
        x = g.astype(dtype, order="C")  # so that ravel() is a view
        miss = np.flatnonzero(g < 0)
        if len(miss):  # in place, by index: np.where would fault in another n x p block, a masked copy scans it
            fill = mean_dosage([g], g.shape[1]) if fill is None else np.asarray(fill, dtype)
            x.ravel()[miss] = fill[miss % g.shape[1]]
        return x
    if encoding == "onehot":

        return ONE_HOT_TABLE[g.astype(np.int64) + 1].reshape(len(g), -1).astype(dtype)
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
        fill = mean_dosage([g], g.shape[1])
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


class REMLSpectrum:
    """What REML needs of (K, y), from one tridiagonalisation and no eigenvectors.

    S K S (S = I - 11'/n projects out the intercept) gets the intercept direction 1
    sent to an eigenvalue c above all others (+ c 11'/n), so what is left are the
    n - 1 eigenvalues xi_i that REML sums over.  With H the Householder reflection
    that maps the centred y onto the first axis, H A H = Q T Q' (LAPACK sytrd, lower,
    keeps that axis: Q e1 = e1), so

        yc' (S K S + d I)^+ yc = |yc|^2 e1' (T + d I)^-1 e1      (a tridiagonal solve)

    and the log-determinant comes from T's eigenvalues alone.  For a kernel whose rows
    sum to zero (centred by the fitting samples, as every fold's is) the GLS intercept
    is mean(y) and the GBLUP coefficients (K + d I)^-1 yc = H Q (T + d I)^-1 |yc| e1 also
    come from it (``solve``, with the one-stage reduction's reflectors Q): no Cholesky
    factorisation.

    The tridiagonalisation is LAPACK's two-stage one where scipy's LAPACK has it
    (``tridiagonal.tridiagonalise``), which keeps no reflectors: ``solve`` is then not offered
    and the caller's Cholesky solve is faster than the one-stage reduction's extra time.

    ``single``: tridiagonalise in float32, about twice as fast as float64 at n = 4,000.  The
    eigenvalues are then exact to ~1e-7 of the largest (~n here) with the one-stage reduction,
    ~1.5e-6 with the two-stage one: REML's delta moves by ~1e-3 of itself, more where delta
    itself is that small (bench/RESULTS.md, "RKHS REML in single precision", "Two-stage
    tridiagonalisation").  The float32 reflectors are not kept: no ``solve``."""

    def __init__(self, K: np.ndarray, y: np.ndarray, overwrite: bool = False, covariates=None,
                 single: bool = False):
        from scipy.linalg import eigh_tridiagonal
        from scipy.linalg.blas import dsyr2

        n = len(y)
        if n < 3:
            raise InputError(f"REML needs at least 3 fitting samples, got {n}")
        self.n, self.mean = n, float(np.mean(y))
        yc = np.asarray(y, np.float64) - self.mean
        r = K.mean(axis=0)
        scale = float(np.abs(np.diagonal(K)).max(initial=0.0)) or 1.0
        self.centred = bool(np.abs(r).max() <= 1e-10 * scale)  # then S K S = K
        Q = covariate_basis(covariates)
        self.fixed = Q.shape[1]  # covariates besides the intercept (then solve() is not offered)
        # the reflectors give solve() where the one-stage reduction is the only one
        keep = self.centred and not self.fixed and not single and tridiagonal.two_stage(np.float64) is None
        A = K if overwrite and keep else K.astype(np.float64, copy=True)
        if not self.centred:  # S A S: A minus its row and column means plus the grand mean
            A -= r[None, :]
            A -= r[:, None]
            A += r.mean()
        if self.fixed:  # M A M and M yc, M = I - Q Q' projecting out the (centred) covariates
            AQ = A @ Q
            W = AQ - 0.5 * Q @ (Q.T @ AQ)
            A -= W @ Q.T
            A -= Q @ W.T
            yc -= Q @ (Q.T @ yc)
        c = 1.0 + float(np.trace(A))  # > every eigenvalue of the positive semi-definite S K S
        A += c / n
        norm = float(np.linalg.norm(yc))
        self.yy = norm * norm
        # H = I - beta v v' maps yc to s |yc| e1 (v = u - s e1 with s opposite to u[0]: no cancellation)
        u = yc / norm if norm > 0 else np.eye(1, n)[0]
        s = -1.0 if u[0] > 0 else 1.0
        v = u.copy()
        v[0] -= s
        beta = 2.0 / (v @ v)
        w = A @ v
        q = beta * (w - 0.5 * beta * (v @ w) * v)
        A = A.T if A.flags.c_contiguous else np.asfortranarray(A)  # symmetric: its transpose, in Fortran order
        A = dsyr2(-1.0, v, q, a=A, lower=1, overwrite_a=1)  # H A H = A - v q' - q v' (lower triangle)
        if single:
            A = A.astype(np.float32, order="F")
        d, e, self._q = tridiagonal.tridiagonalise(A, reflectors=keep)
        self.d, self.e = d.astype(np.float64), e.astype(np.float64)
        self._h = (v, beta, s * norm)
        lam = eigh_tridiagonal(self.d, self.e, eigvals_only=True, lapack_driver="sterf")
        # c belongs to the intercept; the covariates' directions are the fixed smallest, at 0
        self.xi = np.maximum(np.sort(np.delete(lam, np.argmax(lam)))[self.fixed:], 0.0)

    def _tridiagonal_solve(self, delta: float, b: np.ndarray) -> np.ndarray:
        from scipy.linalg import lapack

        _, _, _, x, info = lapack.dgtsv(self.e, self.d + delta, self.e, b[:, None])
        if info != 0:
            raise np.linalg.LinAlgError(f"dgtsv failed (info {info})")
        return x[:, 0]

    def quadratic(self, delta: float) -> float:
        """yc' (S K S + delta I)^+ yc, the restricted residual quadratic form (EMMA's sum of
        eta_i^2 / (xi_i + delta))."""
        return self.yy * float(self._tridiagonal_solve(delta, np.eye(1, self.n)[0])[0])

    def loglik(self, log_delta: float) -> float:
        """REML log-likelihood of delta (EMMA eq. 7), up to a constant."""
        d, n_q = np.exp(log_delta), self.n - 1 - self.fixed
        return 0.5 * (n_q * np.log(n_q / (2 * np.pi)) - n_q
                      - n_q * np.log(self.quadratic(d)) - np.sum(np.log(self.xi + d)))

    def maximise(self, grid=np.linspace(-10, 10, 201)) -> tuple[float, float]:
        """Grid over log delta, then golden-section refinement around the best point;
        returns (delta, log-likelihood)."""
        ll = np.array([self.loglik(t) for t in grid])
        i = int(np.argmax(ll))
        a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
        phi = (np.sqrt(5) - 1) / 2
        for _ in range(60):
            c, d = b - phi * (b - a), a + phi * (b - a)
            if self.loglik(c) > self.loglik(d):
                b = d
            else:
                a = c
        t = (a + b) / 2
        return float(np.exp(t)), float(self.loglik(t))

    @property
    def solvable(self) -> bool:
        """Whether ``solve`` is offered (a kernel centred by its rows, in float64, no covariates,
        where the one-stage reduction is the only one)."""
        return self._q is not None

    def solve(self, delta: float) -> np.ndarray:
        """(K + delta I)^-1 (y - mean(y)), for a kernel centred by its own rows (K 1 = 0)."""
        if self._q is None:
            raise ValueError("solve() needs a kernel whose rows sum to zero, tridiagonalised in float64 "
                             "by the one-stage reduction")
        x = self._tridiagonal_solve(delta, np.eye(1, self.n)[0] * self._h[2])
        refl, tau = self._q
        for i in range(self.n - 2, -1, -1):  # Q x = H(1) ... H(n-1) x, v_i = (1, refl[i+2:, i])
            if tau[i] != 0.0:
                t = x[i + 1:]
                f = tau[i] * (t[0] + refl[i + 2:, i] @ t[1:])
                t[0] -= f
                t[1:] -= f * refl[i + 2:, i]
        v, beta, _ = self._h
        return x - beta * (v @ x) * v


def reml_delta(K: np.ndarray, y: np.ndarray, grid=np.linspace(-10, 10, 201)) -> tuple[float, float]:
    """REML estimate of delta = se2/sg2 for y = mu + g + e, g ~ N(0, sg2 K), and its
    log-likelihood (see REMLSpectrum)."""
    return REMLSpectrum(K, y).maximise(grid)


def gblup_fit_predict(Z_fit, y_fit, Z_new, delta=None, inner=None) -> KernelPrediction:
    """GBLUP with K = Z Z'/p: the predictions for Z_new, delta, mu and inner_pred.

    ``inner`` = (fit rows, held-out rows), positions into Z_fit: also refit on the
    first set alone with the same delta (one Cholesky, no new REML) and predict the
    second; ``inner_pred`` holds those predictions (None without ``inner``).  The CV
    uses it for validation-fold predictions of a model that never saw the validation
    phenotypes, which is what ensemble weights are chosen on.
    """
    p = Z_fit.shape[1]
    return gblup_kernel_predict(Z_fit @ Z_fit.T / p, y_fit, Z_new @ Z_fit.T / p, delta, inner)


class KernelPrediction(NamedTuple):
    """A GBLUP fit's predictions of the new rows, its delta = se2 / sg2 and GLS intercept, and
    (with ``inner``) the predictions of the held-out inner rows from the inner fit rows."""

    pred: np.ndarray
    delta: float
    mu: float
    inner_pred: np.ndarray | None


class ValidatedPrediction(NamedTuple):
    """A baseline's test predictions, its validation-fold predictions (the ensemble's weights
    come from these) and the record of how it was fitted."""

    pred: np.ndarray
    val_pred: np.ndarray
    info: dict


def gblup_kernel_predict(K, y_fit, K_new, delta=None, inner=None, overwrite=False, covariates=None,
                         covariates_new=None, single=False) -> KernelPrediction:
    """GBLUP from kernels: K [fit, fit] and K_new [new, fit]; as gblup_fit_predict.
    ``overwrite``: K may be overwritten (saves one n x n copy).  With delta from REML, K
    centred by its rows (every CV fold's) and the one-stage reduction (no two-stage one in
    scipy's LAPACK), the solve reuses REML's tridiagonalisation; otherwise one Cholesky.
    ``covariates`` [fit, c] and ``covariates_new`` [new, c]: fixed effects besides the
    intercept (REML projects them out; b by GLS; mu is the intercept at their mean).
    ``single``: REML's tridiagonalisation in float32 (REMLSpectrum); the solve stays float64."""
    if covariates is not None:
        return _gblup_fixed(K, y_fit, K_new, delta, inner, overwrite, covariates, covariates_new, single)
    inner_K = None
    if inner is not None:  # taken before K may be overwritten
        fit, held = inner
        inner_K = K[np.ix_(fit, fit)], K[np.ix_(held, fit)]
    spectrum = None
    if delta is None:
        spectrum = REMLSpectrum(K, y_fit, overwrite=overwrite, single=single)
        delta, _ = spectrum.maximise()
    inner_pred = None
    if inner_K is not None:
        a_in, mu_in = gblup_solve(inner_K[0], y_fit[fit], delta, overwrite=True)
        inner_pred = mu_in + inner_K[1] @ a_in
    if spectrum is not None and spectrum.solvable:
        alpha, mu = spectrum.solve(delta), spectrum.mean
    else:  # REMLSpectrum overwrites K only when it is solvable
        alpha, mu = gblup_solve(K, y_fit, delta, overwrite=overwrite)
    pred = mu + K_new @ alpha
    return KernelPrediction(pred, float(delta), mu, inner_pred)


def _gblup_fixed(K, y_fit, K_new, delta, inner, overwrite, C, C_new, single=False) -> KernelPrediction:
    """gblup_kernel_predict with covariates: the inner fit has its own GLS b, with the same delta."""
    C, C_new = np.asarray(C, np.float64), np.asarray(C_new, np.float64)
    if delta is None:
        delta = REMLSpectrum(K, y_fit, covariates=C, single=single).maximise()[0]  # K is copied, not overwritten
    inner_pred = None
    if inner is not None:
        fit, held = inner
        alpha, b = gls_solve(K[np.ix_(fit, fit)], y_fit[fit], delta, fixed_design(C[fit]), overwrite=True)
        inner_pred = fixed_design(C[held], C[fit].mean(axis=0)) @ b + K[np.ix_(held, fit)] @ alpha
    alpha, b = gls_solve(K, y_fit, delta, fixed_design(C), overwrite=overwrite)
    pred = fixed_design(C_new, C.mean(axis=0)) @ b + K_new @ alpha
    return KernelPrediction(pred, float(delta), float(b[0]), inner_pred)



def gblup_solve(K, y, delta, overwrite=False):
    """alpha = (K + delta I)^-1 (y - mu 1) with mu the GLS intercept; returns (alpha, mu)."""
    alpha, b = gls_solve(K, y, delta, np.ones((len(y), 1)), overwrite)
    return alpha, float(b[0])


def gls_solve(K, y, delta, X, overwrite=False):
    """The mixed model y = X b + g + e, Var = sg2 (K + delta I): b by GLS and alpha = (K +
    delta I)^-1 (y - X b), so the BLUP of new lines is X_new b + K_new alpha; returns (alpha,
    b).  One Cholesky factorisation for every right-hand side; alpha is linear in them."""
    n = len(y)
    H = K if overwrite else K.copy()
    H[np.diag_indices(n)] += delta
    sol = spd_solve(H, np.asarray(np.column_stack([X, y]), np.float64))
    HiX, Hiy = sol[:, :-1], sol[:, -1]
    b = np.linalg.lstsq(X.T @ HiX, X.T @ Hiy, rcond=None)[0]
    return Hiy - HiX @ b, b


def spd_solve(H: np.ndarray, B: np.ndarray) -> np.ndarray:
    """H^-1 B for a symmetric positive definite H [n, n] (float64, kept) and B [n, k]:
    LAPACK's mixed-precision dsposv, written out (scipy does not wrap it).  The Cholesky
    factor is computed in float32, about three times as fast as in float64 here (n = 4,000,
    one thread: 0.27 against 0.8 s), and the solution refined in float64 until every
    column's residual passes dsposv's test, |r| <= sqrt(n) |x| |H|_inf eps: the backward
    error of a float64 solve, so the same solution to rounding.  Where H is too
    ill-conditioned for that (or not positive definite in float32), the float64 Cholesky
    solve, as dsposv falls back (overwriting H).  Memory: a float32 copy of H besides it."""
    from scipy.linalg import LinAlgError, cho_factor, cho_solve

    n = H.shape[0]
    single = H.astype(np.float32)
    norm = float(np.abs(single).sum(axis=1, dtype=np.float64).max(initial=0.0))  # |H|_inf, from the smaller copy
    try:
        factor = cho_factor(single, lower=True, overwrite_a=True, check_finite=False)
    except LinAlgError:
        factor = None
    del single
    if factor is not None:
        tol = np.sqrt(n) * norm * np.finfo(np.float64).eps / 2
        x = cho_solve(factor, B.astype(np.float32), check_finite=False).astype(np.float64)
        for _ in range(30):  # dsposv's ITERMAX
            r = B - H @ x
            if np.all(np.abs(r).max(axis=0) <= tol * np.abs(x).max(axis=0)):
                return x
            x += cho_solve(factor, r.astype(np.float32), check_finite=False)
    return cho_solve(cho_factor(H, lower=True, overwrite_a=True, check_finite=False), B, check_finite=False)


def covariate_basis(covariates) -> np.ndarray:
    """An orthonormal basis [n, k] of the centred covariates' columns (k their rank; [n, 0]
    without covariates): what REML projects out besides the intercept.

    >>> covariate_basis(np.array([[1.0, 2.0], [2.0, 4.0], [4.0, 8.0]])).shape  # one direction
    (3, 1)
    """
    if covariates is None or not np.shape(covariates)[1]:
        return np.zeros((0 if covariates is None else len(covariates), 0))
    C = np.asarray(covariates, np.float64)
    return orthonormal_columns(C - C.mean(axis=0))


def orthonormal_columns(A: np.ndarray) -> np.ndarray:
    """An orthonormal basis of A's column space (its rank columns; constant-zero or collinear
    columns add none).

    >>> orthonormal_columns(np.array([[1.0, 0.0, 2.0], [1.0, 0.0, 2.0], [0.0, 0.0, 0.0]])).shape
    (3, 1)
    """
    U, s, _ = np.linalg.svd(A, full_matrices=False)
    return U[:, s > 1e-9 * max(s.max(initial=0.0), 1e-300) * max(A.shape)]


def fixed_design(covariates, centre=None) -> np.ndarray:
    """[1, covariates - centre]: the fixed effects' design (centre: the fitting lines' means,
    so that b[0] is the intercept at the mean covariates)."""
    C = np.asarray(covariates, np.float64)
    return np.column_stack([np.ones(len(C)), C - (C.mean(axis=0) if centre is None else centre)])


def squared_distances(G: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between the rows of X from the Gram matrix G = X X',
    computed in place of G: d2_ij = G_ii + G_jj - 2 G_ij."""
    d = np.diagonal(G).copy()
    G *= -2.0
    G += d[:, None]
    G += d[None, :]
    np.maximum(G, 0.0, out=G)  # rounding
    return G


def rkhs_fit_predict(G: np.ndarray, y: np.ndarray, fit_rows, inner, test_rows,
                     thetas=RKHS_THETAS) -> ValidatedPrediction:
    """RKHS regression with a Gaussian kernel K = exp(-theta d^2 / m) on the distances of one
    encoding's Gram matrix ``G`` (overwritten); m: the median squared distance between the
    fitting samples.  A GBLUP whose kernel also captures non-additive similarity (Gianola &
    van Kaam 2008; Perez & de los Campos 2014).  The bandwidth theta is chosen from
    ``thetas`` by the validation fold's MSE, each fitted on the training folds alone (REML
    delta per theta; the grid walked downhill from its middle, see _rkhs_select); those
    validation predictions are the ones returned for the ensemble.  Then refitted with that
    theta on training + validation (with the validation fit's REML delta) and the test rows predicted."""
    D2 = squared_distances(G)
    return _rkhs_refit(D2, y, fit_rows, test_rows, _rkhs_select(D2, y, fit_rows, inner, thetas))


class RKHSFits:
    """The fits one fold's kernels share: the validation fit of every (distance, theta) tried
    and the refit of every (distance, theta) chosen.  The wide kernel's grid includes the
    narrow kernel's theta, so ``rkhs_local`` reads what ``rkhs`` computed where its walk
    went that far: the same numbers, fewer O(n^3) REML fits."""

    def __init__(self):
        self.val: dict = {}  # (distance, theta) -> (validation MSE, validation predictions)
        self.refit: dict = {}  # (distance, theta) -> ValidatedPrediction


def rkhs_choose(load_gram, y: np.ndarray, fit_rows, inner, test_rows, distances=RKHS_DISTANCES,
                thetas=RKHS_THETAS, fits: RKHSFits | None = None, covariates=None) -> ValidatedPrediction:
    """RKHS with the distance (dosage or one-hot codes, whose missing category keeps missing
    calls apart instead of filling them with a mean) and the bandwidth chosen together by the
    validation fold's MSE; ``load_gram(encoding)`` gives that encoding's Gram matrix (each is
    overwritten, and loaded again for the refit).  As rkhs_fit_predict otherwise; info also
    has ``distance`` and the validation MSE of every (distance, theta) tried.  ``fits``: fits
    of the same fold to reuse and add to (RKHSFits).  ``covariates`` [store rows, c]: fixed
    effects besides the intercept."""
    fits = fits or RKHSFits()
    best, by_distance, start, scale = None, {}, {}, {}
    loaded = [None, None]  # the distance whose squared distances are in memory, and they

    def select(d, walk):
        nonlocal best
        if loaded[0] != d:
            loaded[:] = d, take(d)
        choice = _rkhs_select(loaded[1], y, fit_rows, inner, thetas,
                              {t: v for (e, t), v in fits.val.items() if e == d}, covariates, walk, scale.get(d))
        fits.val.update({(d, t): v for t, v in choice.pop("fits").items()})
        by_distance[d], scale[d] = choice["val_mse_by_theta"], choice["scale"]
        # (a walk's result replaces its own start's: the same or lower MSE, and every width it tried)
        if best is None or choice["val_mse"] < best[1]["val_mse"] or best[0] == d:
            best = (d, choice)
        return choice["val_mse"]

    def take(d):  # d's squared distances, the matrix in memory dropped first: one n x n matrix at a time
        D2 = loaded[1] if loaded[0] == d else None
        loaded[:] = None, None
        return squared_distances(load_gram(d)) if D2 is None else D2
    # every distance's starting width first; then the walks, the best start's first, of every distance
    # whose start is within RKHS_WALK_MARGIN of the best MSE found so far (a grid of one width: no walk)
    for d in distances:
        start[d] = select(d, walk=len(distances) == 1)
    if len(distances) > 1 and len(thetas) > 1:
        for d in sorted(distances, key=start.get):
            if start[d] <= (1.0 + RKHS_WALK_MARGIN) * best[1]["val_mse"]:
                select(d, walk=True)
    by_distance = {d: by_distance[d] for d in distances}
    d, choice = best
    key = (d, choice["theta"])
    if key not in fits.refit:  # (no name here holds the matrix: _rkhs_refit frees it before its solve)
        fits.refit[key] = _rkhs_refit(take(d), y, fit_rows, test_rows, choice, covariates)
    pred, _, info = fits.refit[key]
    return ValidatedPrediction(pred, choice["val_pred"], {
        "kernel": "gaussian", "distance": d,
        **{k: v for k, v in info.items() if k not in ("kernel", "val_mse_by_theta")},
        "val_mse_by_theta": choice["val_mse_by_theta"], "val_mse_by_distance": by_distance})


def grid_descent(n: int, f, start: int) -> int:
    """The index of f's smallest value on 0..n-1, walking downhill from ``start``: first
    toward lower indices, else toward higher, while f decreases.  The grid's minimum when f is
    unimodal on it (descending, then ascending), in 3-4 evaluations instead of n; f is
    evaluated once per index visited.

    >>> calls = []
    >>> def f(i):
    ...     calls.append(i)
    ...     return (i - 1) ** 2
    >>> grid_descent(6, f, 3), calls
    (1, [3, 2, 1, 0])
    >>> calls.clear(); grid_descent(6, f, 0), calls
    (1, [0, 1, 2])
    """
    best, f_best = start, f(start)
    for step in (-1, 1):
        i, moved = best + step, False
        while 0 <= i < n:
            f_i = f(i)
            if not f_i < f_best:
                break
            best, f_best, moved = i, f_i, True
            i += step
        if moved:
            break
    return best


def rows_of(covariates, fit, new) -> dict:
    """gblup_kernel_predict's covariate arguments for ``fit`` and ``new`` store rows ({}: none)."""
    if covariates is None:
        return {}
    return {"covariates": covariates[fit], "covariates_new": covariates[new]}


def off_diagonal_median(D2: np.ndarray) -> float:
    """The median squared distance between two different rows, from the square matrix of
    squared distances (overwritten; a zero diagonal).  Each pair is in it twice, which leaves
    the median as it is, and the n zeros of the diagonal are the smallest values: the middle
    of the other n (n - 1) is found by one partition, without the upper triangle's indices.
    The upper triangle's median to the bit where the matrix is exactly symmetric;
    ``squared_distances`` of a Gram matrix that is not made of integers can round d_ij and
    d_ji apart in the last bit, and then so can the two medians.  The CV and ``predict``'s
    refit both use this one.

    >>> off_diagonal_median(np.array([[0.0, 1, 4], [1, 0, 9], [4, 9, 0]]))
    4.0
    """
    n = D2.shape[0]
    if n < 2:
        return 0.0
    flat = D2.reshape(-1)
    mid = n + n * (n - 1) // 2  # the off-diagonal values' middle two, as 0-based ranks among all n^2
    flat.partition([mid - 1, mid])
    return float((flat[mid - 1] + flat[mid]) / 2)


def _rkhs_select(D2, y, fit_rows, inner, thetas, done=None, covariates=None, walk=True, scale=None) -> dict:
    """theta by the validation MSE of fits on the training folds alone; D2: squared distances.
    The grid is walked downhill from its middle (grid_descent), not fitted whole: 3-4 of its
    6 REML fits, and the narrow kernel (rkhs_local) reuses the narrowest width's fit when the
    walk went there.  It finds the grid's minimum wherever the MSE falls, then rises, along
    the grid; on a flat curve with a second dip it can stop short of it (bench/RESULTS.md,
    "The whole default CV, profiled").  ``done``: theta -> (validation MSE, predictions)
    of fits already made; the result's ``fits`` holds every fit, made or reused.  ``walk``
    False: the walk's start alone.  ``scale``: the fitting rows' median squared distance, where
    an earlier call on the same D2 found it."""
    fit_rows = np.asarray(fit_rows)
    if scale is None:
        scale = off_diagonal_median(D2[np.ix_(fit_rows, fit_rows)]) or 1.0
    train, val = fit_rows[inner[0]], fit_rows[inner[1]]
    fits = dict(done or {})
    grid = sorted(thetas)

    def val_mse(i):
        theta = grid[i]
        if theta not in fits:
            K = np.exp(D2[np.ix_(train, train)] * (-theta / scale))
            K_val = np.exp(D2[np.ix_(val, train)] * (-theta / scale))
            p, delta, _, _ = gblup_kernel_predict(K, y[train], K_val, overwrite=True, single=RKHS_SINGLE,
                                                  **rows_of(covariates, train, val))
            fits[theta] = (float(np.mean((p - y[val]) ** 2)), p, delta)
        return fits[theta][0]

    start = (len(grid) - 1) // 2
    if not walk:
        val_mse(start)
    theta = grid[grid_descent(len(grid), val_mse, start) if walk else start]
    tried = {t: fits[t][0] for t in grid if t in fits}
    return {"theta": theta, "val_pred": fits[theta][1], "val_mse": fits[theta][0], "delta": fits[theta][2],
            "scale": scale,
            "val_mse_by_theta": {str(k): v for k, v in tried.items()}, "fits": fits}


def _rkhs_refit(D2, y, fit_rows, test_rows, choice: dict, covariates=None) -> ValidatedPrediction:
    """The chosen theta refitted on training + validation with the variance ratio its REML fit
    on the training folds estimated (a Cholesky solve: no second O(n^3) tridiagonalisation,
    which took a tenth of a fold's baselines); test predictions."""
    fit_rows = np.asarray(fit_rows)
    theta, scale = choice["theta"], choice["scale"]
    K = np.exp(D2[np.ix_(fit_rows, fit_rows)] * (-theta / scale))
    K_test = np.exp(D2[np.ix_(test_rows, fit_rows)] * (-theta / scale))
    del D2
    pred, delta, mu, _ = gblup_kernel_predict(K, y[fit_rows], K_test, delta=choice["delta"], overwrite=True,
                                              **rows_of(covariates, fit_rows, test_rows))
    return ValidatedPrediction(pred, choice["val_pred"], {
        "kernel": "gaussian", "theta": theta, "distance_scale": scale, "val_mse_by_theta": choice["val_mse_by_theta"],
        "delta": delta, "h2_reml": 1.0 / (1.0 + delta), "mu": mu})


def baseline_fold(store_path, fold: int, run_dir, *, encodings=KINDS, dataset=None,
                  force=False, solver: str = "auto", trait: str | None = None, pheno=None, covar=None,
                  covar_names=()) -> list[dict]:
    """Fit the baseline(s) for one test fold; writes RUN/<dataset>/baseline_<enc>/fold_<i>/.
    ``solver``: exact (n x n kernels), scalable (linear/scalable.py: GBLUP by conjugate
    gradients over the genotypes; the RKHS kernels are skipped, said in the log) or auto (exact
    where its memory fits).  ``trait``/``pheno``: a trait of a phenotype table; ``covar``/
    ``covar_names``: covariates, fixed effects (hpcsnp/traits.py)."""
    import pandas as pd

    from hpcsnp.linear.scalable import choose_solver, scalable_fold

    store = open_store(store_path, trait=trait, pheno=pheno, covar=covar, covar_names=covar_names)
    dataset = dataset_name(store, dataset)
    split = fold_split(store.fold, store.n_folds, fold)
    check_fold_usable(store, split)
    fit_rows = np.sort(np.concatenate([split.train, split.val]))
    run = RunDir(run_dir)
    run.write_dataset_info(dataset, store, force=force)
    done = {enc: run.baseline(dataset, enc, fold) / METRICS_JSON for enc in encodings}
    if not force:
        for enc, p in done.items():
            if p.exists():
                check_same_store(p, store, f"{dataset} fold {fold} baseline {enc}")
        if all(p.exists() for p in done.values()):  # nothing to fit: do not read the genotypes
            return [read_json(p) for p in done.values()]
    solver, why = choose_solver(store, solver)
    if solver == "exact":
        check_memory(store)
        keep_freed_memory(memory_needed(store.n_samples, store.n_variants))
    else:
        skipped = [e for e in encodings if e in KERNEL_KINDS]
        if skipped:
            logger.warning(f"[{dataset} fold {fold}] {', '.join(map(model_name, skipped))} skipped: the scalable "
                           f"solver ({why}) fits GBLUP only; an RKHS needs n x n kernels. The ensemble is formed "
                           "from the baselines that ran")
        encodings = [e for e in encodings if e not in KERNEL_KINDS]
        logger.info(f"[{dataset} fold {fold}] scalable solver: {why}")
    y = store.phenotype.astype(np.float64)
    out = []
    # validation-fold predictions from a fit on the training folds alone: what `reduce`
    # chooses the ensemble weights on
    inner = (np.flatnonzero(~np.isin(fit_rows, split.val)), np.flatnonzero(np.isin(fit_rows, split.val)))
    rkhs_fits = RKHSFits()  # what the two kernels share
    for enc in encodings:
        final = run.baseline(dataset, enc, fold)
        if (final / METRICS_JSON).exists() and not force:
            out.append(read_json(final / METRICS_JSON))
            continue
        t0 = time.perf_counter()
        if enc in KERNEL_KINDS:  # a function of distances, from the dosage and one-hot Gram matrices
            gram_s = 0.0

            def load_gram(e):
                nonlocal gram_s
                G, _, seconds = cached_gram(store, e, run.baseline_cache(dataset, e))
                gram_s += seconds
                return G

            pred, val_pred, info = rkhs_choose(load_gram, y, fit_rows, inner, split.test, thetas=KERNEL_KINDS[enc],
                                               fits=rkhs_fits, covariates=store.covariates)
        elif solver == "scalable":
            gram_s = 0.0
            pred, val_pred, info = scalable_fold(store, enc, y, fit_rows, inner, split.test)
        else:
            G, width, gram_s = cached_gram(store, enc, run.baseline_cache(dataset, enc))
            K, K_test = centred_kernels(G, width, fit_rows, split.test)
            del G
            pred, delta, mu, val_pred = gblup_kernel_predict(K, y[fit_rows], K_test, inner=inner, overwrite=True,
                                                             single=GBLUP_SINGLE,
                                                             **rows_of(store.covariates, fit_rows, split.test))
            del K
            info = {"encoding": enc, "delta": delta, "h2_reml": 1.0 / (1.0 + delta), "mu": mu, "solver": "exact"}
        m = regression_metrics(y[split.test], pred)
        if not all_finite(m):
            raise FoldFailedError(f"{dataset} fold {fold}: {model_name(enc)} test metrics cannot be computed (pcc "
                                  f"{m['pcc']}, mse {m['mse']}: its predictions are constant or not finite)")
        m.update({"dataset": dataset, "fold": fold, "model": model_name(enc), **info,
                  "store_id": store.store_id, "seconds": time.perf_counter() - t0,
                  "gram_seconds": gram_s,
                  "n_fit": len(fit_rows), "n_test": len(split.test), "fit_on": "training+validation folds",
                  **({"covariates": store.covariate_names} if store.covariates is not None else {}),
                  **provenance()})
        partial = final.with_name(final.name + ".partial")
        partial.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"sample_id": store.sample_id[split.test], "fold": fold, "truth": y[split.test],
                      "prediction": pred}).to_csv(partial / PREDICTIONS_CSV, index=False)
        val_rows = fit_rows[inner[1]]
        pd.DataFrame({"sample_id": store.sample_id[val_rows], "fold": split.val_fold, "truth": y[val_rows],
                      "prediction": val_pred}).to_csv(partial / VAL_PREDICTIONS_CSV, index=False)
        (partial / METRICS_JSON).write_text(json.dumps(m, indent=2) + "\n")
        atomic_replace_dir(partial, final)
        extra = f"{m['distance']} distance, theta {m['theta']:g}" if enc in KERNEL_KINDS else ""
        logger.info(f"[{dataset} fold {fold}] {model_name(enc)}: PCC {m['pcc']:.4f}  h2 {m['h2_reml']:.3f}  "
                    f"{extra}  {m['seconds']:.1f}s")
        out.append(m)
    return out


class CachedGram(NamedTuple):
    """A store's uncentred Gram matrix for one encoding, the design's width (the number of
    columns it sums over) and the seconds spent computing it (0 when read from the cache)."""

    matrix: np.ndarray
    width: int
    seconds: float


def cached_gram(store, encoding: str, cache_dir: Path) -> CachedGram:
    """The store's uncentred Gram matrix for one encoding: computed by the first fold that
    needs it and saved in ``cache_dir`` (gram.npy + gram.json, written atomically; a lock
    makes concurrent folds wait instead of computing it twice), then read by the others.
    A cache made from another store, or an older version of the store, is recomputed.
    Returns (G, design width, seconds spent computing it here; 0 when read)."""
    import fcntl


    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    meta_path, data_path = cache_dir / "gram.json", cache_dir / "gram.npy"
    zj = Path(store.path) / "zarr.json"
    key = {"gram_version": GRAM_VERSION, "encoding": encoding, "store": str(Path(store.path).resolve()),
           "store_mtime_ns": zj.stat().st_mtime_ns if zj.exists() else None,
           "n_samples": store.n_samples, "n_variants": store.n_variants,
           "source": store.attrs.get("source"), "store_id": store.store_id}
    with open(cache_dir / "gram.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            meta = json.loads(meta_path.read_text()) if meta_path.exists() else None
        except ValueError:
            meta = None
        if meta and meta.get("key") == key and data_path.exists():
            try:
                G = np.load(data_path)
                if G.shape == (store.n_samples, store.n_samples):
                    return CachedGram(G.astype(np.float64), int(meta["width"]), 0.0)
            except (OSError, ValueError, EOFError):  # a damaged cache is rebuilt
                pass
            logger.warning(f"{data_path} is damaged; computing it again")
        t0 = time.perf_counter()
        g = read_rows(store, np.arange(store.n_samples))
        G, width = gram_matrix(g, encoding)
        del g
        exact = bool(np.array_equal(G, np.round(G)) and np.abs(G).max(initial=0) < 1 << 24)
        tmp = data_path.with_name(f".gram.{os.getpid()}.npy")
        np.save(tmp, G.astype(np.float32) if exact else G)
        os.replace(tmp, data_path)
        seconds = time.perf_counter() - t0
        atomic_write_text(meta_path, json.dumps({"key": key, "width": width, "seconds": seconds,
                                                 "dtype": "float32" if exact else "float64"}, indent=2) + "\n")
        logger.info(f"[{store.name}] {encoding} Gram matrix of {store.n_samples} samples: {seconds:.1f}s "
                    f"(cached in {data_path})")
        return CachedGram(G, width, seconds)


def read_rows(store, rows):
    """The genotypes of ``rows`` (sorted store rows) as one int8 array, chunk by chunk."""

    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows), store.n_variants), dtype=np.int8)
    step = store.chunk_rows
    for lo in range(0, store.n_samples, step):
        hi = min(lo + step, store.n_samples)
        a, b = np.searchsorted(rows, [lo, hi])
        if a < b:
            out[a:b] = read_genotype_rows(store, lo, hi)[rows[a:b] - lo]
    return out
