"""GBLUP and the mixed-model GWAS with memory that grows with (n + p) x a block, never n^2:
``--solver scalable`` (chosen by ``--solver auto`` when the exact path does not fit).

The model is the exact path's (baseline.py): y = mu + Z b + e with Z the centred design of
the fitting lines, b ~ N(0, sg2 / w I), K = Z Z' / w, delta = se2 / sg2.  Three changes of
how it is computed:

- **The solve** uses conjugate gradients on the marker side, (Z'Z + delta w I) beta = Z' yc,
  the rrBLUP form of the same predictor (beta = Z' (K + delta I)^-1 yc / w; Henderson's
  identity).  Z is never formed: each iteration is one pass over the store's genotypes in
  blocks of rows, decoding int8 codes to the design block by block (one-hot: from the dosage
  and sparse heterozygote and missing indicators, ``_Rows``), computing
  X_b' (m_b * (X_b u - m'u)) and adding the blocks into GROUPS accumulators, summed in a
  fixed tree (so the result does not depend on how many workers ran it).  The passes are
  Dask graphs: local threads by default, a distributed scheduler when given one.  The
  preconditioner is A^-1 on K's leading eigenvectors (``preconditioner``: randomized
  subspace iteration) and a scalar elsewhere, which takes a structured population's few
  large eigenvalues out of the iterations' way.  This is how BOLT-LMM (Loh et al. 2015) fits its infinitesimal model;
  several systems (a fold's fit and its inner fit, the GWAS's calibration SNPs, the Monte
  Carlo phenotypes) share each pass.
- **delta** comes from exact REML (REMLSpectrum) on at most ``REML_LINES`` fitting lines:
  all of them where they fit, so on data the exact path also handles the two give the same
  delta.  Above, REML on a random sample of them (fixed seed) is refined by BOLT-REML's
  Monte Carlo score on every fitting line (``mc_reml``): REML on a sample alone
  under-estimated h2 on SoyNAM (docs/design.md).
- **The GWAS** (EMMAX/P3D's test, V = K + delta I) needs, per SNP, x' P y and x' P x.
  P y = (yc - Z beta) / delta comes from the same solve, and x_j' P y = w beta_j.  x' P x
  is computed from K's ``GWAS_RANK`` leading eigenpairs (the rest at their mean
  eigenvalue) and scaled to ``CALIBRATION_SNPS`` random SNPs solved exactly (a single
  factor alone, GRAMMAR-gamma / BOLT-LMM-inf's statistic, ranks SNPs poorly in families).
  The residual variance is then taken per SNP as in the exact test.  With LOCO every pass
  carries one more system per chromosome (the other chromosomes' columns), x_j' P_-c y takes
  one more pass, and x' P_-c x comes from K_-c's leading eigenpairs within K's leading
  subspace (``xpx_approx``).
- **Covariates** (fixed effects besides the intercept) are projected out of each system,
  as the exact path's REML and GLS do: with Q_k an orthonormal basis of the centred
  covariates over system k's lines, the solve is (Z'MZ + delta w I) beta = Z'M yc with
  M = I - Q_k Q_k', and Z'MZ u = Z'Z u - (Z'Q_k)(Z'Q_k)' u needs only Z'Q_k, from one more
  right-hand side of the first pass.  Their effects b are then least squares of y - Z beta
  on the covariates (Frisch-Waugh-Lovell: the joint estimate).

Memory: a block of decoded rows (``BLOCK_BYTES``), a few vectors of length p per system and
of length n, the eigenvectors ([rank, p] and [n, rank]), and the REML sample's kernel
(24 x 8,000^2 bytes); with ``persist`` also the int8 genotypes (n p bytes), held by Dask
instead of read again on every pass.  Time: one pass over the genotypes per iteration;
20-60 iterations per solve (measured in bench/bench_scale.py).
"""

from __future__ import annotations

import logging
import operator
import time
from typing import NamedTuple

import numpy as np

from hpcsnp.errors import InputError
from hpcsnp.linear.baseline import (
    REMLSpectrum,
    centred_kernels,
    covariate_basis,
    gram_matrix,
    memory_needed,
    read_rows,
    uncentred,
)
from hpcsnp.resources import memory_limit_bytes, one_blas_thread_per_task

logger = logging.getLogger(__name__)

SOLVERS = ("auto", "exact", "scalable")
REML_LINES = 8000  # delta by exact REML on at most this many fitting lines (24 x 8,000^2 bytes = 1.5 GB)
REML_SEED = 20150  # which lines, when there are more: fixed, so a rerun gives the same delta
MC_SAMPLES = 16  # phenotypes simulated per Monte Carlo REML evaluation
MC_TOL = 1e-4  # its solves' tolerance near the root (the score then within ~0.002, 0.005 in log delta)
MC_TOL_LOOSE = 1e-3  # and far from it (mc_tolerance)
MC_SLOPE = 0.4  # the score's usual slope in log delta (0.3-0.5 measured), for the first step's length
MC_STEP = 0.05  # the search stops when its next step in log delta is shorter (predictions move ~2 % of their SD)
CALIBRATION_SNPS = 16  # random SNPs whose x' P x is solved exactly to calibrate the GWAS statistic
PRECONDITIONER_RANK = 200  # leading eigenpairs of K that precondition the GBLUP solves
GWAS_RANK = 400  # leading eigenpairs of K that the GWAS's x' P x is computed from (the rest at their mean)
CG_TOL = 1e-7  # relative residual |A x - b| / |b| at which conjugate gradients stop
FIT_TOL = 1e-5  # and the GBLUP fits' (fold and refit): predictions within ~1e-4 of their spread of CG_TOL's
CG_MAXITER = 3000
BLOCK_BYTES = 64 << 20  # decoded float64 rows per block of a pass
GROUPS = 64  # a pass's blocks are summed in this many accumulators, then pairwise: the same on any number of workers


def choose_solver(store, solver: str = "auto", available: int | None = None) -> tuple[str, str]:
    """``exact`` or ``scalable`` for a store, and why: auto takes the exact path when its
    n x n matrices fit in the memory this process may use, else the scalable one."""
    if solver not in SOLVERS:
        raise InputError(f"unknown solver {solver!r} (one of {', '.join(SOLVERS)})")
    need = memory_needed(store.n_samples, store.n_variants)
    if solver != "auto":
        return solver, f"--solver {solver}"
    available = memory_limit_bytes() if available is None else available
    if available is None or need <= available:
        return "exact", (f"the exact path needs about {need / 2**30:.1f} GB" +
                         (f" of the {available / 2**30:.1f} GB available" if available else ""))
    return "scalable", (f"the exact path would need about {need / 2**30:.1f} GB for its n x n matrices and "
                        f"{available / 2**30:.1f} GB is available")


