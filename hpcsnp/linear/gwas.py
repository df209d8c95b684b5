"""Single-marker association with a mixed model (EMMAX / P3D): ``hpcsnp gwas STORE``.

y = mu + x_j beta_j + g + e, g ~ N(0, sg2 K), e ~ N(0, se2 I), with K the dosage
relationship matrix of every phenotyped line (the baseline's, from the same Gram
matrix).  The variance ratio delta = se2 / sg2 is estimated once by REML without any
marker (the "population parameters previously determined" of P3D, Zhang et al. 2010;
EMMAX, Kang et al. 2010), so V = K + delta I is fixed; with its Cholesky factor L every
SNP is one least-squares fit on the whitened data L^-1 [1, x_j, y]: beta, its standard
error (the residual variance estimated per SNP, n - 2 degrees of freedom) and a t-test
p-value.  Missing calls are set to the SNP's mean.  The family structure that makes a
plain regression's p-values too small everywhere is absorbed by g; the genomic inflation
lambda (median chi^2 / 0.455) says how well.

Leave one chromosome out (``loco``, an option): the SNPs of chromosome c are tested
against the kinship of the other chromosomes' SNPs, K_-c, so a SNP (and the SNPs in LD
with it) is not also part of the random effect that competes with it ("proximal
contamination", Lippert et al. 2011; Yang et al. 2014; GCTA's --mlma-loco, BOLT-LMM and
REGENIE do this).  delta stays the whole-genome REML estimate (P3D); each chromosome
costs one Gram matrix of its own SNPs (summing to the whole one) and one Cholesky
factorisation.  It is not the default: in families of inbred lines (NAM, biparental
crosses) LD spans whole chromosomes, so once a chromosome's own kinship is left out
every SNP on a chromosome with a large-effect locus tests as associated (SoyNAM height:
lambda 0.55 with the whole-genome kinship, 9.4 leaving chromosomes out, up to 70 on
Gm10).  It suits panels of unrelated lines, where LD decays within the chromosome.

The table (``gwas.tsv``) has PLINK 2's ``--glm`` columns and names, tab-separated, "."
for a missing value, so tools that read PLINK 2's output read it: #CHROM, POS, ID, REF,
ALT, A1 (the effect allele: the one the genotype codes count, ALT), A1_FREQ (its frequency
over the called lines), TEST (ADD), OBS_CT (lines with a call), BETA (per copy of A1),
SE, T_STAT, P, and Q_BH (Benjamini-Hochberg q, hpcsnp's own).  A store ingested from text
knows no alleles: REF, ALT and A1 are ".", A1 being the allele counted by the codes.

Memory: the store's int8 genotypes (n p bytes) and three n x n matrices; SNPs are
whitened in blocks of ``block``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hpcsnp.atomic import atomic_write_text
from hpcsnp.errors import InputError
from hpcsnp.figures import genome_x, place_labels, pyplot, save_figure
from hpcsnp.genotypes import mean_dosage
from hpcsnp.linear.baseline import (
    REMLSpectrum,
    centred_kernels,
    check_memory,
    covariate_basis,
    fixed_design,
    gram_matrix,
    memory_needed,
    orthonormal_columns,
    read_rows,
)
from hpcsnp.resources import keep_freed_memory
from hpcsnp.rundir import GWAS_TSV, LEGACY_GWAS_CSV

logger = logging.getLogger(__name__)

CHI2_MEDIAN = 0.454936  # median of chi^2 with 1 degree of freedom
GWAS_JSON = "gwas.json"


@dataclass
class GwasResult:
    table: pd.DataFrame  # snp, chrom, pos, ref, alt, a1_freq, n, maf, beta, se, t, p, q_bh
    summary: dict  # lambda, thresholds, delta, h2, n, seconds


def associate(g: np.ndarray, y: np.ndarray, K: np.ndarray | None, delta: float | None,
              block: int = 1024, overwrite: bool = False, covariates=None) -> pd.DataFrame:
    """Per SNP (columns of int8 codes ``g`` [n, p], -1 missing): n called, MAF, beta, se, t, p
    of y = mu + C b + x beta + e with Var(e) proportional to K + delta I (``K`` None: I, plain
    least squares; ``covariates`` C [n, c], None: none; n - 2 - c degrees of freedom).
    ``overwrite``: K may be overwritten (saves an n x n copy)."""
    from scipy import stats
    from scipy.linalg import cho_factor, solve_triangular

    n, p = g.shape
    y = np.asarray(y, np.float64)
    if K is None:
        L = None
    else:
        V = K if overwrite else K.copy()
        V[np.diag_indices(n)] += delta
        L = cho_factor(V, lower=True, overwrite_a=True, check_finite=False)[0]

    def whiten(a):
        return a if L is None else solve_triangular(L, a, lower=True, check_finite=False)

    F = np.ones((n, 1)) if covariates is None else fixed_design(covariates)
    Fq = orthonormal_columns(whiten(F))  # the whitened fixed effects' column space
    df = n - Fq.shape[1] - 1
    ys = whiten(y)
    ry = ys - Fq @ (Fq.T @ ys)
    yy = ry @ ry
    out = {k: np.empty(p) for k in ("a1_freq", "n", "maf", "beta", "se", "t", "p")}
    for j in range(0, p, block):
        gb = g[:, j:j + block]
        called = gb >= 0
        n_called = called.sum(axis=0)
        mean = np.where(called, gb, 0).sum(axis=0) / np.maximum(n_called, 1)
        x = np.where(called, gb, mean).astype(np.float64)
        xs = whiten(x)
        rx = xs - Fq @ (Fq.T @ xs)
        sxx = (rx * rx).sum(axis=0)
        sxy = rx.T @ ry
        with np.errstate(divide="ignore", invalid="ignore"):
            beta = sxy / sxx
            s2 = (yy - beta * sxy) / df
            se = np.sqrt(s2 / sxx)
            t = beta / se
        sl = slice(j, j + gb.shape[1])
        freq = mean / 2
        out["a1_freq"][sl] = np.where(n_called > 0, freq, np.nan)
        out["n"][sl], out["maf"][sl] = n_called, np.minimum(freq, 1 - freq)
        out["beta"][sl], out["se"][sl], out["t"][sl] = beta, se, t
        out["p"][sl] = 2 * stats.t.sf(np.abs(t), df)
    frame = pd.DataFrame(out)
    frame["n"] = frame["n"].astype(int)
    return frame


def benjamini_hochberg(p: np.ndarray, level: float = 0.05) -> tuple[np.ndarray, float]:
    """BH-adjusted p-values (q) and the largest p-value declared significant at ``level``
    (0 when none is).

    >>> q, cut = benjamini_hochberg(np.array([0.01, 0.04, 0.03, 0.5]))
    >>> q.round(3).tolist(), cut
    ([0.04, 0.053, 0.053, 0.5], 0.01)
    """
    p = np.asarray(p, float)
    m = np.isfinite(p).sum()
    order = np.argsort(np.where(np.isfinite(p), p, np.inf))
    ranked = p[order]
    q_sorted = np.minimum.accumulate((ranked * m / np.arange(1, len(p) + 1))[::-1])[::-1]
    q = np.empty_like(p)
    q[order] = np.minimum(q_sorted, 1.0)
    ok = np.flatnonzero(ranked <= level * np.arange(1, len(p) + 1) / m)
    return q, float(ranked[ok.max()]) if len(ok) else 0.0


def genomic_inflation(p: np.ndarray) -> float:
    """lambda_GC: the median of the chi^2 (1 df) statistics the p-values correspond to,
    over its expected value 0.455."""
    from scipy import stats

    p = np.asarray(p, float)
    p = p[np.isfinite(p)]
    return float(np.median(stats.chi2.isf(p, 1)) / CHI2_MEDIAN) if len(p) else float("nan")


def chromosome_columns(contig: np.ndarray) -> list[np.ndarray]:
    """The store's SNP columns grouped by chromosome label, in order of first appearance."""
    codes, _ = pd.factorize(pd.Series(contig).astype(str))
    return [np.flatnonzero(codes == c) for c in range(codes.max(initial=-1) + 1)]


