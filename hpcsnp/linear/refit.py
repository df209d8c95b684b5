"""The linear baselines refitted on every phenotyped line of a run, for ``hpcsnp predict``:
GBLUP of either encoding as marker effects (one pass over new lines' genotypes), and the
RKHS as a kernel fit over the phenotyped lines' designs.  Each is cached in the run, keyed
by the store's identity.  numpy only."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass

import numpy as np

from hpcsnp.atomic import atomic_write_text
from hpcsnp.errors import InputError
from hpcsnp.genotypes import mean_dosage
from hpcsnp.linear.baseline import (
    GBLUP_SINGLE,
    KERNEL_KINDS,
    REMLSpectrum,
    cached_gram,
    centred_kernels,
    check_memory,
    fixed_design,
    gblup_solve,
    gls_solve,
    off_diagonal_median,
    read_rows,
    squared_distances,
    uncentred,
)
from hpcsnp.rundir import METRICS_JSON, DatasetRecord, FoldMetrics, RunDir
from hpcsnp.store import row_chunks

logger = logging.getLogger(__name__)

REFIT_VERSION = 2  # 2: the RKHS refit records its distance


@dataclass
class MarkerEffects:
    """A GBLUP fit as marker effects: prediction = mu + (X - means) @ beta, with X the
    uncentred design of an encoding and missing dosages replaced by ``fill``."""

    encoding: str
    beta: np.ndarray
    means: np.ndarray
    fill: np.ndarray
    mu: float
    delta: float

    def predict(self, g: np.ndarray) -> np.ndarray:

        return self.mu + (uncentred(g, self.encoding, self.fill) - self.means) @ self.beta


def marker_effects(store, encoding: str, G: np.ndarray, width: int, fit_rows: np.ndarray) -> MarkerEffects:
    """GBLUP fitted on ``fit_rows`` (REML delta), turned into marker effects by one pass over
    the store.  ``G``: the store's uncentred Gram matrix (baseline.cached_gram).  On a fold's
    fitting rows it reproduces that fold's baseline predictions (tested)."""

    fit_rows = np.sort(np.asarray(fit_rows, dtype=np.int64))
    K, _ = centred_kernels(G, width, fit_rows, fit_rows[:0])
    alpha, mu, delta = fit_kernel(store, K, fit_rows)
    del K
    # missing dosages are filled with the SNP's mean over every sample of the store, as the
    # baseline's Gram matrix does (no phenotype involved)
    fill = mean_dosage((g for _, _, g in row_chunks(store)), store.n_variants)
    beta, col_sum = None, None
    for lo, hi, g in row_chunks(store):
        a, b = np.searchsorted(fit_rows, [lo, hi])
        if a == b:
            continue
        x = uncentred(g[fit_rows[a:b] - lo], encoding, fill)
        beta = x.T @ alpha[a:b] if beta is None else beta + x.T @ alpha[a:b]
        col_sum = x.sum(axis=0) if col_sum is None else col_sum + x.sum(axis=0)
    means = col_sum / len(fit_rows)
    beta = (beta - means * alpha.sum()) / width  # Z' alpha with Z = X - means (alpha sums to ~0)
    return MarkerEffects(encoding, beta, means, fill, float(mu), float(delta))


def fit_kernel(store, K: np.ndarray, fit_rows, delta: float | None = None) -> tuple[np.ndarray, float, float]:
    """(alpha, mu, delta) of the GBLUP of ``fit_rows`` on kernel K [fit, fit] (overwritten):
    delta by REML unless given, with the store's covariates as fixed effects where it has them
    (mu is then the intercept at their mean over the fitted lines)."""
    y = store.phenotype.astype(np.float64)[fit_rows]
    if store.covariates is not None:
        C = store.covariates[fit_rows]
        if delta is None:
            delta, _ = REMLSpectrum(K, y, covariates=C, single=GBLUP_SINGLE).maximise()
        alpha, b = gls_solve(K, y, delta, fixed_design(C), overwrite=True)
        return alpha, float(b[0]), float(delta)
    if delta is not None:
        return (*gblup_solve(K, y, delta, overwrite=True), float(delta))
    spectrum = REMLSpectrum(K, y, overwrite=True, single=GBLUP_SINGLE)  # as the CV's GBLUP
    delta, _ = spectrum.maximise()
    if spectrum.solvable:  # a kernel centred by its own rows: the solve reuses REML's work
        return spectrum.solve(delta), spectrum.mean, float(delta)
    return (*gblup_solve(K, y, delta, overwrite=True), float(delta))  # REMLSpectrum left K as it was


