"""What reduce says about a data set's SNP rankings: every attribution the folds computed,
grouped into loci, their stability across folds, and the GWAS beside them (``loci``
does the work; this module reads the run and assembles the tables)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from hpcsnp.config import ATTRIBUTION_METHODS, COMBINED, COMBINED_PARTS, SIGNED_ATTRIBUTIONS
from hpcsnp.errors import InputError, StoreError
from hpcsnp.linear.gwas import gwas_table_path, read_gwas_table
from hpcsnp.run.loci import clump, compare, genotype_columns, linked, loci_table, r2_matrix, stability
from hpcsnp.rundir import DatasetRecord, RunDir
from hpcsnp.store import open_store

logger = logging.getLogger(__name__)

GWAS_TOP_P = 1e-3  # GWAS SNPs considered for its own top loci: the top K with p below this


def fold_scores(run: RunDir, dataset: str, n_folds: int, n_variants: int, method: str):
    """(per-fold mean scores [folds, SNPs], per-fold sample counts), or None when a fold
    lacks this method's shard."""
    import zarr

    sums, counts = [], []
    for i in range(1, n_folds + 1):
        path = run.shard(dataset, i, method)
        if not path.exists():
            return None
        try:
            shard = zarr.open_array(str(path), mode="r")
            sums.append(np.asarray(shard[:], dtype=np.float64))
        except Exception as e:  # noqa: BLE001 - zarr raises several types for a damaged array
            raise InputError(f"{path}: {method} shard cannot be read ({e}); redo the fold with --force") from None
        if sums[-1].shape != (n_variants,):
            raise InputError(f"{path}: shard has shape {sums[-1].shape}, the data set has {n_variants} SNPs")
        counts.append(int(shard.attrs["n_samples"]))
    counts = np.asarray(counts)
    return np.stack(sums) / counts[:, None], counts


@dataclass
class Ranking:
    """Everything reduce writes about one data set's rankings."""

    scores: pd.DataFrame  # snp, chrom, pos, <method>, <method>_rank for every method beside saliency
    loci: list = field(default_factory=list)  # top_loci rows
    stability: list = field(default_factory=list)  # per top SNP and method
    summary: list = field(default_factory=list)  # per method
    vs_gwas: list = field(default_factory=list)
    gwas: pd.DataFrame | None = None
    gwas_loci: pd.DataFrame | None = None
    alleles: pd.DataFrame | None = None  # ref, alt by SNP id, where the store knows them