def check_testable(y: np.ndarray, where) -> None:
    """Refuse a phenotype no association test can use: fewer than 3 lines (the t-test has
    n - 2 degrees of freedom) or the same value for every line (nothing to explain; the
    REML fit and every t-statistic would be rounding noise)."""

    if len(y) < 3:
        raise InputError(f"{where}: {len(y)} phenotyped line(s); the GWAS needs at least 3")
    if np.ptp(y) == 0:
        raise InputError(f"{where}: the phenotype is the same ({y[0]:.6g}) for every line, so there is no "
                         "variation to associate with any SNP")


def loco_problem(contig: np.ndarray, groups: list[np.ndarray]) -> str | None:
    """Why leaving one chromosome out cannot be done on these SNPs, or None when it can: it
    needs at least two named chromosomes.

    >>> loco_problem(np.array(["", ""]), [np.array([0, 1])])
    'the SNPs carry no chromosome (their names have no position, e.g. rs12345, and the store records none)'
    >>> loco_problem(np.array(["1", "1"]), [np.array([0, 1])])
    'every SNP is on one chromosome (1)'
    """
    named = [cols for cols in groups if str(contig[cols[0]])]
    if not named:
        return ("the SNPs carry no chromosome (their names have no position, e.g. rs12345, and the store "
                "records none)")
    if len(named) == 1:
        unnamed = len(contig) - len(named[0])
        return f"every SNP is on one chromosome ({contig[named[0][0]]})" + (
            f" or on none ({unnamed:,} without a chromosome)" if unnamed else "")
    return None