class PredictionErrorVariance:
    """rrBLUP's prediction error variance and reliability of a GBLUP refit's predictions of new
    lines (exact path).  With K = Z Z' / w the fitted lines' kernel (Z their centred design of
    width w), delta = se2 / sg2 from REML and sg2 = r' (K + delta I)^-1 r / (n - f) (r: y less its
    GLS fixed effects, the mean and any covariates, f of them), a new line
    with centred design z has k = Z z / w and k0 = z' z / w, and

        PEV = sg2 (k0 - k' (K + delta I)^-1 k) = se2 z' (Z'Z + w delta I)^-1 z,
        reliability = 1 - PEV / (sg2 k0),

    the squared correlation between its predicted and its true genetic value, given the
    variance components and the fixed effects.  (K + delta I)^-1 comes from one eigendecomposition of
    K (n^3, once per predict); k from a pass over the fitted lines' genotypes per block of new
    lines."""

    def __init__(self, store, fit: MarkerEffects, G: np.ndarray, width: int):
        from scipy.linalg import eigh

        self.store, self.fit, self.width = store, fit, width
        self.rows = rows = store.phenotyped  # the fitted lines
        K, _ = centred_kernels(G, width, rows, rows[:0])
        s, U = eigh(K, overwrite_a=True)
        del K
        scale = 1.0 / np.sqrt(np.maximum(s, 0.0) + fit.delta)
        U *= scale  # U diag((s + delta)^-1/2): W W' = (K + delta I)^-1
        self.W = U
        # sg2 = r' (K + delta I)^-1 r / (n - f) with r the GLS residual of the fixed effects (the
        # intercept, whose GLS estimate is the mean for a centred K, and any covariates)
        y = store.phenotype.astype(np.float64)[rows]
        F = np.ones((len(rows), 1)) if store.covariates is None else fixed_design(store.covariates[rows])
        WF, Wy = U.T @ F, U.T @ y
        r = Wy - WF @ np.linalg.lstsq(WF, Wy, rcond=None)[0]
        self.sg2 = float(r @ r / (len(rows) - np.linalg.matrix_rank(F)))

    def __call__(self, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(PEV, reliability) of new lines with int8 codes ``g`` [m, p]."""
        f = self.fit
        z = uncentred(g, f.encoding, f.fill) - f.means
        k = np.empty((self.store.n_samples, len(z)))
        for lo, hi, gs in row_chunks(self.store):
            k[lo:hi] = (uncentred(gs, f.encoding, f.fill) - f.means) @ z.T
        k = k[self.rows] / self.width
        k0 = np.einsum("ij,ij->i", z, z) / self.width
        wk = self.W.T @ k
        q = np.einsum("ij,ij->j", wk, wk)
        pev = np.maximum(self.sg2 * (k0 - q), 0.0)
        reliability = np.divide(q, k0, out=np.zeros_like(q), where=k0 > 0)
        return pev, np.clip(reliability, 0.0, 1.0)


def prediction_error_variance(run: RunDir, ds: DatasetRecord, store, kind: str, fit: MarkerEffects):
    """The PredictionErrorVariance of a GBLUP refit (``refitted``), from the run's cached Gram matrix."""
    check_memory(store)
    G, width, _ = cached_gram(store, kind, run.baseline_cache(ds.dataset, kind))
    return PredictionErrorVariance(store, fit, G, width)


@dataclass
class KernelFit:
    """An RKHS fit with the Gaussian kernel: prediction = mu + k(x) @ alpha with
    k_j(x) = exp(-theta |x - x_j|^2 / scale) over the fitting lines' designs ``X`` in the
    encoding ``distance`` (dosage with missing calls filled with ``fill``, as in CV, or the
    one-hot codes, held in float32: their products are exact small integers).  Needs the
    fitting lines' genotypes: memory of the training store's size, not of the new lines'."""

    alpha: np.ndarray
    mu: float
    theta: float
    scale: float
    fill: np.ndarray
    X: np.ndarray
    delta: float
    distance: str = "dosage"

    def predict(self, g: np.ndarray) -> np.ndarray:
        x = kernel_design(g, self.distance, self.fill)
        d2 = ((x * x).sum(axis=1, dtype=np.float64)[:, None] + (self.X * self.X).sum(axis=1, dtype=np.float64)[None, :]
              - 2.0 * (x @ self.X.T).astype(np.float64))
        return self.mu + np.exp(np.maximum(d2, 0.0) * (-self.theta / self.scale)) @ self.alpha


def kernel_design(g: np.ndarray, distance: str, fill: np.ndarray) -> np.ndarray:
    """The design an RKHS kernel measures distances in: float64 dosages, float32 one-hot codes."""

    x = uncentred(g, distance, fill)
    return x.astype(np.float32) if distance == "onehot" else x


def kernel_fit(store, G: np.ndarray, fit_rows, theta: float, distance: str = "dosage", X=None,
               delta: float | None = None) -> KernelFit:
    """The RKHS baseline fitted on ``fit_rows`` with bandwidth ``theta`` (REML delta, unless
    ``delta`` is given) on the ``distance`` encoding: on a fold's fitting rows, its chosen
    kernel and its recorded delta it reproduces that fold's predictions (tested).  ``G``: the
    store's Gram matrix of that encoding, overwritten; ``X``: the fitting rows' design
    (kernel_design) when the caller already has it."""

    fit_rows = np.sort(np.asarray(fit_rows, dtype=np.int64))
    D2 = squared_distances(G)[np.ix_(fit_rows, fit_rows)]
    del G
    scale = off_diagonal_median(D2.copy()) or 1.0  # as the CV's fold computed it
    K = np.exp(D2 * (-theta / scale))
    del D2
    alpha, mu, delta = fit_kernel(store, K, fit_rows, delta)
    fill = mean_dosage((g for _, _, g in row_chunks(store)), store.n_variants)
    if X is None:
        X = kernel_design(read_rows(store, fit_rows), distance, fill)
    return KernelFit(alpha, float(mu), float(theta), scale, fill, X, float(delta), distance)


def _folds_kernel(run: RunDir, ds: DatasetRecord, kind: str) -> tuple[str, float]:
    """The (distance, bandwidth) the folds of a kernel baseline chose most often (dosage, then
    the smaller theta, on a tie); runs from before the distance was chosen used dosage."""
    from collections import Counter

    chosen = [(m.distance or "dosage", m.theta) for m in
              (FoldMetrics.read(run.baseline(ds.dataset, kind, i) / METRICS_JSON) for i in range(1, ds.n_folds + 1))]
    counts = Counter(chosen)
    return min(counts, key=lambda k: (-counts[k], k[0] != "dosage", k[1]))


def folds_delta(run: RunDir, ds: DatasetRecord, store, kind: str) -> tuple[float, int] | None:
    """The variance ratio a GBLUP's baseline folds estimated on this store, as the geometric
    mean of theirs, and how many folds gave one; None where no fold has one.  Each is REML on
    (n_folds - 1) / n_folds of the lines: close to REML on all of them, so where that needs the
    Monte Carlo search (predict's refit on the scalable path), the search starts there."""
    logs = []
    for i in range(1, ds.n_folds + 1):
        try:
            m = FoldMetrics.read(run.baseline(ds.dataset, kind, i) / METRICS_JSON)
        except (FileNotFoundError, InputError):
            continue
        delta = m.raw.get("delta")
        if m.store_id == store.store_id and isinstance(delta, (int, float)) and delta > 0:
            logs.append(np.log(delta))
    return (float(np.exp(np.mean(logs))), len(logs)) if logs else None


def refitted(run: RunDir, ds: DatasetRecord, store, kind: str, designs: dict | None = None, solver: str = "auto"):
    """A baseline fitted on all phenotyped lines: GBLUP of one encoding as MarkerEffects,
    an RKHS (rkhs, rkhs_local) as a KernelFit with the distance and bandwidth its folds
    chose most often.  Cached as RUN/<dataset>/baseline_<kind>/refit_all.npz (recomputed
    for another write of the store).  ``designs``: the phenotyped lines' kernel designs by
    distance, shared between the RKHS fits (filled here), so they are read and held once.
    ``solver``: a GBLUP is refitted on the scalable path (linear/scalable.py) where the exact
    one does not fit (auto) or when asked; an RKHS always needs the exact path.  There, where
    REML on every line needs the Monte Carlo search (more lines than ``scalable.REML_LINES``),
    the search starts from the folds' variance ratio (``folds_delta``) where the run has one,
    instead of from REML on a sample of the lines."""
    from hpcsnp.linear import scalable as sc

    cache = run.baseline_cache(ds.dataset, kind)
    data, meta = cache / "refit_all.npz", cache / "refit_all.json"
    everyone = store.phenotyped  # every line, unless a trait of a table lacks some
    scalable = kind not in KERNEL_KINDS and sc.choose_solver(store, solver)[0] == "scalable"
    searched = scalable and len(everyone) > sc.REML_LINES  # delta by the Monte Carlo search
    given = folds_delta(run, ds, store, kind) if searched else None
    key = {"refit_version": REFIT_VERSION, "store_id": store.store_id, "kind": kind,
           **({"solver": "scalable"} if scalable else {}), **({"folds_delta": given[0]} if given else {})}
    try:
        if json.loads(meta.read_text()).get("key") == key:
            with np.load(data) as z:
                if kind in KERNEL_KINDS:
                    distance = str(z["distance"])
                    X = designs.get(distance) if designs is not None else None
                    if X is None:
                        X = kernel_design(read_rows(store, store.phenotyped), distance, z["fill"])
                    if designs is not None:
                        designs[distance] = X
                    return KernelFit(z["alpha"], float(z["mu"]), float(z["theta"]), float(z["scale"]), z["fill"],
                                     X, float(z["delta"]), distance)
                return MarkerEffects(kind, z["beta"], z["means"], z["fill"], float(z["mu"]), float(z["delta"]))
    except FileNotFoundError:
        pass
    except Exception as e:  # noqa: BLE001 - a damaged cache (truncated zip, bad JSON, missing key) is rebuilt
        logger.warning(f"{data} cannot be read ({type(e).__name__}); refitting")
    t0 = time.perf_counter()
    source, solved = "REML", {}
    if searched:
        source = "Monte Carlo REML from REML on a sample of the lines"
        if given:
            folds = f"{given[1]} folds'" if given[1] > 1 else "1 fold's"
            source = f"Monte Carlo REML from its {folds} REML, h2 {1 / (1 + given[0]):.4f}"
            logger.info(f"[{ds.dataset}] {model_label(kind)} refit on the scalable path: {source}")
    if scalable:
        y = store.phenotype.astype(np.float64)
        beta, means, fill, mu, delta, solved = sc.scalable_effects(store, kind, y, everyone, sc.REML_LINES,
                                                                   start=given[0] if given else None)
        fit = MarkerEffects(kind, beta, means, fill, mu, delta)
        arrays = {"beta": beta, "means": means}
    elif kind in KERNEL_KINDS:
        check_memory(store)
        distance, theta = _folds_kernel(run, ds, kind)
        G, _, _ = cached_gram(store, distance, run.baseline_cache(ds.dataset, distance))
        fit = kernel_fit(store, G, everyone, theta, distance, None if designs is None else designs.get(distance))
        if designs is not None:
            designs[distance] = fit.X
        arrays = {"alpha": fit.alpha, "theta": fit.theta, "scale": fit.scale, "distance": fit.distance}
        del G
    else:
        check_memory(store)
        G, width, _ = cached_gram(store, kind, cache)
        fit = marker_effects(store, kind, G, width, everyone)
        arrays = {"beta": fit.beta, "means": fit.means}
        del G
    tmp = data.with_name(f".refit_all.{os.getpid()}.npz")
    np.savez(tmp, **arrays, fill=fit.fill, mu=fit.mu, delta=fit.delta)
    os.replace(tmp, data)
    atomic_write_text(meta, json.dumps({"key": key, "seconds": time.perf_counter() - t0,
                                        "n_fit": len(everyone), "h2_reml": 1 / (1 + fit.delta),
                                        "h2_from": source, **solved}, indent=2) + "\n")
    logger.info(f"[{ds.dataset}] {model_label(kind)} refitted on all {len(everyone):,} phenotyped lines "
                f"(h2 {1 / (1 + fit.delta):.3f}, {source}) in {time.perf_counter() - t0:.1f}s; cached in {data}")
    return fit


def model_label(kind: str) -> str:
    return {"rkhs": "RKHS", "rkhs_local": "RKHS (narrow kernel)"}.get(kind, f"GBLUP {kind}")
