"""The mixed-model GWAS: equal to direct GLS and to OLS without kinship, calibrated under the null."""

import json

import numpy as np
import pytest
from helpers import family_store, run_cli

from hpcsnp.linear.gwas import associate, benjamini_hochberg, genomic_inflation, read_gwas_table


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


def test_lambda_is_about_one_on_a_null_chromosome_and_the_cli_writes_every_output(tmp_path):
    """Families; a polygenic trait from the SNPs of chromosomes 1-4, none from chromosome 5.
    Tested against the other chromosomes' kinship (--loco), chromosome 5's SNPs keep
    lambda near 1; against the whole genome's (the default) they are deflated, and a plain
    regression is inflated by the family structure."""

    _, g, y = family_store(tmp_path, "null", lambda rng, p: np.where(np.arange(p) < 1200, rng.normal(0, 1, p), 0.0))
    proc = run_cli("gwas", tmp_path / "null.zarr", "-o", tmp_path / "out", "--loco")
    summary = json.loads((tmp_path / "out" / "gwas.json").read_text())
    null = read_gwas_table(tmp_path / "out" / "gwas.tsv").query("chrom == 'Chr05'")["p"].to_numpy()
    assert summary["loco"] and len(null) == 300
    assert 0.85 < genomic_inflation(null) < 1.15
    assert "lambda" in proc.stdout and "leave one chromosome out" in proc.stdout
    for f in ("gwas.tsv", "gwas_manhattan.png", "gwas_qq.png"):
        assert (tmp_path / "out" / f).stat().st_size > 0
    run_cli("gwas", tmp_path / "null.zarr", "-o", tmp_path / "whole")
    whole = read_gwas_table(tmp_path / "whole" / "gwas.tsv").query("chrom == 'Chr05'")["p"].to_numpy()
    assert genomic_inflation(whole) < genomic_inflation(null)
    ols = associate(g[:, 1200:].astype(np.int8), y, None, None)
    assert genomic_inflation(ols["p"].to_numpy()) > 1.3


def test_benjamini_hochberg_matches_the_step_up_rule():
    rng = np.random.default_rng(4)
    p = np.concatenate([rng.uniform(0, 1e-4, 20), rng.uniform(0, 1, 980)])
    q, cut = benjamini_hochberg(p)
    order = np.sort(p)
    k = max(i + 1 for i in range(len(p)) if order[i] <= 0.05 * (i + 1) / len(p))
    assert cut == order[k - 1] and ((q <= 0.05) == (p <= cut)).all()


def _structured_store(tmp_path, seed=5, n_fam=30, per=10, p=240, n_chrom=4):
    """Families on ``n_chrom`` chromosomes with missing calls and three strong QTL on chromosomes 1-3."""
    from hpcsnp.io.text import ingest_tsv

    rng = np.random.default_rng(seed)
    parents = rng.integers(0, 3, (n_fam, p))
    g = np.clip(parents[np.repeat(np.arange(n_fam), per)] + rng.integers(-1, 2, (n_fam * per, p)), 0, 2)
    qtl = [10, 70, 130]
    y = 5 + g[:, qtl] @ np.array([1.0, -0.8, 0.7]) + rng.normal(0, 1, len(g))
    g[rng.random(g.shape) < 0.03] = -1
    per_chrom = p // n_chrom
    names = [f"Chr{1 + j // per_chrom:02d}_{1000 * (j + 1)}" for j in range(p)]
    lines = ["sample\tfold\tphenotype\t" + "\t".join(names)]
    lines += [f"L{i}\t{i % 3 + 1}\t{y[i]:.5f}\t" + "\t".join(map(str, g[i])).replace("-1", "NA") for i in range(len(y))]
    (tmp_path / "s.tsv").write_text("\n".join(lines) + "\n")
    ingest_tsv(tmp_path / "s.tsv", tmp_path / "s.zarr")
    return tmp_path / "s.zarr", g, y, per_chrom, qtl