def gwas_store(store, *, gram=None, block: int = 1024, loco: bool = False, progress=None,
               solver: str = "exact") -> GwasResult:
    """EMMAX/P3D on every phenotyped line of ``store``; ``gram``: its dosage Gram matrix and
    width (e.g. the baseline's cache), else computed here.  ``loco``: test each chromosome's
    SNPs against the kinship of the others (see the module's notes); with one chromosome
    (or none named) there is nothing to leave out: a warning says so, the whole-genome kinship is
    used and gwas.json records why under ``loco_ignored``.  ``progress``:
    called with the number of SNPs tested after each chromosome.  ``solver``: exact (n x n
    kinship), scalable (linear/scalable.py: the same test with x' P x calibrated, memory of
    (n + p) x a block; LOCO as one more system per chromosome) or auto (exact where it fits)."""
    from hpcsnp.linear.scalable import choose_solver, scalable_association

    t0 = time.perf_counter()
    rows = store.phenotyped  # every line, unless a trait of a table lacks some (hpcsnp/traits.py)
    y = store.phenotype.astype(np.float64)[rows]
    check_testable(y, store.path)
    groups = chromosome_columns(store.contig)
    loco_note = loco_problem(store.contig, groups) if loco else None
    if loco_note:
        logger.warning(f"--loco has no effect: {loco_note}; every SNP is tested against the whole-genome kinship")
    loco = loco and loco_note is None
    unnamed = int((pd.Series(store.contig).astype(str) == "").sum())
    if loco and unnamed:
        logger.warning(f"--loco: {unnamed:,} SNPs carry no chromosome; they are left out together, as one more "
                       "chromosome")
    solver, _ = choose_solver(store, solver)
    if solver == "scalable":
        columns, info = scalable_association(store, store.phenotype.astype(np.float64),
                                             groups=groups if loco else None)
        if progress:
            progress(store.n_variants)
        frame = pd.DataFrame(columns)
        delta = info.pop("delta")
        kinship = "leave-one-chromosome-out dosage kinship" if loco else "dosage kinship"
        method = (f"EMMAX/P3D's t-test, scalable: {kinship}, REML on {info['reml_lines']:,} lines, "
                  f"P y by conjugate gradients, x'Px from K's {info['rank']} leading eigenpairs calibrated on "
                  f"{info['calibration_snps']} SNPs solved exactly")
        return _finish(store, len(rows), frame, delta, loco, loco_note, len(groups), method, t0,
                       {"solver": "scalable", **info})
    check_memory(store)
    keep_freed_memory(memory_needed(store.n_samples, store.n_variants))
    g = read_rows(store, rows)
    # a run's cached Gram matrix is of every line of the store: used when every line is tested
    G, width = gram if gram is not None and len(rows) == store.n_samples else gram_matrix(g, "dosage")
    everyone = np.arange(len(rows))
    K, _ = centred_kernels(G, width, everyone, everyone[:0])
    if not loco:
        del G  # LOCO derives each chromosome's kinship from it
    C = None if store.covariates is None else store.covariates[rows]
    delta, _ = REMLSpectrum(K, y, covariates=C).maximise()
    if not loco:
        frame = associate(g, y, K, delta, block=block, overwrite=True, covariates=C)
        if progress:
            progress(g.shape[1])
    else:
        del K
        fill = mean_dosage([g], g.shape[1])
        parts = []
        for cols in groups:
            G_c, width_c = gram_matrix(g[:, cols], "dosage", fill=fill[cols])
            np.subtract(G, G_c, out=G_c)  # the other chromosomes' Gram matrix
            K_c, _ = centred_kernels(G_c, width - width_c, everyone, everyone[:0])
            del G_c
            parts.append(associate(g[:, cols], y, K_c, delta, block=block, overwrite=True,
                                   covariates=C).set_index(cols))
            del K_c
            if progress:
                progress(len(cols))
        del G
        frame = pd.concat(parts).sort_index().reset_index(drop=True)
    kinship = ("leave-one-chromosome-out dosage kinship" if loco else "dosage kinship")
    c = 0 if C is None else covariate_basis(C).shape[1]  # their rank: the degrees of freedom they take
    fixed = f", fixed effects: intercept and {c} covariate column(s)" if C is not None else ""
    method = f"EMMAX/P3D, {kinship}{fixed}, REML once on the whole genome, t-test per SNP (n - {2 + c} df)"
    return _finish(store, len(rows), frame, delta, loco, loco_note, len(groups), method, t0, {"solver": "exact"})


