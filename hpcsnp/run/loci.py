"""From ranked SNPs to loci, and how much to trust a ranking.

``clump`` groups the top SNPs of a ranking into loci the way PLINK's --clump does: in rank
order, each SNP not yet taken leads a new locus, and every lower-ranked top SNP on the
same chromosome within ``window_kb`` whose genotypes correlate with the lead's (r^2 >=
``r2_min``, r^2 from the store) joins it.  Adjacent SNPs in linkage disequilibrium then
count as one hit, not several.  ``stability`` says, for each top SNP, in how many folds
it is in that fold's own top K and how much its per-fold score varies, and how well the
folds' rankings agree overall (mean pairwise Spearman correlation).  ``compare`` sets a
ranking beside the mixed-model GWAS: rank correlation with -log10 p and the overlap of
their top loci.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from hpcsnp.store import row_chunks

WINDOW_KB = 5000  # plant LD (inbred families) spans megabases
R2_MIN = 0.5


def genotype_columns(store, columns) -> np.ndarray:
    """Dosages of the given SNP columns for every sample, float64 [n, k], missing calls set
    to the column mean; read chunk by chunk (memory n x k)."""

    columns = np.asarray(columns, dtype=np.int64)
    out = np.empty((store.n_samples, len(columns)))
    for lo, hi, g in row_chunks(store):
        out[lo:hi] = g[:, columns]
    miss = out < 0
    if miss.any():
        called = np.where(miss, 0.0, out)
        mean = called.sum(0) / np.maximum((~miss).sum(0), 1)
        out = np.where(miss, mean, out)
    return out


def r2_matrix(X: np.ndarray) -> np.ndarray:
    """Squared correlations between the columns of X (0 for a constant column)."""
    Z = X - X.mean(axis=0)
    norm = np.sqrt((Z * Z).sum(axis=0))
    Z = np.divide(Z, norm, out=np.zeros_like(Z), where=norm > 0)
    return (Z.T @ Z) ** 2


@dataclass
class Locus:
    lead: int  # position in the ranked top list
    members: list


def clump(top: pd.DataFrame, r2: np.ndarray, window_kb: float = WINDOW_KB, r2_min: float = R2_MIN) -> list[Locus]:
    """Loci of ``top`` (rows in rank order with chrom and pos; ``r2`` between its rows).
    Positions unknown (-1): the window is ignored and r^2 alone decides.

    >>> top = pd.DataFrame({"chrom": ["1", "1", "1", "2"], "pos": [100, 200, 9_000_000, 100]})
    >>> r2 = np.array([[1, .9, .9, .9], [.9, 1, .1, .1], [.9, .1, 1, .1], [.9, .1, .1, 1]])
    >>> [(l.lead, l.members) for l in clump(top, r2)]
    [(0, [0, 1]), (2, [2]), (3, [3])]
    """
    chrom, pos = top["chrom"].to_numpy(), top["pos"].to_numpy()
    taken = np.zeros(len(top), dtype=bool)
    loci = []
    for i in range(len(top)):
        if taken[i]:
            continue
        members = [i]
        taken[i] = True
        for j in range(i + 1, len(top)):
            if taken[j] or chrom[j] != chrom[i]:
                continue
            near = pos[i] < 0 or pos[j] < 0 or abs(int(pos[j]) - int(pos[i])) <= window_kb * 1000
            if near and r2[i, j] >= r2_min:
                members.append(j)
                taken[j] = True
        loci.append(Locus(i, members))
    return loci


def loci_table(top: pd.DataFrame, loci: list[Locus], score: str) -> pd.DataFrame:
    """One row per locus: locus, chrom, start, end, the lead SNP's position and name, its score
    and rank, number of SNPs and their names."""
    rows = []
    for k, locus in enumerate(loci, start=1):
        m = top.iloc[locus.members]
        lead = top.iloc[locus.lead]
        rows.append({"locus": k, "chrom": lead["chrom"], "start": int(m["pos"].min()), "end": int(m["pos"].max()),
                     "lead_pos": int(lead["pos"]), "lead_snp": lead["snp"], "lead_score": lead[score],
                     "lead_rank": int(lead["rank"]),
                     "n_snps": len(m), "snps": ";".join(m["snp"])})
    return pd.DataFrame(rows)


def stability(per_fold: np.ndarray, top_idx, k: int) -> tuple[pd.DataFrame, float]:
    """``per_fold`` [folds, SNPs] (each fold's mean score).  For each SNP of ``top_idx``: in
    how many folds it is in that fold's top k, and the mean and sd of its per-fold score
    relative to that fold's mean score (so folds on different scales compare); and the
    mean pairwise Spearman correlation of the folds' rankings."""
    ranks = pd.DataFrame(per_fold.T).rank(ascending=False, method="first").to_numpy()  # [SNPs, folds]
    in_top = (ranks[np.asarray(top_idx)] <= k).sum(axis=1)
    rel = per_fold / per_fold.mean(axis=1, keepdims=True)
    corr = pd.DataFrame(per_fold.T).corr(method="spearman").to_numpy()
    iu = np.triu_indices(len(per_fold), 1)
    table = pd.DataFrame({"folds_in_top": in_top, "n_folds": len(per_fold),
                          "fold_score_mean": rel[:, top_idx].mean(axis=0),
                          "fold_score_sd": rel[:, top_idx].std(axis=0, ddof=1) if len(per_fold) > 1 else np.nan})
    return table, float(corr[iu].mean()) if len(iu[0]) else float("nan")


def linked(a: pd.DataFrame, b: pd.DataFrame, r2_of) -> np.ndarray:
    """For each locus of ``a``: whether a locus of ``b`` is the same locus: they share a SNP,
    or their lead SNPs are in LD (``r2_of(snp, snp)`` >= R2_MIN)."""
    out = np.zeros(len(a), dtype=bool)
    if not len(b):  # e.g. a GWAS without a SNP below GWAS_TOP_P: its loci table has no columns
        return out
    b_snps = [set(s.split(";")) for s in b["snps"]]
    for i, r in enumerate(a.itertuples()):
        mine = set(r.snps.split(";"))
        out[i] = any(mine & other or r2_of(r.lead_snp, lead) >= R2_MIN
                     for other, lead in zip(b_snps, b["lead_snp"]))
    return out


def compare(scores: pd.DataFrame, score: str, gwas: pd.DataFrame, loci: pd.DataFrame,
            gwas_loci: pd.DataFrame, r2_of) -> dict:
    """A ranking beside the GWAS: Spearman correlation of the score with -log10 p over every
    SNP, and how many of the top loci of each are the same locus (``linked``)."""
    g = gwas.set_index("snp").reindex(scores["snp"])
    logp = -np.log10(np.maximum(g["p"].to_numpy(float), 1e-300))
    ok = np.isfinite(logp)
    rho = pd.Series(scores[score].to_numpy()[ok]).corr(pd.Series(logp[ok]), method="spearman")
    return {"spearman_vs_gwas": float(rho), "attribution_loci": len(loci), "gwas_loci": len(gwas_loci),
            "shared_loci": int(linked(loci, gwas_loci, r2_of).sum()),
            "gwas_loci_found": int(linked(gwas_loci, loci, r2_of).sum())}