def rank_dataset(run: RunDir, ds: DatasetRecord, var: pd.DataFrame, saliency: np.ndarray, top: int,
                 methods=ATTRIBUTION_METHODS) -> Ranking:
    """Scores of every method the folds computed (saliency: the run's mean, given), their
    top ``top`` SNPs clumped into loci (r^2 from the store), stability across folds, and
    the comparison with RUN/<dataset>/gwas.tsv when it exists."""

    name = ds.dataset
    scores = var[["snp", "chrom", "pos"]].copy()
    scores.attrs["dataset"] = name
    scores["saliency"] = saliency
    per_fold = {}
    for method in methods:
        got = fold_scores(run, name, ds.n_folds, ds.n_variants, method)
        if got is None:
            continue
        mean = (got[0] * got[1][:, None]).sum(axis=0) / got[1].sum()
        if method in SIGNED_ATTRIBUTIONS:  # ranked by the magnitude of the folds' signed mean
            scores[f"{method}_signed"] = mean
            per_fold[method], mean = np.abs(got[0]), np.abs(mean)
        else:
            per_fold[method] = got[0]
        if method != "saliency":
            scores[method] = mean
    if all(m in per_fold for m in COMBINED_PARTS):
        a, b = COMBINED_PARTS
        per_fold[COMBINED] = np.sqrt(per_fold[a] * per_fold[b])
        scores[COMBINED] = np.sqrt(scores[a].to_numpy() * scores[b].to_numpy())
    for method in per_fold:
        scores[f"{method}_rank"] = scores[method].rank(ascending=False, method="first").astype(int)
    out = Ranking(scores)
    gwas_path = gwas_table_path(run.dataset_dir(name))
    if gwas_path.exists():
        out.gwas = _read_gwas(gwas_path, ds)
    store = _open(ds)
    if store is not None and store.alleles is not None:
        out.alleles = pd.DataFrame(store.alleles, index=store.variant_id, columns=["ref", "alt"])
    tops = {m: scores.nsmallest(top, f"{m}_rank").index.to_numpy() for m in per_fold}
    if out.gwas is not None:
        g = out.gwas.set_index("snp").reindex(scores["snp"])
        p = g["p"].to_numpy(float)
        order = np.argsort(np.where(np.isfinite(p), p, np.inf))[:top]
        tops["gwas"] = order[p[order] < GWAS_TOP_P]
        scores["gwas_p"] = p
    loci_by = {}
    if store is not None:
        cols = np.unique(np.concatenate(list(tops.values()))) if tops else np.zeros(0, int)
        X = genotype_columns(store, cols)
        where = {c: k for k, c in enumerate(cols)}
        R2 = r2_matrix(X)
        col_of = {scores["snp"].iat[c]: where[c] for c in cols}

        def r2_of(a, b):
            return R2[col_of[a], col_of[b]]
        for m, idx in tops.items():
            sub = scores.iloc[idx].copy()
            if m == "gwas":
                sub["gwas_score"] = -np.log10(np.maximum(sub["gwas_p"], 1e-300))
                sub["gwas_rank"] = np.arange(1, len(sub) + 1)
            k = [where[c] for c in idx]
            table = loci_table(sub.rename(columns={f"{m}_rank": "rank"}), clump(sub, R2[np.ix_(k, k)]),
                               "gwas_score" if m == "gwas" else m)
            if m != "gwas" and "gwas_p" in scores:
                table["lead_gwas_p"] = scores.set_index("snp").loc[table["lead_snp"], "gwas_p"].to_numpy()
            loci_by[m] = table
    if "gwas" in loci_by:
        found = np.zeros(len(loci_by["gwas"]), dtype=bool)
        for m in per_fold:
            if m in loci_by:
                loci_by[m]["shared_with_gwas"] = linked(loci_by[m], loci_by["gwas"], r2_of)
                if m == "saliency":
                    found = linked(loci_by["gwas"], loci_by[m], r2_of)
        out.gwas_loci = loci_by["gwas"].assign(dataset=name, found_by_saliency=found)
    for m in per_fold:
        if m in loci_by:
            out.loci += loci_by[m].assign(dataset=name, method=m).to_dict("records")
    for m, pf in per_fold.items():
        st, rho = stability(pf, tops[m], top)
        sub = scores.iloc[tops[m]]
        locus_of = {}
        for r in loci_by.get(m, pd.DataFrame()).itertuples():
            for s in r.snps.split(";"):
                locus_of[s] = r.locus
        out.stability += pd.DataFrame({"dataset": name, "method": m, "rank": sub[f"{m}_rank"].to_numpy(),
                                       "snp": sub["snp"].to_numpy(), "chrom": sub["chrom"].to_numpy(),
                                       "pos": sub["pos"].to_numpy(), "locus": [locus_of.get(s) for s in sub["snp"]],
                                       **st}).to_dict("records")
        row = {"dataset": name, "method": m, "top": top, "fold_rank_correlation": rho,
               "loci_in_top": len(loci_by[m]) if m in loci_by else None}
        if out.gwas is not None and m in loci_by:
            cmp = compare(scores, m, out.gwas, loci_by[m], loci_by["gwas"], r2_of)
            row.update(cmp)
            out.vs_gwas.append({"dataset": name, "method": m, "top": top, **cmp})
        out.summary.append(row)
    return out


def _read_gwas(path, ds: DatasetRecord) -> pd.DataFrame:
    """RUN/<dataset>/gwas.tsv; a damaged one is an error naming the command that writes it again."""
    try:
        table = read_gwas_table(path)
        if not {"snp", "p"} <= set(table.columns) or len(table) != ds.n_variants:
            raise ValueError(f"{len(table)} rows with columns {', '.join(map(str, table.columns[:4]))}...")
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise InputError(f"{path} cannot be read ({e}): the file is damaged; write it again with "
                         f"hpcsnp gwas {ds.store_args} --run {path.parent.parent} --name {ds.dataset}") from None
    return table


def _open(ds: DatasetRecord):

    try:
        return open_store(ds.store)  # the genotypes (for r^2) only: no trait or covariate table needed
    except StoreError as e:
        logger.warning(f"{ds.dataset}: top SNPs not grouped into loci: the store is needed for r^2 ({e})")
        return None