def _finish(store, n, frame, delta, loco, loco_note, chromosomes, method, t0, extra) -> GwasResult:
    """The table's SNP columns and q-values, and the summary (``n`` lines tested)."""
    frame.insert(0, "snp", store.variant_id)
    frame.insert(1, "chrom", store.contig)
    frame.insert(2, "pos", store.position)
    alleles = store.alleles if store.alleles is not None else np.full((store.n_variants, 2), "")
    frame.insert(3, "ref", alleles[:, 0])
    frame.insert(4, "alt", alleles[:, 1])
    q, bh = benjamini_hochberg(frame["p"].to_numpy())
    frame["q_bh"] = q
    m = int(np.isfinite(frame["p"]).sum())
    summary = {"n": n, "snps_tested": m, "delta": delta, "h2_reml": 1 / (1 + delta),
               "lambda_gc": genomic_inflation(frame["p"].to_numpy()), "bonferroni_p": 0.05 / max(m, 1),
               "bh_p_threshold_5pct": bh, "significant_bonferroni": int((frame["p"] < 0.05 / max(m, 1)).sum()),
               "significant_bh_5pct": int((frame["q_bh"] <= 0.05).sum()), "loco": loco,
               **({"loco_ignored": loco_note} if loco_note else {}),
               "chromosomes": chromosomes, "method": method, **extra,
               **({"trait": store.trait, "pheno": store.trait_source} if store.trait else {}),
               **({"covariates": store.covariate_names, "covar": store.covariate_source}
                  if store.covariates is not None else {}),
               "seconds": time.perf_counter() - t0}
    return GwasResult(frame, summary)


# the table's columns as PLINK 2 names them, from ours; TEST is added
PLINK2_COLUMNS = {"chrom": "#CHROM", "pos": "POS", "snp": "ID", "ref": "REF", "alt": "ALT", "a1": "A1",
                  "a1_freq": "A1_FREQ", "test": "TEST", "n": "OBS_CT", "beta": "BETA", "se": "SE", "t": "T_STAT",
                  "p": "P", "q_bh": "Q_BH"}


def plink2_table(table: pd.DataFrame) -> str:
    """The association table as PLINK 2's ``--glm`` writes one (see the module's notes)."""
    out = table.assign(a1=table["alt"], test="ADD").replace({"ref": {"": "."}, "alt": {"": "."}, "a1": {"": "."}})
    out = out[list(PLINK2_COLUMNS)].rename(columns=PLINK2_COLUMNS)
    return out.to_csv(sep="\t", index=False, na_rep=".", float_format="%.6g")


def read_gwas_table(path: Path) -> pd.DataFrame:
    """A table ``write_gwas`` wrote (gwas.tsv, or an older gwas.csv), in our column names;
    ValueError when it is not one."""
    if path.suffix == ".tsv":
        table = pd.read_csv(path, sep="\t", dtype={"ID": str, "#CHROM": str, "REF": str, "ALT": str, "A1": str},
                            keep_default_na=False, na_values=["."])
        if not set(PLINK2_COLUMNS.values()) <= set(table.columns):
            raise ValueError(f"columns {', '.join(map(str, table.columns[:4]))}..., not PLINK 2's")
        return table.rename(columns={v: k for k, v in PLINK2_COLUMNS.items()})
    return pd.read_csv(path, dtype={"snp": str, "chrom": str}, keep_default_na=False, na_values=["nan", "NaN", ""])


def gwas_table_path(directory: Path) -> Path:
    """The association table of ``directory``: gwas.tsv, or an older run's gwas.csv."""
    legacy = directory / LEGACY_GWAS_CSV
    return legacy if legacy.exists() and not (directory / GWAS_TSV).exists() else directory / GWAS_TSV


