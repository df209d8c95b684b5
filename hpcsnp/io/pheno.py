"""Phenotype tables keyed by sample id, and fold assignment when the data have none.

Used by the VCF and PLINK ingest paths: genotypes come with sample ids, the
trait comes from a separate table.  Matching is by id; samples on one side
only are listed and dropped only when the user consents.  Folds are read
from a table, or assigned at random (balanced, seeded), optionally keeping
each group (e.g. a bi-parental family) inside one fold.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from hpcsnp.errors import InputError
from hpcsnp.store import check_folds, check_k

NA_VALUES = ["", "NA", "NaN", "nan", "N/A", "."]


def read_table(path, what="phenotype table") -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep=None, engine="python", dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the {what}: {e}") from None


def read_pheno(path, column: str | None = None) -> tuple[pd.Series, pd.DataFrame]:
    """The trait (float, indexed by sample id: the table's first column) and the whole table."""
    table = read_table(path)
    if table.shape[1] < 2:
        raise InputError(f"{path}: a phenotype table needs an id column and at least one trait column")
    idcol = table.columns[0]
    if table[idcol].duplicated().any():
        raise InputError(f"{path}: sample id {table[idcol][table[idcol].duplicated()].iloc[0]!r} occurs twice")
    column = column or table.columns[1]
    if column not in table.columns:
        raise InputError(f"{path}: no column {column!r} (columns: {', '.join(table.columns)})")
    raw = table[column].str.strip()
    values = pd.to_numeric(raw.where(~raw.isin(NA_VALUES)), errors="coerce")
    bad = values.isna() & ~raw.isin(NA_VALUES)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"{path}:{i + 2}: column {column!r}: {raw.iloc[i]!r} is not a number")
    if not np.isfinite(values.dropna()).all():
        raise InputError(f"{path}: column {column!r} has infinite values")
    return pd.Series(values.to_numpy(float), index=table[idcol].str.strip(), name=column), table.set_index(idcol)


def read_groups(path, column: str | None = None) -> pd.Series:
    """Group (e.g. family) per sample id from a table: ids in its first column, groups in
    ``column`` (default: its second column)."""
    table = read_table(path, "groups table")
    if table.shape[1] < 2:
        raise InputError(f"{path}: a groups table needs a sample-id column and a group column")
    idcol = table.columns[0]
    column = column or table.columns[1]
    if column not in table.columns:
        raise InputError(f"{path}: no column {column!r} (columns: {', '.join(table.columns)})")
    if table[idcol].duplicated().any():
        raise InputError(f"{path}: sample id {table[idcol][table[idcol].duplicated()].iloc[0]!r} occurs twice")
    return pd.Series(table[column].str.strip().to_numpy(), index=table[idcol].str.strip(), name=column)


def group_lookup(groups: pd.Series, where: str):
    """A function from sample ids to their groups ('' for ids the table lacks, with a
    warning); refuses a table that matches no sample at all."""
    import logging

    def lookup(ids):
        found = groups.reindex([str(i) for i in ids])
        missing = int(found.isna().sum())
        if missing == len(ids):
            raise InputError(f"{where}: no sample id is in the groups table (samples: {_few(list(ids))}; "
                             f"table: {_few(list(groups.index))}); text files without an id column have ids "
                             "1, 2, ... (the row number)")
        if missing:
            logging.getLogger(__name__).warning(f"{missing} sample(s) have no group in the groups table "
                                                f"({_few([i for i, g in zip(ids, found) if pd.isna(g)])})")
        return found.fillna("").astype(str).to_numpy(dtype=object)
    return lookup


class SampleMatch(NamedTuple):
    """Positions (into the genotype ids) of the samples kept, and how many had no phenotype
    and no genotype."""

    keep: np.ndarray
    n_no_pheno: int
    n_no_geno: int


def match_samples(geno_ids, pheno: pd.Series, *, drop_unmatched: bool, source: str) -> SampleMatch:
    """Positions (into geno_ids) of samples with a genotype and a non-missing phenotype, in
    genotype order.  Anything unmatched is an error unless drop_unmatched."""
    geno_ids = [str(s) for s in geno_ids]
    have = pheno.dropna()
    genotyped = set(geno_ids)
    no_pheno = [s for s in geno_ids if s not in have.index]
    no_geno = [s for s in pheno.index if s not in genotyped]
    if (no_pheno or no_geno) and not drop_unmatched:
        parts = []
        if no_pheno:
            parts.append(f"{len(no_pheno)} genotyped sample(s) lack a phenotype ({_few(no_pheno)})")
        if no_geno:
            parts.append(f"{len(no_geno)} phenotyped sample(s) are not in {source} ({_few(no_geno)})")
        raise InputError("; ".join(parts) + ". Use --drop-unmatched to keep only samples on both sides.")
    keep = [i for i, s in enumerate(geno_ids) if s in have.index]
    if not keep:
        raise InputError(f"no sample of {source} has a phenotype: are the ids the same "
                         f"(genotypes: {_few(geno_ids)}; phenotypes: {_few(list(pheno.index))})?")
    return SampleMatch(np.asarray(keep), len(no_pheno), len(no_geno))


def _few(items, n=3):
    return ", ".join(map(str, items[:n])) + (", ..." if len(items) > n else "")


def assign_folds(ids, k: int, seed: int, groups=None) -> np.ndarray:
    """Balanced random folds 1..k; with groups, whole groups go to one fold (largest
    first, each to the currently smallest fold, ties broken at random)."""
    check_k(k, "--folds")
    n = len(ids)
    rng = np.random.default_rng(seed)
    if groups is None:
        if n < k:
            raise InputError(f"{n} samples cannot fill {k} folds")
        return (rng.permutation(n) % k + 1).astype(np.int8)
    groups = pd.Series(np.asarray(groups, dtype=str))
    sizes = groups.value_counts()
    if len(sizes) < k:
        raise InputError(f"{len(sizes)} groups cannot fill {k} folds")
    order = sizes.sample(frac=1, random_state=seed).sort_values(ascending=False, kind="stable")
    load = np.zeros(k)
    fold_of = {}
    for g, size in order.items():
        smallest = np.flatnonzero(load == load.min())
        f = int(rng.choice(smallest))
        fold_of[g] = f + 1
        load[f] += size
    return groups.map(fold_of).to_numpy(np.int8)


def folds_from(path, ids) -> np.ndarray:
    table = read_table(path, "fold table")
    idcol = table.columns[0]
    col = "fold" if "fold" in table.columns else table.columns[1]
    m = dict(zip(table[idcol].str.strip(), table[col].str.strip()))
    missing = [s for s in ids if s not in m]
    if missing:
        raise InputError(f"{path}: no fold for {len(missing)} sample(s) ({_few(missing)})")
    try:
        folds = np.array([int(m[s]) for s in ids])
    except ValueError:
        raise InputError(f"{path}: folds must be integers 1..K") from None
    check_folds(folds, str(path))
    return folds.astype(np.int8)
