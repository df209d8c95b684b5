"""The mixed-model GWAS: equal to direct GLS and to OLS without kinship, calibrated under the null."""

import json

import numpy as np
import pytest
from helpers import run_cli

from hpcsnp.gwas import associate, benjamini_hochberg, genomic_inflation


def _data(seed=0, n=120, p=30):
    rng = np.random.default_rng(seed)
    g = rng.integers(0, 3, (n, p)).astype(np.int8)
    g[rng.random(g.shape) < 0.05] = -1
    y = 0.8 * np.where(g[:, 4] < 0, 1, g[:, 4]) + rng.normal(0, 1, n)
    return g, y


def test_gwas_equals_a_direct_gls_fit_per_snp():
    from scipy import stats

    g, y = _data()
    n = len(y)
    rng = np.random.default_rng(1)
    Z = rng.normal(size=(n, 50))
    K = Z @ Z.T / 50
    delta = 0.7
    got = associate(g, y, K, delta, block=7)  # blocks that do not divide p
    Vi = np.linalg.inv(K + delta * np.eye(n))
    for j in (0, 4, 29):
        called = g[:, j] >= 0
        x = np.where(called, g[:, j], g[called, j].mean()).astype(float)
        X = np.column_stack([np.ones(n), x])
        XtVi = X.T @ Vi
        cov = np.linalg.inv(XtVi @ X)
        b = cov @ XtVi @ y
        r = y - X @ b
        s2 = (r @ Vi @ r) / (n - 2)
        se = np.sqrt(s2 * cov[1, 1])
        p = 2 * stats.t.sf(abs(b[1] / se), n - 2)
        assert got.loc[j, "beta"] == pytest.approx(b[1], rel=1e-8)
        assert got.loc[j, "se"] == pytest.approx(se, rel=1e-8)
        assert got.loc[j, "p"] == pytest.approx(p, rel=1e-6)
        assert got.loc[j, "n"] == called.sum()
    assert got["p"].idxmin() == 4


def test_without_kinship_it_is_ordinary_least_squares():
    from scipy import stats

    g, y = _data(2)
    got = associate(g, y, None, None)
    for j in range(g.shape[1]):
        called = g[:, j] >= 0
        x = np.where(called, g[:, j], g[called, j].mean()).astype(float)
        fit = stats.linregress(x, y)
        assert got.loc[j, "beta"] == pytest.approx(fit.slope, rel=1e-8)
        assert got.loc[j, "se"] == pytest.approx(fit.stderr, rel=1e-8)
        assert got.loc[j, "p"] == pytest.approx(fit.pvalue, rel=1e-6)


def test_lambda_is_about_one_under_the_null_and_the_cli_writes_every_output(tmp_path):
    """A null trait on structured genotypes (families): the mixed model keeps lambda near 1."""
    rng = np.random.default_rng(3)
    n_fam, per, p = 40, 15, 1500
    parents = rng.integers(0, 3, (n_fam, p))
    g = np.clip(parents[np.repeat(np.arange(n_fam), per)] + rng.integers(-1, 2, (n_fam * per, p)), 0, 2)
    family = np.repeat(rng.normal(0, 1.0, n_fam), per)
    y = 10 + family + rng.normal(0, 1, n_fam * per)  # polygenic family effect, no single SNP
    lines = ["sample\tfold\tphenotype\t" + "\t".join(f"Chr{1 + j // 300:02d}_{1000 * (j + 1)}" for j in range(p))]
    lines += [f"L{i}\t{i % 3 + 1}\t{y[i]:.5f}\t" + "\t".join(map(str, g[i])) for i in range(len(y))]
    (tmp_path / "null.tsv").write_text("\n".join(lines) + "\n")
    run_cli("ingest", tmp_path / "null.tsv", "-o", tmp_path / "null.zarr")
    proc = run_cli("gwas", tmp_path / "null.zarr", "-o", tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "gwas.json").read_text())
    assert 0.85 < summary["lambda_gc"] < 1.15, summary
    assert "lambda" in proc.stdout
    for f in ("gwas.csv", "gwas_manhattan.png", "gwas_qq.png"):
        assert (tmp_path / "out" / f).stat().st_size > 0
    # a plain regression on the same data is inflated by the family structure
    ols = associate(g.astype(np.int8), y, None, None)
    assert genomic_inflation(ols["p"].to_numpy()) > 1.3


def test_benjamini_hochberg_matches_the_step_up_rule():
    rng = np.random.default_rng(4)
    p = np.concatenate([rng.uniform(0, 1e-4, 20), rng.uniform(0, 1, 980)])
    q, cut = benjamini_hochberg(p)
    order = np.sort(p)
    k = max(i + 1 for i in range(len(p)) if order[i] <= 0.05 * (i + 1) / len(p))
    assert cut == order[k - 1] and ((q <= 0.05) == (p <= cut)).all()