def write_gwas(result: GwasResult, out_dir: Path, label: str = "") -> list[Path]:
    """gwas.tsv, gwas.json and the Manhattan and QQ plots in ``out_dir``."""

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / GWAS_TSV, plink2_table(result.table))
    (out_dir / LEGACY_GWAS_CSV).unlink(missing_ok=True)  # an older table would contradict this one
    atomic_write_text(out_dir / GWAS_JSON, json.dumps(result.summary, indent=2) + "\n")
    paths = [out_dir / GWAS_TSV, out_dir / GWAS_JSON, out_dir / "gwas_manhattan.png", out_dir / "gwas_qq.png"]
    plot_manhattan(result.table, result.summary, paths[2], label)
    plot_qq(result.table["p"].to_numpy(), result.summary["lambda_gc"], paths[3], label)
    return paths


MANHATTAN_LABELS = 10  # hits labelled on the Manhattan plot, at most


def manhattan_hits(table: pd.DataFrame, threshold: float, most: int = MANHATTAN_LABELS) -> pd.DataFrame:
    """The SNPs to label: per chromosome the smallest p below ``threshold``, at most ``most``
    of them, smallest p first.

    >>> t = pd.DataFrame({"snp": list("abcd"), "chrom": ["1", "1", "2", "3"], "p": [1e-9, 1e-8, 1e-7, 0.2]})
    >>> manhattan_hits(t, 1e-6)["snp"].tolist()
    ['a', 'c']
    """
    hits = table[table["p"] < threshold]
    return hits.loc[hits.groupby("chrom", sort=False)["p"].idxmin()].nsmallest(most, "p")


def plot_manhattan(table: pd.DataFrame, summary: dict, path: Path, label: str = "", ax=None) -> None:
    """-log10 p along the genome with the Bonferroni and BH lines; the best SNP of each
    chromosome with a Bonferroni hit labelled."""

    plt = pyplot()
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(12, 3.4))
    f = table.reset_index(drop=True)
    x, ticks = genome_x(f)
    colours = np.where(pd.factorize(f["chrom"])[0] % 2 == 0, "#1f4e79", "#7fa7cf")
    ax.scatter(x, -np.log10(np.maximum(f["p"].to_numpy(float), 1e-300)), c=colours, s=6, linewidths=0)
    ax.axhline(-np.log10(summary["bonferroni_p"]), color="#b03a2e", lw=0.8, ls="--", label="Bonferroni 0.05")
    if summary["bh_p_threshold_5pct"] > 0:
        ax.axhline(-np.log10(summary["bh_p_threshold_5pct"]), color="#d68910", lw=0.8, ls=":", label="BH 5 %")
    if ticks:
        ax.set_xticks([t for _, t in ticks], [c for c, _ in ticks], fontsize=7, rotation=90)
    ax.set_ylabel("-log10 p")
    ax.legend(fontsize=7, loc="upper right")
    hits = manhattan_hits(f, summary["bonferroni_p"])
    place_labels(ax, x[hits.index], -np.log10(np.maximum(hits["p"].to_numpy(float), 1e-300)), hits["snp"].tolist())
    ax.set_title(f"{label} mixed-model GWAS (lambda {summary['lambda_gc']:.3f})".strip(), fontsize=9)
    if own:
        fig.tight_layout()
        save_figure(fig, path)


def plot_qq(p: np.ndarray, lam: float, path: Path, label: str = "") -> None:
    """Observed against expected -log10 p, with the pointwise 95 % band of the expected
    order statistics under the null (the i-th smallest of m uniform p-values is
    Beta(i, m - i + 1))."""
    from scipy import stats

    plt = pyplot()
    p = np.sort(p[np.isfinite(p)])
    m = len(p)
    i = np.arange(1, m + 1)
    expected = -np.log10((i - 0.5) / m)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    if m:
        lo, hi = stats.beta.ppf(0.025, i, m - i + 1), stats.beta.ppf(0.975, i, m - i + 1)
        ax.fill_between(expected, -np.log10(hi), -np.log10(lo), color="0.85", lw=0, label="95 % under the null")
        ax.legend(fontsize=7, loc="upper left")
    ax.scatter(expected, -np.log10(np.maximum(p, 1e-300)), s=5, c="#1f4e79", linewidths=0)
    top = max(expected.max(initial=1), 1)
    ax.plot([0, top], [0, top], color="grey", lw=0.8)
    ax.set_xlabel("expected -log10 p")
    ax.set_ylabel("observed -log10 p")
    ax.set_title(f"{label} QQ (lambda {lam:.3f})".strip(), fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
