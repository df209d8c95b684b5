"""Several traits on one store (hpcsnp/traits.py): a trait of a phenotype table in place of
the store's phenotype, its unphenotyped lines in no fold, and the same results as a store
ingested with the phenotyped lines alone."""

import shutil

import numpy as np
import pandas as pd
import pytest
from helpers import FAST, run_cli
from scipy.stats import spearmanr

from hpcsnp.errors import InputError
from hpcsnp.folds import fold_split
from hpcsnp.io.simulate import simulate
from hpcsnp.io.text import ingest_tsv
from hpcsnp.linear.baseline import baseline_fold
from hpcsnp.linear.gwas import gwas_store
from hpcsnp.run.loci import linked
from hpcsnp.store import open_store
from hpcsnp.traits import base_store_id


@pytest.fixture(scope="module")
def two_traits(tmp_path_factory):
    """A store of 300 lines (no missing call) and a table, in another order, with its trait
    ``height`` for all but 10 lines and a second trait ``yield`` missing for ~20 % more;
    plus a store ingested from the lines that have ``yield`` alone (same folds)."""
    d = tmp_path_factory.mktemp("traits")
    simulate(d / "sim.tsv", samples=300, snps=150, causal=4, folds=3, missing=0.0, seed=5)
    ingest_tsv(d / "sim.tsv", d / "sim.zarr", progress=False, chunk_rows=64)
    store = open_store(d / "sim.zarr")
    rng = np.random.default_rng(2)
    y = store.phenotype.astype(float)
    other = 0.6 * y + rng.normal(0, y.std(), len(y))
    other[rng.random(len(y)) < 0.2] = np.nan
    table = pd.DataFrame({"line": store.sample_id, "height": y, "yield": other}).iloc[rng.permutation(len(y))]
    table.iloc[:-10].to_csv(d / "traits.tsv", sep="\t", index=False, na_rep="NA")  # 10 lines absent
    kept = set(table.iloc[:-10].dropna(subset=["yield"])["line"])
    raw = pd.read_csv(d / "sim.tsv", sep="\t")
    ids = [str(i) for i in store.sample_id]
    keep = np.array([i in kept for i in ids])
    sub = raw[keep].copy()
    sub["phenotype"] = other[keep]
    sub.insert(0, "id", np.asarray(ids)[keep])
    sub.to_csv(d / "yield_only.tsv", sep="\t", index=False)
    ingest_tsv(d / "yield_only.tsv", d / "yield_only.zarr", progress=False, chunk_rows=64)
    return d, keep


def test_a_trait_replaces_the_phenotype_by_sample_id_and_its_missing_lines_are_in_no_fold(two_traits):
    d, keep = two_traits
    store = open_store(d / "sim.zarr")
    view = open_store(d / "sim.zarr", trait="yield", pheno=d / "traits.tsv")
    table = pd.read_csv(d / "traits.tsv", sep="\t", dtype={"line": str}).set_index("line")
    want = table["yield"].reindex(store.sample_id).to_numpy()
    assert np.array_equal(np.isnan(view.phenotype), np.isnan(want))
    assert np.allclose(view.phenotype[keep], want[keep].astype(np.float32))
    assert np.array_equal(view.fold > 0, keep) and np.array_equal(view.fold[keep], store.fold[keep])
    assert np.array_equal(view.phenotyped, np.flatnonzero(keep))
    for i in range(1, store.n_folds + 1):
        split = fold_split(view.fold, view.n_folds, i)
        for rows in (split.train, split.val, split.test):
            assert keep[rows].all() and np.isfinite(view.phenotype[rows]).all()
        assert len(split.train) + len(split.val) + len(split.test) == keep.sum()
    assert view.name == "sim.yield" and view.trait == "yield"
    assert base_store_id(view.store_id) == store.store_id != view.store_id
    # the second column by default; another trait, or other values, is another data set
    height = open_store(d / "sim.zarr", pheno=d / "traits.tsv")
    assert height.trait == "height" and height.store_id != view.store_id
    assert (height.fold == 0).sum() == 10
    table.rename(columns={"yield": "grain yield (t/ha)"}).to_csv(d / "spaced.tsv", sep="\t")
    spaced = open_store(d / "sim.zarr", trait="grain yield (t/ha)", pheno=d / "spaced.tsv")
    assert spaced.name == "sim.grain_yield__t_ha_" and np.array_equal(spaced.fold, view.fold)


