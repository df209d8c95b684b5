"""One store, many traits: a trait column of a phenotype table put in place of the store's own
phenotype, as GEMMA's ``-n`` and PLINK 2's ``--pheno-name`` choose a column.

The genotypes are ingested once; ``--pheno TABLE --trait NAME`` on a verb that reads a
store (cv, train, baseline, gwas) gives it another trait of the same lines.  The table's
first column is the sample id (as at ingest); lines of the store the table lacks, or
whose value is missing (``NA``, ``.``, empty), are *unphenotyped* for that trait: they
belong to no fold (fold 0), so they are never trained on, validated on, tested on, fitted
or tested in the GWAS; their genotypes stay in the store for the other traits.

The trait's values are part of the data set's identity: its store id is the store's
followed by the trait's name and a hash of its values, so a fold, cache or refit made
from one version of the table is never taken for another's (every check that compares
store ids compares this).  This module must not import TensorFlow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path

import numpy as np

from hpcsnp.errors import InputError

logger = logging.getLogger(__name__)

TRAIT_SEPARATOR = "+"  # store id of a trait view: <store id>+<trait>@<hash of its values>


def base_store_id(store_id: str | None) -> str | None:
    """The store's own id in a trait view's id (the id itself otherwise).

    >>> base_store_id("3f2a+yield@0c1d"), base_store_id("3f2a"), base_store_id(None)
    ('3f2a', '3f2a', None)
    """
    return None if store_id is None else store_id.split(TRAIT_SEPARATOR, 1)[0]


def trait_key(name: str, values: np.ndarray) -> str:
    """A short hash of a trait's name and float32 values (NaN for a missing line), in the
    store's row order.

    >>> trait_key("h", np.array([1.0, np.nan])) == trait_key("h", np.array([1.0, np.nan], np.float32))
    True
    >>> trait_key("h", np.array([1.0, 2.0])) == trait_key("h", np.array([1.0, 2.5]))
    False
    """
    h = hashlib.sha256(name.encode())
    h.update(np.ascontiguousarray(np.asarray(values, dtype=np.float32)).tobytes())
    return h.hexdigest()[:16]


def trait_values(store, pheno, trait: str | None) -> tuple[str, np.ndarray]:
    """(trait name, float32 value per store line, NaN where the table has none) from the
    phenotype table ``pheno``: its first column the sample id, ``trait`` one of its columns
    (its second column when None)."""
    from hpcsnp.io.pheno import _few, read_pheno

    values, _ = read_pheno(pheno, trait)
    ids = [str(s) for s in store.sample_id]
    aligned = values.reindex(ids).to_numpy(dtype=np.float64)
    found = int(np.isfinite(aligned).sum())
    if found == 0:
        have = values.dropna()
        raise InputError(f"{pheno}: no line of {store.path} has a value of {values.name!r} (store ids: "
                         f"{_few(ids)}; table ids with a value: {_few(list(have.index))}); the table's first "
                         "column must hold the store's sample ids (`hpcsnp info STORE` lists them)")
    y = aligned.astype(np.float32)
    if not np.isfinite(y[np.isfinite(aligned)]).all():
        raise InputError(f"{pheno}: {values.name!r} has a value beyond float32's range")
    return str(values.name), y


def select_trait(store, trait: str | None = None, pheno=None):
    """``store`` with the trait in place of its phenotype (see the module's notes); the store
    itself when neither is given.  ``trait`` without ``pheno`` names the store's own trait
    (accepted, for a uniform command line), anything else is an error that says what to give."""
    if pheno is None:
        if trait is None:
            return store
        own = store.attrs.get("trait") or store.attrs.get("source", {}).get("pheno_column")
        if trait == own:
            return store
        raise InputError(f"--trait {trait}: {store.path} holds one trait ({own or 'unnamed'}); give the table "
                         f"that has {trait!r} with --pheno TABLE")
    pheno = Path(pheno).resolve()
    name, y = trait_values(store, pheno, trait)
    missing = ~np.isfinite(y)
    fold = store.fold.copy()
    fold[missing] = 0
    if missing.any():
        logger.info(f"{store.name}.{name}: {int(missing.sum()):,} of {len(y):,} lines have no value; they are left "
                    "out of every fold")
    return dataclasses.replace(store, phenotype=y, fold=fold, trait=name, trait_source=str(pheno),
                               trait_key=trait_key(name, y))


def covariate_matrix(store, path, names=()) -> tuple[np.ndarray, list[str]]:
    """The covariates of the table at ``path`` (first column the sample id) for each store
    line: [lines, columns] float64, NaN where the table has no value, and the columns'
    names.  ``names``: the columns to use [every column but the first].  A column whose
    values are all numbers is one covariate; any other, or one named ``COLUMN:cat`` (family
    or trial numbers), is categorical: one 0/1 column per level but its first (in sorted
    order), named ``column=level``."""
    import pandas as pd

    from hpcsnp.io.pheno import NA_VALUES, _few, read_table

    table = read_table(path, "covariate table")
    if table.shape[1] < 2:
        raise InputError(f"{path}: a covariate table needs a sample-id column and at least one covariate column")
    idcol = table.columns[0]
    ids = table[idcol].str.strip()
    if ids.duplicated().any():
        raise InputError(f"{path}: sample id {ids[ids.duplicated()].iloc[0]!r} occurs twice")
    wanted = [str(n).rpartition(":") if str(n).endswith(":cat") else ("", "", str(n)) for n in names or ()]
    categorical = {col for col, sep, _ in wanted if sep}
    names = [col if sep else name for col, sep, name in wanted] or list(table.columns[1:])
    missing = [c for c in names if c not in table.columns or c == idcol]
    if missing:
        raise InputError(f"{path}: no covariate column {missing[0]!r} (columns: {', '.join(table.columns[1:])})")
    order = pd.Index(ids).get_indexer([str(s) for s in store.sample_id])
    found = order >= 0
    if not found.any():
        raise InputError(f"{path}: no line of {store.path} is in the covariate table (store ids: "
                         f"{_few([str(s) for s in store.sample_id])}; table ids: {_few(list(ids))})")
    columns, labels = [], []
    for name in names:
        raw = table[name].str.strip()
        known = ~raw.isin(NA_VALUES)
        values = pd.to_numeric(raw.where(known), errors="coerce")
        if name not in categorical and (values.notna() == known).all():  # numeric
            col = np.full(store.n_samples, np.nan)
            col[found] = values.to_numpy(float)[order[found]]
            columns.append(col)
            labels.append(name)
            continue
        levels = sorted(raw[known].unique())
        if len(levels) > max(50, len(raw) // 4):
            raise InputError(f"{path}: column {name!r} has {len(levels)} distinct non-numeric values; a "
                             "categorical covariate (trial, year, environment) has a few levels")
        per_line = np.full(store.n_samples, None, dtype=object)
        per_line[found] = raw.where(known, None).to_numpy(dtype=object)[order[found]]
        for level in levels[1:]:
            col = np.where(per_line == level, 1.0, 0.0)
            col[pd.isna(per_line)] = np.nan
            columns.append(col)
            labels.append(f"{name}={level}")
    return np.column_stack(columns) if columns else np.zeros((store.n_samples, 0)), labels


def select_covariates(store, path, names=()):
    """``store`` with the covariates of the table at ``path`` (covariate_matrix): fixed
    effects in every model and the GWAS; a line without a value of every covariate is in no
    fold.  The covariates are part of the data set's identity."""
    C, labels = covariate_matrix(store, path, names)
    path = Path(path).resolve()
    if not labels:
        raise InputError(f"{path}: the chosen columns give no covariate (a categorical column with one level)")
    gone = ~np.isfinite(C).all(axis=1) & (store.fold > 0)
    fold = store.fold.copy()
    fold[gone] = 0
    if gone.any():
        logger.info(f"{store.name}: {int(gone.sum()):,} phenotyped lines lack a covariate value; they are left out of "
                    "every fold")
    h = hashlib.sha256("\n".join(labels).encode())
    h.update(np.ascontiguousarray(C).tobytes())
    return dataclasses.replace(store, fold=fold, covariates=C, covariate_names=labels, covariate_source=str(path),
                               covariate_key=h.hexdigest()[:16], covariate_columns=list(names) or None)


def trait_label(trait: str) -> str:
    """The trait's part of a data-set name: its name with anything but letters, digits, '.',
    '_' and '-' replaced by '_'.

    >>> trait_label("yield"), trait_label("plant height (cm)")
    ('yield', 'plant_height__cm_')
    """
    import re

    return re.sub(r"[^A-Za-z0-9._-]", "_", trait)


def default_dataset_name(store_path, trait: str | None = None) -> str:
    """A data set's name without --name: the store's file name without .zarr, then
    ``.<trait>`` (trait_label) for a trait of a phenotype table.

    >>> default_dataset_name("/x/soy.zarr"), default_dataset_name("soy.zarr", "plant height")
    ('soy', 'soy.plant_height')
    """
    name = Path(store_path).name
    name = name[:-5] if name.endswith(".zarr") else name
    return name if trait is None else f"{name}.{trait_label(trait)}"


def view_options(trait=None, pheno=None, covar=None, covar_names=()) -> list[str]:
    """The command-line options that open a store as this view (trait, covariates).

    >>> view_options("yield", "/t.tsv", "/c.tsv", ["env"])
    ['--pheno', '/t.tsv', '--trait', 'yield', '--covar', '/c.tsv', '--covar-name', 'env']
    """
    out = ["--pheno", str(pheno), "--trait", trait] if trait else []
    if covar:
        out += ["--covar", str(covar), *[a for c in covar_names or () for a in ("--covar-name", c)]]
    return out


def split_traits(values) -> list[str]:
    """--traits a,b --trait c as one list, in order, each once.

    >>> split_traits(["height,yield", "oil", "height"])
    ['height', 'yield', 'oil']
    """
    out: list[str] = []
    for v in values or ():
        for t in str(v).split(","):
            t = t.strip()
            if t and t not in out:
                out.append(t)
    return out