# ---------------------------------------------------------------- the design, by blocks of rows

def _indicator(mask: np.ndarray, dtype):
    """A boolean block as a sparse matrix of ones (CSR) where at most a tenth of it is set,
    else as a dense array of ``dtype``."""
    from scipy.sparse import csr_array

    at = np.flatnonzero(mask)  # row-major, so the rows come sorted
    if len(at) > mask.size // 10:
        return mask.astype(dtype)
    rows, cols = np.divmod(at, mask.shape[1])
    indptr = np.searchsorted(rows, np.arange(mask.shape[0] + 1))
    return csr_array((np.ones(len(at), dtype), cols, indptr), shape=mask.shape)


class _Rows:
    """A block of rows of the uncentred design X, decoded once for its products.

    Dosage: the dense block.  One-hot: the four channels of SNP j (missing, Aa, AA, aa:
    genotypes.ONE_HOT_TABLE) are m, h, 1 - m - (d + h) / 2 and (d - h) / 2, with d the dosage
    (missing as 0) and h, m the heterozygote and missing indicators.  So a product with X is
    one with d (p columns, not 4p), two with h and m, sparse where calls are mostly homozygous
    and present (inbred lines: about 1 % of them), and a column sum: a fourth of the dense
    work of the four channels, and no n x 4p block decoded.  The products are *packed*: a
    block multiplies ``pack(U)`` (the channels' combination, formed once a pass) and adds
    [X'V packed; 1'V] to its group's sum, which ``unpack`` turns into X'V once a pass."""

    def __init__(self, g: np.ndarray, encoding: str, fill, dtype=np.float64):
        self.onehot = encoding == "onehot"
        if self.onehot:
            self.d = g.astype(dtype)
            np.maximum(self.d, 0, out=self.d)
            self.h, self.m = _indicator(g == 1, dtype), _indicator(g < 0, dtype)
        else:
            self.x = uncentred(g, encoding, fill, dtype)

    @staticmethod
    def pack(U: np.ndarray, encoding: str) -> np.ndarray:
        """U [width, k] as the blocks multiply it (one-hot: [3p + 1, k], the coefficients of d, h,
        m and the constant)."""
        if encoding != "onehot":
            return U
        um, uh, u0, u2 = (U[c::4] for c in range(4))
        return np.vstack([(u2 - u0) / 2, uh - (u0 + u2) / 2, um - u0, u0.sum(axis=0, keepdims=True)])

    @staticmethod
    def unpack(T: np.ndarray, encoding: str) -> tuple[np.ndarray, np.ndarray]:
        """A sum of blocks' ``tdot_into`` -> (X'V [width, k], 1'V [k])."""
        T, ones = T[:-1], T[-1]
        if encoding != "onehot":
            return T, ones
        dv, hv, mv = np.split(T, 3)  # one-hot channels are their own squares, so X*X = X
        out = np.empty((len(dv), 4, T.shape[1]), T.dtype)
        out[:, 0], out[:, 1] = mv, hv
        out[:, 2] = ones - mv - (dv + hv) / 2
        out[:, 3] = (dv - hv) / 2
        return out.reshape(-1, T.shape[1]), ones

    def dot(self, P: np.ndarray) -> np.ndarray:
        """X U for P = pack(U)."""
        if not self.onehot:
            return self.x @ P
        p = self.d.shape[1]
        return P[-1] + self.d @ P[:p] + self.h @ P[p:2 * p] + self.m @ P[2 * p:3 * p]

    def tdot_into(self, out: np.ndarray, V: np.ndarray, squared: bool = False) -> None:
        """Add X'V packed, then 1'V, to ``out`` [packed width + 1, k] for V [rows, k]; with
        ``squared`` (X*X)'V's."""
        if self.onehot:
            p = self.d.shape[1]
            out[:p] += self.d.T @ V
            out[p:2 * p] += self.h.T @ V
            out[2 * p:3 * p] += self.m.T @ V
        else:
            out[:-1] += (self.x * self.x if squared else self.x).T @ V
        out[-1] += V.sum(axis=0)

    @staticmethod
    def packed(p: int, encoding: str) -> int:
        """Rows of ``tdot_into``'s output for p SNPs."""
        return (3 * p if encoding == "onehot" else p) + 1


def _block_stats(out, g, masks, rhs, encoding, fill):
    """Add a block's masked column sums and sums of squares of the design, and X' rhs (packed)."""
    x = _Rows(g, encoding, fill)
    x.tdot_into(out[0], masks)
    if not x.onehot:  # one-hot channels are their own squares: Design.stats reuses the sums
        x.tdot_into(out[1], masks, squared=True)
    x.tdot_into(out[2], rhs)


def _block_normal(out, g, masks, P, shift, encoding, fill):
    """Add X_b' (m_b * (Z_b U)) packed: a block's part of Z' M Z U, per column, before the
    means' term (P = pack(U))."""
    x = _Rows(g, encoding, fill)
    x.tdot_into(out, (x.dot(P) - shift) * masks)


def _block_rmat(out, g, V, encoding, fill, dtype=np.float64):
    """Add a block's part of X' V packed, the product in ``dtype``."""
    _Rows(g, encoding, fill, dtype).tdot_into(out, V.astype(dtype, copy=False))


def _block_apply(g, P, shift, encoding, fill, dtype=np.float64):
    return _Rows(g, encoding, fill, dtype).dot(P) - shift


def _group(fn, shape, blocks, args, *shared, encoding, fill, **options):
    """One accumulator for a group of blocks: ``fn`` adds each block's part into it in place."""
    out = np.zeros(shape)
    for g, a in zip(blocks, args):
        fn(out, g, *a, *shared, encoding, fill, **options)
    return out


def _block_calls(g, m=None):
    called = g >= 0
    if m is not None:  # only the lines of the mask
        called &= m[:, None] > 0
    return np.stack([called.sum(axis=0), np.where(called, g, 0).sum(axis=0, dtype=np.int64)])


def _tree_sum(parts):
    """Pairwise sums in a fixed order: the same rounding on any number of workers."""
    from dask import delayed

    while len(parts) > 1:
        parts = [delayed(operator.add)(parts[i], parts[i + 1]) if i + 1 < len(parts) else parts[i]
                 for i in range(0, len(parts), 2)]
    return parts[0]