def test_changed_trait_values_are_another_identity(two_traits, tmp_path):
    d, _ = two_traits
    table = pd.read_csv(d / "traits.tsv", sep="\t")
    table.loc[table["yield"].notna().idxmax(), "yield"] += 1.0
    table.to_csv(tmp_path / "t.tsv", sep="\t", index=False, na_rep="NA")
    a = open_store(d / "sim.zarr", trait="yield", pheno=d / "traits.tsv")
    b = open_store(d / "sim.zarr", trait="yield", pheno=tmp_path / "t.tsv")
    assert a.store_id != b.store_id and base_store_id(a.store_id) == base_store_id(b.store_id)


def test_a_trait_that_cannot_be_used_is_an_error_saying_why(two_traits, tmp_path):
    d, _ = two_traits
    with pytest.raises(InputError, match="no column 'oil'"):
        open_store(d / "sim.zarr", trait="oil", pheno=d / "traits.tsv")
    pd.DataFrame({"id": ["x1", "x2"], "oil": [1.0, 2.0]}).to_csv(tmp_path / "other.tsv", sep="\t", index=False)
    with pytest.raises(InputError, match="no line of .* has a value of 'oil'"):
        open_store(d / "sim.zarr", trait="oil", pheno=tmp_path / "other.tsv")
    with pytest.raises(InputError, match="give the table"):
        open_store(d / "sim.zarr", trait="oil")


def test_gwas_of_a_trait_equals_gwas_of_a_store_of_its_phenotyped_lines(two_traits):
    d, keep = two_traits
    view = open_store(d / "sim.zarr", trait="yield", pheno=d / "traits.tsv")
    alone = open_store(d / "yield_only.zarr")
    a, b = gwas_store(view), gwas_store(alone)
    assert a.summary["n"] == b.summary["n"] == keep.sum()
    assert a.summary["delta"] == pytest.approx(b.summary["delta"], rel=1e-8)
    for col in ("beta", "se", "p", "n", "a1_freq"):
        np.testing.assert_allclose(a.table[col], b.table[col], rtol=1e-7, err_msg=col)
    assert a.summary["trait"] == "yield"
    fast = gwas_store(view, solver="scalable")  # the tested lines by a mask over the store's
    assert fast.summary["n"] == keep.sum() and fast.summary["delta"] == pytest.approx(a.summary["delta"], rel=1e-9)
    np.testing.assert_allclose(fast.table["a1_freq"], a.table["a1_freq"], rtol=1e-12)
    assert (fast.table["n"] == a.table["n"]).all()
    la, lf = -np.log10(a.table["p"]), -np.log10(fast.table["p"])
    assert spearmanr(la, lf)[0] >= 0.99 and set(np.argsort(-la.to_numpy())[:3]) == set(np.argsort(-lf.to_numpy())[:3])


@pytest.mark.parametrize("solver", ["exact", "scalable"])
def test_baseline_of_a_trait_equals_that_of_a_store_of_its_phenotyped_lines(two_traits, tmp_path, solver):
    """The exact GBLUPs to rounding; the scalable one to its conjugate-gradient tolerance (its
    preconditioner sees every line of the store)."""
    d, _ = two_traits
    encodings = ("dosage", "onehot") if solver == "exact" else ("dosage",)
    a = baseline_fold(d / "sim.zarr", 2, tmp_path / "a", encodings=encodings, solver=solver, trait="yield",
                      pheno=d / "traits.tsv")
    b = baseline_fold(d / "yield_only.zarr", 2, tmp_path / "b", encodings=encodings, solver=solver)
    for ma, mb in zip(a, b):
        assert ma["n_fit"] == mb["n_fit"] and ma["n_test"] == mb["n_test"]
        assert ma["dataset"] == "sim.yield"
        pa = pd.read_csv(tmp_path / "a" / "sim.yield" / f"baseline_{ma['encoding']}" / "fold_2" / "predictions.csv")
        pb = pd.read_csv(tmp_path / "b" / "yield_only" / f"baseline_{mb['encoding']}" / "fold_2" / "predictions.csv")
        assert list(pa["sample_id"].astype(str)) == list(pb["sample_id"].astype(str))
        tol = 1e-8 if solver == "exact" else 1e-3
        assert np.abs(pa["prediction"] - pb["prediction"]).max() < tol * pb["truth"].std()