def test_leave_one_chromosome_out_equals_gls_with_the_other_chromosomes_kinship(tmp_path):
    from scipy import stats

    from hpcsnp.linear.gwas import gwas_store
    from hpcsnp.store import open_store

    path, g, y, per_chrom, qtl = _structured_store(tmp_path)
    store = open_store(path)
    loco = gwas_store(store, loco=True)
    whole = gwas_store(store, loco=False)
    assert loco.summary["loco"] and loco.summary["chromosomes"] == 4 and not whole.summary["loco"]
    assert loco.summary["delta"] == pytest.approx(whole.summary["delta"])
    y = store.phenotype.astype(float)  # as written to the text file
    n = len(y)
    called = g >= 0
    x_all = np.where(called, g, (np.where(called, g, 0).sum(0) / called.sum(0))).astype(float)
    delta = loco.summary["delta"]
    for j in (0, qtl[0], qtl[1], 239):  # chromosomes 1, 1, 2, 4
        other = np.flatnonzero(np.arange(g.shape[1]) // per_chrom != j // per_chrom)
        Z = x_all[:, other] - x_all[:, other].mean(0)
        Vi = np.linalg.inv(Z @ Z.T / len(other) + delta * np.eye(n))
        X = np.column_stack([np.ones(n), x_all[:, j]])
        cov = np.linalg.inv(X.T @ Vi @ X)
        b = cov @ X.T @ Vi @ y
        r = y - X @ b
        se = np.sqrt((r @ Vi @ r) / (n - 2) * cov[1, 1])
        row = loco.table.iloc[j]
        assert row["snp"] == f"Chr{1 + j // per_chrom:02d}_{1000 * (j + 1)}"
        assert row["beta"] == pytest.approx(b[1], rel=1e-7)
        assert row["p"] == pytest.approx(2 * stats.t.sf(abs(b[1] / se), n - 2), rel=1e-5)
    # the QTL are not absorbed by a kinship that contains them: more significant than with the whole genome's
    assert (loco.table["p"].iloc[qtl].to_numpy() < whole.table["p"].iloc[qtl].to_numpy()).all()
    assert loco.summary["lambda_gc"] > whole.summary["lambda_gc"]


def test_one_chromosome_has_nothing_to_leave_out(tmp_path):
    from hpcsnp.linear.gwas import gwas_store
    from hpcsnp.store import open_store

    path, *_ = _structured_store(tmp_path, n_chrom=1)
    r = gwas_store(open_store(path), loco=True)
    assert not r.summary["loco"] and r.summary["chromosomes"] == 1
    assert r.summary["loco_ignored"] == "every SNP is on one chromosome (Chr01)"
    assert r.table["p"].equals(gwas_store(open_store(path), loco=False).table["p"])
    proc = run_cli("gwas", path, "--loco", "-o", tmp_path / "one")
    assert "hpcsnp: warning: --loco has no effect: every SNP is on one chromosome (Chr01)" in proc.stderr
    assert json.loads((tmp_path / "one" / "gwas.json").read_text())["loco_ignored"]


def test_loco_on_snps_without_positions_warns_and_records_why(tmp_path):
    rng = np.random.default_rng(0)
    g = rng.integers(0, 3, (60, 20))
    y = g[:, 3] + rng.normal(0, 1, 60)
    lines = ["sample\tfold\tphenotype\t" + "\t".join(f"rs{j}" for j in range(20))]
    lines += [f"L{i}\t{i % 3 + 1}\t{y[i]:.4f}\t" + "\t".join(map(str, g[i])) for i in range(60)]
    (tmp_path / "rs.tsv").write_text("\n".join(lines) + "\n")
    run_cli("ingest", tmp_path / "rs.tsv", "-o", tmp_path / "rs.zarr")
    proc = run_cli("gwas", tmp_path / "rs.zarr", "--loco", "-o", tmp_path / "out")
    assert "--loco has no effect: the SNPs carry no chromosome" in proc.stderr
    summary = json.loads((tmp_path / "out" / "gwas.json").read_text())
    assert summary["loco"] is False and "no chromosome" in summary["loco_ignored"]


def test_a_constant_phenotype_is_refused_before_any_output(tmp_path):
    rng = np.random.default_rng(1)
    g = rng.integers(0, 3, (30, 8))
    lines = ["sample\tfold\tphenotype\t" + "\t".join(f"Chr01_{j + 1}" for j in range(8))]
    lines += [f"L{i}\t{i % 3 + 1}\t5.0\t" + "\t".join(map(str, g[i])) for i in range(30)]
    (tmp_path / "c.tsv").write_text("\n".join(lines) + "\n")
    run_cli("ingest", tmp_path / "c.tsv", "-o", tmp_path / "c.zarr")  # ingest only warns
    proc = run_cli("gwas", tmp_path / "c.zarr", "-o", tmp_path / "out", check=False)
    assert proc.returncode == 2 and "the phenotype is the same (5) for every line" in proc.stderr, proc.stderr
    assert "Warning" not in proc.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("where, message", [
    ("missing/deeper/out", None),  # created, parents too
    ("afile/out", "afile is a file, not a directory"),
    ("afile", "is a file"),  # click says so
])
def test_an_unusable_output_directory_is_refused_before_the_work(tmp_path, where, message):
    path, *_ = _structured_store(tmp_path, n_fam=6, p=160, n_chrom=2)
    (tmp_path / "afile").write_text("mine\n")
    proc = run_cli("gwas", path, "-o", tmp_path / where, check=False)
    if message is None:
        assert proc.returncode == 0 and (tmp_path / where / "gwas.tsv").exists()
    else:
        assert proc.returncode == 2 and message in proc.stderr and "internal error" not in proc.stderr
        assert (tmp_path / "afile").read_text() == "mine\n"


def test_the_table_has_plink2_columns_and_the_stores_alleles(tmp_path):
    """gwas.tsv read back as PLINK 2's --glm table: REF and ALT are the store's, the effect
    allele A1 is ALT (the allele the codes count), A1_FREQ and OBS_CT are over the called
    lines, and BETA is per copy of A1: positive where ALT raises the phenotype."""
    import pandas as pd

    from hpcsnp.store import open_store

    rng = np.random.default_rng(7)
    n, p = 80, 12
    g = rng.integers(0, 3, (n, p))
    y = 10 + 1.5 * g[:, 3] - 1.5 * g[:, 8] + rng.normal(0, 0.5, n)
    miss = rng.random((n, p)) < 0.05
    gt = {0: "0/0", 1: "0/1", 2: "1/1"}
    bases = ["A", "C", "G", "T"]
    head = ("##fileformat=VCFv4.2\n##contig=<ID=1>\n##FORMAT=<ID=GT,Number=1,Type=String,Description=\"GT\">\n"
            "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t" + "\t".join(f"L{i}" for i in range(n)) + "\n")
    body = "".join(f"1\t{100 * (j + 1)}\tsnp{j}\t{bases[j % 4]}\t{bases[(j + 1) % 4]}\t.\t.\t.\tGT\t"
                   + "\t".join("./." if miss[i, j] else gt[g[i, j]] for i in range(n)) + "\n" for j in range(p))
    (tmp_path / "x.vcf").write_text(head + body)
    (tmp_path / "ph.tsv").write_text("id\ty\n" + "".join(f"L{i}\t{y[i]:.5f}\n" for i in range(n)))
    run_cli("ingest", tmp_path / "x.vcf", "--pheno", tmp_path / "ph.tsv", "--folds", "3", "-o", tmp_path / "x.zarr")
    run_cli("gwas", tmp_path / "x.zarr", "-o", tmp_path / "out")
    text = (tmp_path / "out" / "gwas.tsv").read_text()
    assert text.splitlines()[0].split("\t") == ["#CHROM", "POS", "ID", "REF", "ALT", "A1", "A1_FREQ", "TEST",
                                                "OBS_CT", "BETA", "SE", "T_STAT", "P", "Q_BH"]
    t = pd.read_csv(tmp_path / "out" / "gwas.tsv", sep="\t", dtype={"ID": str, "REF": str, "ALT": str, "A1": str})
    s = open_store(tmp_path / "x.zarr")
    assert t["REF"].tolist() == s.alleles[:, 0].tolist() == [bases[j % 4] for j in range(p)]
    assert (t["A1"] == t["ALT"]).all() and t["ALT"].tolist() == s.alleles[:, 1].tolist()
    assert (t["TEST"] == "ADD").all() and t["ID"].tolist() == [f"snp{j}" for j in range(p)]
    codes = s.genotypes[:]
    called = codes >= 0
    np.testing.assert_array_equal(t["OBS_CT"], called.sum(axis=0))
    np.testing.assert_allclose(t["A1_FREQ"], np.where(called, codes, 0).sum(axis=0) / called.sum(axis=0) / 2,
                               rtol=1e-5)
    assert t.loc[3, "BETA"] > 1.0 and t.loc[8, "BETA"] < -1.0
    assert sorted(t["P"].nsmallest(2).index) == [3, 8]


def test_a_text_store_has_no_alleles_and_reduce_still_reads_an_older_gwas_csv(tmp_path):
    """Without alleles REF, ALT and A1 are PLINK's missing value '.'; a run's gwas.csv from
    before the PLINK 2 layout is read in place of gwas.tsv."""
    import pandas as pd

    from hpcsnp.linear.gwas import gwas_table_path, read_gwas_table

    path, *_ = _structured_store(tmp_path, n_fam=6, p=160, n_chrom=2)
    run_cli("gwas", path, "-o", tmp_path / "out")
    raw = pd.read_csv(tmp_path / "out" / "gwas.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert (raw[["REF", "ALT", "A1"]] == ".").all().all()
    table = read_gwas_table(gwas_table_path(tmp_path / "out"))
    assert table["ref"].isna().all() and len(table) == 160 and {"snp", "chrom", "pos", "p", "q_bh"} <= set(table)
    old = tmp_path / "old"
    old.mkdir()
    table[["snp", "chrom", "pos", "n", "beta", "se", "t", "p", "q_bh"]].to_csv(old / "gwas.csv", index=False)
    assert gwas_table_path(old) == old / "gwas.csv"
    np.testing.assert_allclose(read_gwas_table(gwas_table_path(old))["p"], table["p"], rtol=1e-5)