class Design:
    """The uncentred design X of every line of a store in one encoding (dosage with missing
    calls filled with ``fill``, or the one-hot channels), applied by blocks of rows as Dask
    graphs.  Centring and the choice of lines are the caller's: each system k has a mask
    over the lines (1 = a fitting line) and the column means it is centred by."""

    def __init__(self, store, encoding: str, fill: np.ndarray, *, persist: bool | None = None):
        import dask.array as da

        self.encoding, self.fill = encoding, np.asarray(fill, np.float64)
        self.n, p = store.n_samples, store.n_variants
        self.p, self.width = p, p * (4 if encoding == "onehot" else 1)
        step = store.chunk_rows  # a block decodes to p float64 columns in either encoding (_Rows)
        rows = max(step, BLOCK_BYTES // (8 * p) // step * step)
        g = da.from_zarr(store.genotypes).rechunk((rows, p))
        if persist is None:  # hold the int8 codes when they take at most an eighth of the memory
            available = memory_limit_bytes()
            persist = available is not None and self.n * p <= available // 8
        if persist:
            g = g.persist()
        self.codes = g  # held: on a distributed scheduler, persisted blocks live as long as their collection
        self.blocks = list(g.to_delayed().ravel())
        edges = np.cumsum((0,) + g.chunks[0])
        self.bounds = list(zip(edges[:-1], edges[1:]))
        self.passes = 0

    def _compute(self, task):
        import dask

        self.passes += 1
        with one_blas_thread_per_task():
            return dask.compute(task)[0]

    def _reduce(self, fn, shape, per_block, *shared, **options):
        """The sum over blocks of ``fn``'s parts [shape]: GROUPS tasks, each adding its
        consecutive blocks' parts into one accumulator in place (a part can be larger than its
        block: p x 220 for the eigenpairs' products), then their pairwise sum."""
        from dask import delayed

        shared = [delayed(s) if isinstance(s, np.ndarray) else s for s in shared]
        fill = delayed(self.fill)  # once in the graph, not once a task (a distributed graph is sent)
        parts = [delayed(_group)(fn, shape, [self.blocks[i] for i in idx], [per_block(*self.bounds[i]) for i in idx],
                                 *shared, encoding=self.encoding, fill=fill, **options)
                 for idx in np.array_split(np.arange(len(self.blocks)), min(GROUPS, len(self.blocks)))]
        return self._compute(_tree_sum(parts))

    def calls(self, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per SNP: the number of called lines (of ``mask`` [n], where given) and the sum of
        their codes (one pass)."""
        from dask import delayed

        parts = [delayed(_block_calls)(b, None if mask is None else mask[lo:hi])
                 for b, (lo, hi) in zip(self.blocks, self.bounds)]
        out = self._compute(_tree_sum(parts))
        return out[0], out[1]

    def stats(self, masks: np.ndarray, rhs: np.ndarray):
        """Masked column sums, sums of squares and X' rhs, each [width, k] (one pass)."""
        out = self._reduce(_block_stats, (3, _Rows.packed(self.p, self.encoding), masks.shape[1]),
                           lambda lo, hi: (masks[lo:hi], rhs[lo:hi]))
        sums, squares, rhs = (_Rows.unpack(o, self.encoding)[0] for o in out)
        return sums, sums if self.encoding == "onehot" else squares, rhs

    def normal(self, U: np.ndarray, masks: np.ndarray, means: np.ndarray) -> np.ndarray:
        """Z_k' M_k Z_k U_k for every column k, Z_k = X - 1 means_k' (one pass)."""
        shift = (means * U).sum(axis=0)
        XT, ones = _Rows.unpack(self._reduce(_block_normal, (_Rows.packed(self.p, self.encoding), U.shape[1]),
                                             lambda lo, hi: (masks[lo:hi],), _Rows.pack(U, self.encoding), shift),
                                self.encoding)
        return XT - means * ones

    def rmat(self, V: np.ndarray, means: np.ndarray, dtype=np.float64) -> np.ndarray:
        """Z' V [width, k] for lines-by-columns V [n, k], Z = X - 1 means' (one pass; the
        blocks' products in ``dtype``, summed in float64)."""
        XT, ones = _Rows.unpack(self._reduce(_block_rmat, (_Rows.packed(self.p, self.encoding), V.shape[1]),
                                             lambda lo, hi: (V[lo:hi],), dtype=dtype), self.encoding)
        return XT - means[:, None] * ones

    def apply(self, U: np.ndarray, means: np.ndarray, dtype=np.float64) -> np.ndarray:
        """Z_k U_k for every line and column k [n, k] (one pass; the products in ``dtype``)."""
        from dask import delayed

        shift = delayed((means * U).sum(axis=0))
        Ud = delayed(_Rows.pack(U, self.encoding).astype(dtype, copy=False))
        fill = delayed(self.fill)
        parts = [delayed(_block_apply)(b, Ud, shift, self.encoding, fill, dtype) for b in self.blocks]
        return np.concatenate(self._compute(parts))


def design_fill(store, design: Design | None = None) -> np.ndarray:
    """The dosage that fills a missing call: the SNP's mean over every genotyped line of the
    store, as the exact path's (genotypes.mean_dosage), from one pass."""
    called, total = (design or Design(store, "dosage", np.zeros(store.n_variants))).calls()
    return np.divide(total, called, out=np.zeros(len(called)), where=called > 0)


def progress(t0: float, message: str) -> None:
    """A stage's line with its seconds since ``t0``: shown where it took 10 s or more (at scale),
    a debug line otherwise (a SoyNAM fold's solves take a second)."""
    seconds = time.perf_counter() - t0
    logger.log(logging.INFO if seconds >= 10 else logging.DEBUG, f"{message} ({seconds:.0f} s)")


def conjugate_gradient(apply, b: np.ndarray, precondition, tol: float = CG_TOL, maxiter: int = CG_MAXITER,
                       what: str = "system", start=None, needed=None):
    """Solve A x = b for every column of b (A symmetric positive definite, given by
    ``apply``), preconditioned by ``precondition`` (an approximation of A^-1, applied to a
    block of columns); a column stops moving once its relative residual is below ``tol``.
    ``start``: (x0, A x0), a first guess and its product (known to the caller without a pass).
    ``needed`` [k] bool: the columns whose convergence ends the solve (default all); the others
    move with them until then.  Returns (x, iterations, residual b - A x)."""
    t0 = last = time.perf_counter()
    x = np.zeros_like(b) if start is None else start[0].copy()
    r = b.copy() if start is None else b - start[1]
    z = precondition(r)
    p = z.copy()
    rz = (r * z).sum(axis=0)
    bnorm = np.linalg.norm(b, axis=0)
    bnorm[bnorm == 0] = 1.0
    for it in range(maxiter):
        relative = np.linalg.norm(r, axis=0) / bnorm
        active = relative > tol
        if not (active if needed is None else active & needed).any():
            progress(t0, f"{what}: {it} conjugate-gradient iterations")
            return x, it, r
        if time.perf_counter() - last > 60:  # a line a minute on long solves (a pass takes ~15 s at 100,000 x 50,000)
            last = time.perf_counter()
            worst = (relative if needed is None else relative[needed]).max()
            logger.info(f"{what}: iteration {it}, relative residual {worst:.1e} (wanted {tol:.0e}; "
                        f"{(last - t0) / 60:.1f} min)")
        Ap = apply(p)
        alpha = np.where(active, rz / np.where(active, (p * Ap).sum(axis=0), 1.0), 0.0)
        x += alpha * p
        r -= alpha * Ap
        z = precondition(r)
        rz_new = (r * z).sum(axis=0)
        p = z + np.where(active, rz_new / np.where(rz == 0, 1.0, rz), 0.0) * p
        rz = rz_new
    worst = float((np.linalg.norm(r, axis=0) / bnorm).max())
    logger.warning(f"conjugate gradients for the {what} stopped after {maxiter} iterations at relative "
                   f"residual {worst:.2e} (wanted {tol:.0e})")
    return x, maxiter, r


def system_bases(covariates, masks: np.ndarray) -> list[np.ndarray]:
    """Per system (column of ``masks``): an orthonormal basis [n, c] of the covariates centred
    over its lines, zero on the other lines."""
    out = []
    for k in range(masks.shape[1]):
        on = masks[:, k] > 0
        basis = covariate_basis(np.asarray(covariates, np.float64)[on])
        Q = np.zeros((len(on), basis.shape[1]))
        Q[on] = basis
        out.append(Q)
    return out


def covariate_effects(covariates, residual: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """[n, k]: each system's covariate effects (least squares of ``residual`` [n, k], y less its
    genetic part, on the covariates centred over its lines) at every line."""
    C = np.asarray(covariates, np.float64)
    out = np.empty((len(C), masks.shape[1]))
    for k in range(masks.shape[1]):
        on = masks[:, k] > 0
        centred = C - C[on].mean(axis=0)
        out[:, k] = centred @ np.linalg.lstsq(centred[on], residual[on, k], rcond=None)[0]
    return out


class RidgeFit(NamedTuple):
    """Marker effects of each system (beta [width, k]), the column means each is centred by,
    the intercepts, and the conjugate-gradient iterations it took."""

    beta: np.ndarray
    means: np.ndarray
    mu: np.ndarray
    iterations: int
    rhs: np.ndarray  # Z_k' (y - mu_k) and any extra right-hand sides
    yy: np.ndarray  # (y - mu_k)' (y - mu_k) over each system's lines
    lam: np.ndarray  # delta w_k, each system's ridge
    residual: np.ndarray  # the solve's last residual, A beta = rhs (column-masked) - residual


def ridge(design: Design, y: np.ndarray, masks: np.ndarray, delta: float, extra_rhs=None, tol: float = CG_TOL,
          what: str = "GBLUP", deflate: TopEigen | None = None, covariates=None, snp_masks=None,
          extra_of=None, start: RidgeFit | None = None, needed=None) -> RidgeFit:
    """GBLUP of each system k (the lines where masks[:, k] is 1) as rrBLUP marker effects:
    (Z_k' Z_k + delta w I) beta_k = Z_k' (y - mean_k); mu_k = mean of y over its lines (the
    GLS intercept: Z_k is centred by its own lines).  ``y``: [n], or [n, k] with one phenotype
    per system.  ``extra_rhs`` [width, j]: more systems
    with the first mask and other right-hand sides (the GWAS's calibration SNPs).
    Preconditioner: with ``deflate`` (K's leading eigenpairs over every line), A^-1 on their
    directions (eigenvalues scaled by the system's share of lines) and the mean of the other
    eigenvalues elsewhere, which takes the few large eigenvalues of a structured population
    out of the conjugate gradients' way (SoyNAM-like 20,000 x 10,000: 164 -> 46 iterations);
    without it, A's diagonal (Jacobi).  ``covariates`` [n, c]: fixed effects projected out of
    every system (see the module's notes); ``extra_rhs`` must then already be Z'M-projected.
    ``snp_masks`` [width, k]: the design columns of each system (1 = in it; LOCO leaves out a
    chromosome's): system k solves with Z_k S_k and K_k = Z_k S_k Z_k' / w_k, w_k its columns,
    and its beta is 0 outside them.  ``extra_of`` [j]: the system each extra right-hand side
    belongs to (its lines, centring, covariates and columns; default the first).  ``rhs`` is
    returned as given, before the column masks (beta is 0 where they are).  ``start``: a fit of the
    same systems at another delta (or right-hand sides), whose solution the conjugate gradients
    start from: A at this delta applied to it is A's at that one plus the change of ridge, so
    the warm start costs no pass (mc_reml's evaluations).  ``needed``: conjugate_gradient's."""
    masks = np.asarray(masks, np.float64)
    n_k = masks.sum(axis=0)
    Y = y[:, None] if y.ndim == 1 else y  # one phenotype for every system, or one each
    mu = np.where(masks > 0, Y, 0.0).sum(axis=0) / n_k
    yc = (Y - mu) * masks
    bases = system_bases(covariates, masks) if covariates is not None else None
    if bases is not None:
        yc = np.column_stack([yc[:, k] - Q @ (Q.T @ yc[:, k]) for k, Q in enumerate(bases)])
        # Z'Q_k = X'Q_k (Q_k's columns sum to zero): one more pass, with every system's basis
        XQ = design.rmat(np.hstack(bases), np.zeros(design.width))
        ZQ = np.split(XQ, np.cumsum([Q.shape[1] for Q in bases])[:-1], axis=1)
    sums, squares, rhs = design.stats(masks, yc)
    means = sums / n_k
    diag = squares - n_k * means ** 2 + delta * design.width
    if bases is not None:
        diag -= np.column_stack([(z * z).sum(axis=1) for z in ZQ])
    S = np.ones((design.width, masks.shape[1])) if snp_masks is None else np.asarray(snp_masks, np.float64)
    if extra_rhs is not None:
        of = np.zeros(extra_rhs.shape[1], int) if extra_of is None else np.asarray(extra_of, int)
        rhs = np.hstack([rhs, extra_rhs])
        masks, means, diag, S = (np.hstack([a, a[:, of]]) for a in (masks, means, diag, S))
        if bases is not None:
            ZQ = ZQ + [ZQ[k] for k in of]
    lam = delta * S.sum(axis=0)  # delta w_k: K_k's width
    masked = snp_masks is not None

    def cols(U):  # each system's columns
        return U * S if masked else U

    if deflate is None:
        diag = np.where(S > 0, np.maximum(diag, lam), lam)

        def precondition(R):
            return R / diag
    else:
        V = deflate.vectors  # [rank, width], orthonormal rows
        share = masks.sum(axis=0) / design.n
        sigma = np.outer(deflate.values * design.width, share)  # [rank, k]
        trace = diag.sum(axis=0) - lam * design.width
        rest = np.maximum((trace - sigma.sum(axis=0)) / np.maximum(np.minimum(masks.sum(axis=0), design.width)
                                                                    - len(sigma), 1), 0.0)

        def precondition(R):
            VR = V @ cols(R)
            return cols(V.T @ (VR / (sigma + lam)) + (cols(R) - V.T @ VR) / (rest + lam)) + (R - cols(R)) / lam
    def apply(U):
        SU = cols(U)
        out = cols(design.normal(SU, masks, means)) + lam * U
        if bases is not None:  # Z'MZ = Z'Z - (Z'Q)(Z'Q)'
            out -= cols(projected(ZQ, SU))
        return out
    b = cols(rhs)
    if start is not None:  # A x0 = (A_start x0) + (lam - lam_start) x0, A_start x0 = b_start - r_start
        x0 = start.beta
        start = (x0, cols(start.rhs) - start.residual + (lam - start.lam) * x0)
    beta, iterations, residual = conjugate_gradient(apply, b, precondition, tol=tol, what=what, start=start,
                                                    needed=needed)
    return RidgeFit(beta, means, mu, iterations, rhs, (yc * yc).sum(axis=0), lam, residual)


def projected(ZQ: list, U: np.ndarray) -> np.ndarray:
    """(Z'Q_k)(Z'Q_k)' U_k for every column k: what projecting the covariates out takes from Z'Z U."""
    return np.column_stack([z @ (z.T @ U[:, k]) for k, z in enumerate(ZQ)])


def reml_sample(fit_rows: np.ndarray, lines: int = REML_LINES) -> np.ndarray:
    """The fitting lines REML is run on: all of them, or ``lines`` of them at random (fixed seed)."""
    fit_rows = np.asarray(fit_rows)
    if len(fit_rows) <= lines:
        return fit_rows
    return np.sort(np.random.default_rng(REML_SEED).choice(fit_rows, lines, replace=False))


def reml_delta_sample(store, encoding: str, fill: np.ndarray, fit_rows: np.ndarray, y: np.ndarray,
                      lines: int = REML_LINES, covariates=None) -> tuple[float, int]:
    """REML delta on the kernel of (a sample of) the fitting lines; (delta, lines used)."""
    rows = reml_sample(fit_rows, lines)
    G, width = gram_matrix(read_rows(store, rows), encoding, fill=fill if encoding == "dosage" else None)
    everyone = np.arange(len(rows))
    K, _ = centred_kernels(G, width, everyone, everyone[:0])
    del G
    delta, _ = REMLSpectrum(K, y[rows], overwrite=True,
                            covariates=None if covariates is None else covariates[rows]).maximise()
    return float(delta), len(rows)


class Carry(NamedTuple):
    """The systems of the solve that follows Monte Carlo REML, moved by its iterations at every
    evaluation (without waiting for them to converge) so that the final solve starts from them
    at its delta instead of from zero: ``ridge``'s y [n, c] and masks [n, c] (the first: the
    data on the fitting lines) and its extra right-hand sides (with the first system's lines)."""

    y: np.ndarray
    masks: np.ndarray
    extra_rhs: np.ndarray | None = None


def carried(fit: RidgeFit, systems: int, skipped: int) -> RidgeFit:
    """The carried systems of a Monte Carlo REML solve (its first ``systems`` and the extra
    right-hand sides after the ``skipped`` simulated ones), as ``ridge``'s ``start``."""
    cols = np.r_[0:systems, systems + skipped:fit.beta.shape[1]]
    return RidgeFit(fit.beta[:, cols], fit.means[:, cols], fit.mu[:systems], fit.iterations, fit.rhs[:, cols],
                    fit.yy[:systems], fit.lam[cols], fit.residual[:, cols])


class Delta(NamedTuple):
    """The variance ratio and how it was estimated."""

    delta: float
    lines: int  # lines of the exact REML (all fitting lines, or a sample of them; 0: none, started as given)
    mc_evaluations: int  # Monte Carlo REML evaluations on every fitting line after it (0: none)
    seconds: float
    start: RidgeFit | None = None  # the carried systems at delta (Carry), where Monte Carlo REML ran

    def record(self) -> dict:
        return {"reml_lines": self.lines, "mc_reml_evaluations": self.mc_evaluations, "reml_seconds": self.seconds}


def variance_ratio(design: Design, store, encoding: str, y: np.ndarray, fit_rows, deflate=None,
                   reml_lines: int = REML_LINES, covariates=None, carry: Carry | None = None,
                   start: float | None = None) -> Delta:
    """delta by exact REML where the fitting lines are at most ``reml_lines``; else REML on a
    sample of them, refined by Monte Carlo REML on all of them (mc_reml, solving ``carry``'s
    systems beside its own).  ``start``: a delta to start Monte Carlo REML from instead of the
    sample's (predict's refit: its folds'), where there are more fitting lines than
    ``reml_lines``."""
    t0 = time.perf_counter()
    fit_rows = np.asarray(fit_rows)
    if start is not None and len(fit_rows) > reml_lines:
        delta, used = float(start), 0
        progress(t0, f"Monte Carlo REML starts from h2 {1 / (1 + delta):.4f}, as given")
    else:
        delta, used = reml_delta_sample(store, encoding, design.fill, fit_rows, y, reml_lines, covariates)
        progress(t0, f"REML on {used:,} of the {len(fit_rows):,} fitting lines: h2 {1 / (1 + delta):.4f}")
    evaluations = 0
    start = None
    if used < len(fit_rows):
        delta, evaluations, start = mc_reml(design, y, fit_rows, delta, deflate, covariates=covariates, carry=carry)
        progress(t0, f"Monte Carlo REML on every fitting line: h2 {1 / (1 + delta):.4f} after {evaluations} "
                     f"evaluation{'s' * (evaluations != 1)}")
    return Delta(delta, used, evaluations, time.perf_counter() - t0, start)


def mc_reml(design: Design, y: np.ndarray, fit_rows, delta0: float, deflate=None, samples: int = MC_SAMPLES,
            step: float = MC_STEP, most: int = 8, covariates=None, carry: Carry | None = None):
    """The REML estimate of delta on every fitting line by BOLT-REML's Monte Carlo score (Loh et
    al. 2015): at the REML delta, |beta^|^2 / |e^|^2 of the data (BLUP marker effects over BLUP
    residuals) equals its mean over phenotypes simulated from the model with that delta.
    The root in log delta by ``secant_root`` from ``delta0`` (REML on a sample of the lines),
    to within ``step``; its first step is as long as the score and ``MC_SLOPE`` say.  Each
    evaluation is one ridge solve with 1 + ``samples`` right-hand sides, started from the
    previous one's solution, to a tolerance that follows the step that led to it
    (``mc_tolerance``): far from the root the score only has to say where to go next.
    ``carry``: more systems solved at every evaluation (the data must be its first).  Returns
    (delta, evaluations, the carried systems' solution at the last evaluation as ``ridge``'s
    start, or None)."""
    n, w = design.n, design.width
    rows = np.asarray(fit_rows)
    mask = np.zeros((n, 1))
    mask[rows] = 1.0
    keep = carry is not None
    carry = carry or Carry(y[:, None], mask)
    c = carry.y.shape[1]  # the data (column 0), any other carried systems, then the simulated ones
    masks = np.hstack([carry.masks, np.repeat(mask, samples, axis=1)])
    needed = np.zeros(masks.shape[1] + (0 if carry.extra_rhs is None else carry.extra_rhs.shape[1]), bool)
    needed[0] = needed[c:c + samples] = True  # what the score needs; the carried systems only ride along
    rng = np.random.default_rng(REML_SEED)
    sums, _, _ = design.stats(mask, np.zeros((n, 1)))
    means = np.repeat(sums / len(rows), samples, axis=1)
    genetic = design.apply(rng.standard_normal((w, samples)) / np.sqrt(w), means) * mask
    noise = rng.standard_normal((n, samples)) * mask

    last = None

    def score(log_delta: float, moved: float | None) -> float:
        nonlocal last
        d = float(np.exp(log_delta))
        what = f"Monte Carlo REML at h2 {1 / (1 + d):.4f}"
        fit = ridge(design, np.hstack([carry.y, genetic + np.sqrt(d) * noise]), masks, d, deflate=deflate,
                    tol=mc_tolerance(moved), what=what, covariates=covariates, start=last,
                    extra_rhs=carry.extra_rhs, needed=needed)
        last = fit
        k = masks.shape[1]
        b2 = (fit.beta[:, :k] ** 2).sum(axis=0)
        e2 = fit.yy - (fit.rhs[:, :k] * fit.beta[:, :k]).sum(axis=0) - d * w * b2  # |yc - Z beta|^2
        ratio = b2 / e2
        f = float(np.log(ratio[c:].mean() / ratio[0]))
        error = float(ratio[c:].std(ddof=1) / np.sqrt(samples) / ratio[c:].mean())
        logger.info(f"{what}: score {f:+.4f} (0 at the REML estimate), Monte Carlo error {error:.4f}")
        return f

    delta, evaluations = secant_root(score, float(np.log(delta0)), MC_SLOPE, step, most)
    return float(np.exp(delta)), evaluations, carried(last, c, samples) if keep else None


def secant_root(score, x0: float, slope: float, step: float, most: int = 8) -> tuple[float, int]:
    """The root of a decreasing function ``score(x, moved)`` (``moved``: the step that led to
    x, None at x0) from x0: a first step towards it as long as |score(x0)| / ``slope`` says
    (between 0.1 and 1), then secant steps of at most 2, bisecting the bracket the scores have
    shown whenever a step would leave it, until the next step is below ``step`` or ``most``
    evaluations are spent: that x is returned without its evaluation (so also the first step,
    before it is clipped, where it is shorter than ``step``).  Returns (x, evaluations).

    >>> x, evaluations = secant_root(lambda x, moved: 2.0 - x, 0.0, 0.5, step=0.01)
    >>> round(x, 6), evaluations
    (2.0, 3)
    >>> x, evaluations = secant_root(lambda x, moved: 0.5 * (0.02 - x), 0.0, 0.4, step=0.05)
    >>> round(x, 6), evaluations  # 0.01 / 0.4: next to the root, the first step is returned
    (0.025, 1)
    """
    low, high = -np.inf, np.inf  # the root is above every x whose score is positive, below every negative one

    def evaluate(x, moved):
        nonlocal low, high
        f = score(x, moved)
        low, high = (max(low, x), high) if f > 0 else (low, min(high, x))
        return f

    f0 = evaluate(x0, None)
    if abs(f0) / slope < step:  # started next to the root: the step the usual slope says, unevaluated
        return x0 + f0 / slope, 1
    first = float(np.clip(abs(f0) / slope, 0.1, 1.0))
    x1 = x0 + (first if f0 > 0 else -first)
    f1 = evaluate(x1, first)
    evaluations = 2
    while f1 != f0:
        x2 = float(np.clip(x1 - f1 * (x1 - x0) / (f1 - f0), x1 - 2.0, x1 + 2.0))
        if not low <= x2 <= high:  # a step out of the bracket: bisect it (or step 1 past its only end)
            x2 = (low + high) / 2 if np.isfinite(low + high) else (low + 1.0 if np.isfinite(low) else high - 1.0)
        if abs(x2 - x1) < step or evaluations == most:
            return x2, evaluations
        x0, f0, x1, f1 = x1, f1, x2, evaluate(x2, abs(x2 - x1))
        evaluations += 1
    return x1, evaluations


def mc_tolerance(moved: float | None) -> float:
    """The relative residual a Monte Carlo REML evaluation is solved to, after a step of
    ``moved`` in log delta (None: the first): 0.3 % of the step, between ``MC_TOL`` and
    ``MC_TOL_LOOSE``.  A secant step needs the score's error small against the change of score
    over the step it uses (about ``MC_SLOPE`` times the step); at ``MC_TOL_LOOSE`` it was at most
    0.0035 (docs/design.md), so only the steps near the root need ``MC_TOL``.

    >>> [f"{mc_tolerance(moved):.0e}" for moved in (None, 0.5, 0.1, 0.01)]
    ['1e-03', '1e-03', '3e-04', '1e-04']
    """
    if moved is None:
        return MC_TOL_LOOSE
    return float(np.clip(moved * 3e-3, MC_TOL, MC_TOL_LOOSE))


class TopEigen(NamedTuple):
    """The leading eigenvalues of K = Z Z' / w and the matching eigenvectors of Z'Z
    ([rank, width], orthonormal rows v_i; every SNP's loading on K's eigenvector u_i is
    u_i' z_j = sqrt(w lambda_i) v_ij)."""

    values: np.ndarray
    vectors: np.ndarray

    def loadings(self) -> np.ndarray:
        return np.sqrt(self.values * self.vectors.shape[1])[:, None] * self.vectors


def top_eigen(design: Design, means: np.ndarray, rank: int, power: int = 2, mask=None) -> TopEigen:
    """Randomized subspace iteration (Halko, Martinsson & Tropp 2011) for the ``rank`` leading
    eigenpairs of K = Z Z' / w, with 10 % oversampling and ``power`` iterations: 2 + 2 power
    passes over the genotypes with rank-wide blocks, their products in float32 (twice as fast;
    the eigenpairs only precondition the solves and approximate the GWAS's x' P x before its
    calibration on SNPs solved in float64).  ``mask`` [n, 1]: K of its lines only."""
    k = rank + max(10, rank // 10)
    t0 = time.perf_counter()
    rng = np.random.default_rng(REML_SEED)
    wide = np.repeat(means[:, None], k, axis=1)
    keep = 1.0 if mask is None else mask

    f32 = np.float32
    Q, _ = np.linalg.qr(design.apply(rng.standard_normal((design.width, k)), wide, f32) * keep)
    for _ in range(power):
        W, _ = np.linalg.qr(design.rmat(Q, means, f32))
        Q, _ = np.linalg.qr(design.apply(W, wide, f32) * keep)
    B = design.rmat(Q, means, f32).T  # Q' Z [k, width]
    _, S, Vt = np.linalg.svd(B, full_matrices=False)
    progress(t0, f"K's {rank} leading eigenpairs: {2 + 2 * power} passes")
    return TopEigen(S[:rank] ** 2 / design.width, Vt[:rank])


def preconditioner(design: Design, rank: int = PRECONDITIONER_RANK) -> TopEigen | None:
    """K's leading eigenpairs over every line (one power iteration: 4 passes with rank-wide
    blocks, which cost a few narrow ones), for ridge's preconditioner; None for tiny data."""
    rank = min(rank, (design.n - 2) // 4, design.width // 4)
    if rank < 10:
        return None
    sums, _, _ = design.stats(np.ones((design.n, 1)), np.zeros((design.n, 1)))
    return top_eigen(design, sums[:, 0] / design.n, rank, power=1)


def known(y: np.ndarray) -> np.ndarray:
    """The phenotype with 0 for a line that has none (a trait of a table: hpcsnp/traits.py).
    Only masked lines enter a fit, but a mask multiplies: 0 x NaN would be NaN.

    >>> known(np.array([1.5, np.nan]))
    array([1.5, 0. ])
    """
    return np.where(np.isfinite(y), y, 0.0)


class ScalablePrediction(NamedTuple):
    pred: np.ndarray
    val_pred: np.ndarray
    info: dict


class Prepared(NamedTuple):
    """What every GBLUP solve of a store on the scalable path starts from."""

    design: Design
    deflate: TopEigen | None
    delta: Delta


def prepare(store, encoding: str, y: np.ndarray, masks: np.ndarray, reml_lines: int = REML_LINES,
            start: float | None = None) -> Prepared:
    """The design (dosage filled with the store's SNP means), its preconditioner and delta for
    the fitting lines (``masks``' first column; with the store's covariates, where it has them,
    as fixed effects), with the GBLUP systems of ``masks`` carried through Monte Carlo REML
    (started from ``start``, where given: ``variance_ratio``)."""
    design = Design(store, encoding, np.zeros(store.n_variants))
    if encoding == "dosage":
        design.fill = design_fill(store, design)
    deflate = preconditioner(design)
    carry = Carry(np.repeat(y[:, None], masks.shape[1], axis=1), masks)
    return Prepared(design, deflate, variance_ratio(design, store, encoding, y, np.flatnonzero(masks[:, 0]), deflate,
                                                    reml_lines, known_covariates(store), carry, start))


def known_covariates(store):
    """The store's covariates with 0 where a line has none (those lines are in no system)."""
    return None if store.covariates is None else np.where(np.isfinite(store.covariates), store.covariates, 0.0)


def scalable_fold(store, encoding: str, y: np.ndarray, fit_rows, inner, test_rows,
                  reml_lines: int = REML_LINES) -> ScalablePrediction:
    """One fold's GBLUP on the scalable path, as baseline_fold's exact one: delta by REML on
    (a sample of) the fitting lines, the test lines predicted from a fit on training +
    validation, the validation lines from a fit on training alone with the same delta."""
    fit_rows = np.asarray(fit_rows)
    y = known(y)
    masks = np.zeros((store.n_samples, 2))
    masks[fit_rows, 0] = 1.0
    masks[fit_rows[inner[0]], 1] = 1.0
    design, deflate, delta = prepare(store, encoding, y, masks, reml_lines)
    C = known_covariates(store)
    fit = ridge(design, y, masks, delta.delta, tol=FIT_TOL, what=f"GBLUP {encoding}", deflate=deflate,
                covariates=C, start=delta.start)
    pred = fit.mu + design.apply(fit.beta, fit.means)
    if C is not None:
        pred += covariate_effects(C, y[:, None] - pred, masks)
    info = {"encoding": encoding, "delta": delta.delta, "h2_reml": 1.0 / (1.0 + delta.delta), "mu": float(fit.mu[0]),
            "solver": "scalable", **delta.record(), "cg_iterations": fit.iterations, "passes": design.passes}
    return ScalablePrediction(pred[test_rows, 0], pred[fit_rows[inner[1]], 1], info)


def scalable_effects(store, encoding: str, y: np.ndarray, fit_rows, reml_lines: int = REML_LINES,
                     start: float | None = None):
    """GBLUP of ``fit_rows`` as marker effects (beta, means, fill, mu, delta, info) for predict's
    refit, info as a fold's (REML, iterations, passes); ``start``: where Monte Carlo REML starts
    (``variance_ratio``)."""
    y = known(y)
    masks = np.zeros((store.n_samples, 1))
    masks[fit_rows, 0] = 1.0
    design, deflate, delta = prepare(store, encoding, y, masks, reml_lines, start)
    fit = ridge(design, y, masks, delta.delta, tol=FIT_TOL, what=f"GBLUP {encoding} refit", deflate=deflate,
                covariates=known_covariates(store), start=delta.start)
    info = {**delta.record(), "cg_iterations": fit.iterations, "passes": design.passes}
    return fit.beta[:, 0], fit.means[:, 0], design.fill, float(fit.mu[0]), delta.delta, info


def xpx_approx(zz: np.ndarray, top: TopEigen | None, n: int, delta: float, keep=None, cols=None) -> np.ndarray:
    """SNPs' x' (K + delta I)^-1 x from K's leading eigenpairs (the rest of the spectrum at its
    mean eigenvalue), before calibration; ``zz``: x'x per SNP (centred).  ``keep`` [width]: for
    the kinship of those SNPs alone (LOCO), K_keep = Z S Z' / w_keep: its leading eigenpairs
    taken within K's leading subspace (the eigenpairs of Sigma V S V' Sigma / w_keep there, a
    rank x rank problem), the rest at the mean of what is left of its trace.  ``cols``: of
    these SNPs only (default every one)."""
    w = len(zz)
    width = w if keep is None else float(keep.sum())
    trace = float(zz.sum() if keep is None else zz @ keep) / width
    cols = slice(None) if cols is None else cols
    if top is None:
        return zz[cols] / (trace / (n - 1) + delta)
    loadings, values = top.loadings()[:, cols], top.values
    if keep is not None:
        s = np.sqrt(top.values * w)
        V = top.vectors[:, keep > 0]
        values, W = np.linalg.eigh(s[:, None] * (V @ V.T) * s[None, :] / width)
        loadings = W.T @ loadings
    loaded = loadings ** 2
    rest = (trace - values.sum()) / max(n - 1 - len(values), 1)
    return ((loaded / (values + delta)[:, None]).sum(axis=0)
            + (zz[cols] - loaded.sum(axis=0)) / (max(rest, 0.0) + delta))


def scalable_association(store, y: np.ndarray, calibration_snps: int = CALIBRATION_SNPS,
                         reml_lines: int = REML_LINES, rank: int = GWAS_RANK, groups=None) -> tuple[dict, dict]:
    """EMMAX/P3D's per-SNP test on every phenotyped line (``store.phenotyped``; ``y`` [lines of
    the store]), on the scalable path (see the module's notes).  ``groups``: the SNP columns of
    each chromosome, for LOCO: each chromosome's SNPs are tested against the kinship of the
    others (one more system per chromosome in every pass; x_j' P_-c y then needs one more pass,
    and x' P x is calibrated on SNPs each solved against its own chromosome's system).  Returns
    the per-SNP columns (as gwas.associate's) and what the summary records."""
    from scipy import stats

    p = store.n_variants
    rows = store.phenotyped
    n = len(rows)  # the tested lines
    mask = np.zeros((store.n_samples, 1))
    mask[rows] = 1.0
    y = known(np.where(mask[:, 0] > 0, y, np.nan))
    design = Design(store, "dosage", np.zeros(p))
    w = design.width
    called, total = design.calls(mask[:, 0])
    design.fill = np.divide(total, called, out=np.zeros(p), where=called > 0)
    sums, squares, _ = design.stats(mask, np.zeros((store.n_samples, 1)))
    zz = squares[:, 0] - sums[:, 0] ** 2 / n  # x_c' x_c per SNP
    C = known_covariates(store)
    Q = system_bases(C, mask)[0] if C is not None else np.zeros((store.n_samples, 0))
    XQ = design.rmat(Q, np.zeros(w)) if Q.shape[1] else np.zeros((w, 0))
    zz = zz - (XQ * XQ).sum(axis=1)  # x' M x: after the covariates too
    candidates = np.flatnonzero(zz > 1e-9 * max(zz.max(initial=0), 1e-300))
    if not len(candidates):
        raise InputError(f"{store.path}: every SNP is monomorphic; nothing to test")
    pick = np.sort(np.random.default_rng(REML_SEED).choice(candidates, min(calibration_snps, len(candidates)),
                                                           replace=False))
    E = np.zeros((p, len(pick)))
    E[pick, np.arange(len(pick))] = 1.0
    ZtZ_pick = (design.normal(E, np.repeat(mask, len(pick), axis=1), np.repeat(sums / n, len(pick), axis=1))
                - XQ @ (XQ.T @ E))
    rank = min(rank, (n - 2) // 2, w // 2)
    top = top_eigen(design, sums[:, 0] / n, rank, mask=mask if n < store.n_samples else None) if rank > 0 else None
    carry = Carry(y[:, None], mask, ZtZ_pick) if groups is None else None  # LOCO's systems start from zero
    estimate = variance_ratio(design, store, "dosage", y, rows, top, reml_lines, C, carry)
    delta = estimate.delta
    loco = {}
    if groups is not None:  # system c: every SNP but chromosome c's; the calibration SNPs their own's
        chromosome = np.empty(p, int)
        for c, cols in enumerate(groups):
            chromosome[cols] = c
        S = np.ones((p, len(groups)))
        S[np.arange(p), chromosome] = 0.0
        loco = {"snp_masks": S, "extra_of": chromosome[pick]}
    systems = len(groups) if groups is not None else 1
    masks = np.repeat(mask, systems, axis=1)
    fit = ridge(design, y, masks, delta, extra_rhs=ZtZ_pick, what="GWAS", deflate=top, covariates=C, **loco,
                start=estimate.start)
    B = fit.beta[:, :systems]
    yc = (y - fit.mu[0]) * mask[:, 0]
    yc -= Q @ (Q.T @ yc)
    # P y = (yc - Z beta) / delta, so y' P y = (yc'yc - (Z'yc)' beta) / delta and x_j' P y = w beta_j
    yy = (float(yc @ yc) - (fit.rhs[:, :systems] * B).sum(axis=0)) / delta
    if groups is None:
        sxy = w * B[:, 0]
    else:  # x_j' P_-c y = (x_j' M yc - x_j' M Z_-c beta_c) / delta: one more pass
        ZMZ = design.normal(B, masks, fit.means[:, :systems])
        if Q.shape[1]:
            ZMZ -= XQ @ (XQ.T @ B)
        sxy = (fit.rhs[:, 0] - ZMZ[np.arange(p), chromosome]) / delta
        yy = yy[chromosome]
    b = fit.beta[:, systems:]
    xPx = (zz[pick] - (ZtZ_pick * b).sum(axis=0)) / delta
    # x' P x = x' V^-1 x = sum_i (u_i' x)^2 / (lambda_i + delta) over K's eigenpairs: the leading
    # ones exactly, the rest at their mean eigenvalue; then scaled to the calibration SNPs' exact values
    if groups is None:
        approx = xpx_approx(zz, top, n, delta)
    else:  # each chromosome's SNPs against the spectrum of the others' kinship
        approx = np.empty(p)
        for c, cols in enumerate(groups):
            approx[cols] = xpx_approx(zz, top, n, delta, S[:, c], cols)
    ratios = xPx / approx[pick]
    gamma = float(ratios.mean())
    sxx = gamma * approx
    with np.errstate(divide="ignore", invalid="ignore"):
        beta = sxy / sxx
        s2 = (yy - beta * sxy) / (n - 2 - Q.shape[1])
        se = np.sqrt(s2 / sxx)
        t = beta / se
    freq = np.divide(total, 2 * called, out=np.full(p, np.nan), where=called > 0)
    columns = {"a1_freq": freq, "n": called.astype(int), "maf": np.minimum(freq, 1 - freq),
               "beta": beta, "se": se, "t": t, "p": 2 * stats.t.sf(np.abs(t), n - 2 - Q.shape[1])}
    info = {"delta": delta, **estimate.record(), "gamma": gamma, "rank": rank, "loco": groups is not None,
            "gamma_cv": float(ratios.std(ddof=1) / gamma) if len(ratios) > 1 else None,
            "calibration_snps": len(pick), "cg_iterations": fit.iterations, "passes": design.passes}
    return columns, info