def test_a_gwas_without_a_hit_is_linked_to_nothing():
    a = pd.DataFrame({"snps": ["s1;s2"], "lead_snp": ["s1"]})
    assert linked(a, pd.DataFrame(), lambda x, y: 1.0).tolist() == [False]


def test_cv_of_two_traits_then_reduce_and_predict(two_traits, tmp_path):
    """Each trait a data set of one run, trained only on its phenotyped lines; predict refits
    the chosen trait; a table whose values changed is refused before any training."""
    d, keep = two_traits
    run = tmp_path / "run"
    settings = ["--epochs", FAST.max_epochs, "--batch-size", FAST.batch_size, "--models-per-fold", 1,
                "--no-refit", "--threads", 2, "--no-progress"]
    run_cli("cv", d / "sim.zarr", "--run", run, "--pheno", d / "traits.tsv", "--traits", "height,yield",
            *settings)
    summary = pd.read_csv(run / "fold_pcc_summary.csv")
    assert {"sim.height", "sim.yield"} <= set(summary["dataset"])
    assert {"cnn", "gblup_dosage", "ensemble"} <= set(summary.loc[summary["dataset"] == "sim.yield", "model"])
    ids = np.asarray([str(i) for i in open_store(d / "sim.zarr").sample_id])
    tested = pd.concat(pd.read_csv(run / "sim.yield" / f"fold_{i}" / "predictions.csv", dtype={"sample_id": str})
                       for i in (1, 2, 3))
    assert sorted(tested["sample_id"]) == sorted(ids[keep])
    assert f"yield ({d / 'traits.tsv'})" in (run / "report.html").read_text()  # the report names the trait
    refused = run_cli("predict", "--run", run, tmp_path / "new.tsv", "-o", d / "traits.tsv", "--dataset", "sim.yield",
                      check=False)
    assert refused.returncode == 2 and "is an input" in refused.stderr  # never over a table the run reads
    raw = pd.read_csv(d / "sim.tsv", sep="\t").drop(columns=["fold", "phenotype"]).head(8)
    raw.insert(0, "id", [f"new{i}" for i in range(8)])
    raw.to_csv(tmp_path / "new.tsv", sep="\t", index=False)
    run_cli("predict", "--run", run, tmp_path / "new.tsv", "-o", tmp_path / "pred.csv", "--dataset", "sim.yield")
    assert len(pd.read_csv(tmp_path / "pred.csv")) == 8
    changed = pd.read_csv(d / "traits.tsv", sep="\t")
    changed["yield"] = changed["yield"] * 2
    changed.to_csv(tmp_path / "changed.tsv", sep="\t", index=False, na_rep="NA")
    proc = run_cli("cv", d / "sim.zarr", "--run", run, "--pheno", tmp_path / "changed.tsv", "--traits", "yield",
                   *settings, check=False)
    assert proc.returncode != 0 and "other values of the trait" in proc.stderr
    shutil.rmtree(run / "sim.yield" / "fold_2")
    partial = run_cli("reduce", "--run", run, check=False)
    assert partial.returncode != 0 and f"HPCSNP_PHENO={d / 'traits.tsv'} HPCSNP_TRAITS=yield" in partial.stderr
    assert "hpcsnp train" in partial.stderr and "--pheno" in partial.stderr


def test_the_refit_and_its_pev_of_a_trait_equal_those_of_a_store_of_its_phenotyped_lines(two_traits):
    from hpcsnp.linear.baseline import gram_matrix, read_rows
    from hpcsnp.linear.refit import PredictionErrorVariance, marker_effects

    d, keep = two_traits
    view = open_store(d / "sim.zarr", trait="yield", pheno=d / "traits.tsv")
    alone = open_store(d / "yield_only.zarr")
    new = read_rows(view, np.flatnonzero(~keep))  # the unphenotyped lines as new lines
    out = []
    for s in (view, alone):
        G, width = gram_matrix(read_rows(s, np.arange(s.n_samples)), "dosage")
        fit = marker_effects(s, "dosage", G.copy(), width, s.phenotyped)
        out.append((fit.predict(new), *PredictionErrorVariance(s, fit, G, width)(new)))
    for a, b in zip(*out):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
