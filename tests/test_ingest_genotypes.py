"""VCF and PLINK ingest with a phenotype table: same store as the text path, clear errors."""

import gzip

import numpy as np
import pandas as pd
import pytest
from helpers import run_cli

from hpcsnp.errors import InputError
from hpcsnp.io.genotype_files import ingest_genotypes
from hpcsnp.io.pheno import assign_folds
from hpcsnp.io.plink import PlinkSource
from hpcsnp.io.simulate import simulate_formats
from hpcsnp.io.text import ingest_tsv
from hpcsnp.io.vcf import VcfSource
from hpcsnp.store import open_store

pytest.importorskip("cyvcf2")
pytest.importorskip("bed_reader")


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return simulate_formats(tmp_path_factory.mktemp("fmt"), samples=150, snps=60, folds=3, missing=0.1, seed=4)


def test_tsv_vcf_and_plink_give_identical_stores(sim, tmp_path):
    ingest_tsv(sim["tsv"], tmp_path / "t.zarr", progress=False)
    ingest_genotypes(VcfSource(sim["vcf"]), tmp_path / "v.zarr", pheno=sim["pheno"], progress=False)
    ingest_genotypes(PlinkSource(sim["bfile"]), tmp_path / "p.zarr", pheno=sim["pheno"], progress=False)
    t = open_store(tmp_path / "t.zarr")
    assert (t.genotypes[:] == -1).mean() == pytest.approx(0.1, abs=0.02)
    for name in ("v.zarr", "p.zarr"):
        o = open_store(tmp_path / name)
        np.testing.assert_array_equal(o.genotypes[:], t.genotypes[:])
        assert list(o.variant_id) == list(t.variant_id) and list(o.sample_id) == list(t.sample_id)
        assert list(o.contig) == list(t.contig) and o.position.tolist() == t.position.tolist()
        np.testing.assert_array_equal(o.phenotype, t.phenotype)
        np.testing.assert_array_equal(o.fold, t.fold)


def test_store_opens_in_xarray_with_named_dimensions(sim, tmp_path):
    xr = pytest.importorskip("xarray")
    ingest_genotypes(VcfSource(sim["vcf"]), tmp_path / "v.zarr", pheno=sim["pheno"], progress=False)
    ds = xr.open_zarr(tmp_path / "v.zarr")
    assert dict(ds.sizes) == {"samples": 150, "variants": 60, "alleles": 2}
    assert ds["call_dosage"].dims == ("samples", "variants") and ds["call_dosage"].dtype == np.int8
    for name in ("sample_id", "sample_phenotype", "sample_fold", "variant_id", "variant_contig", "variant_position",
                 "variant_allele"):
        assert name in ds
    assert ds["variant_allele"].dims == ("variants", "alleles")
    assert ds["variant_allele"][0].values.tolist() == ["A", "G"]


def test_mismatched_ids_are_listed_and_dropped_only_on_request(sim, tmp_path):
    p = pd.read_csv(sim["pheno"], sep="\t")
    p.iloc[:5, 0] = [f"X{i}" for i in range(5)]  # 5 unknown ids, 5 genotyped samples without phenotype
    p.to_csv(tmp_path / "bad.tsv", sep="\t", index=False)
    with pytest.raises(InputError, match=r"5 genotyped sample\(s\) lack a phenotype \(S00001, S00002, S00003, \.\.\.\); "  # noqa: E501
                                         r"5 phenotyped sample\(s\) are not in .*--drop-unmatched"):
        ingest_genotypes(VcfSource(sim["vcf"]), tmp_path / "s.zarr", pheno=tmp_path / "bad.tsv", progress=False)
    rep = ingest_genotypes(VcfSource(sim["vcf"]), tmp_path / "s.zarr", pheno=tmp_path / "bad.tsv",
                           drop_unmatched=True, progress=False)
    assert rep.n_samples == 145 and any("5 genotyped without phenotype" in line for line in rep.extra)
    assert open_store(tmp_path / "s.zarr").attrs["dropped_samples"]["no_phenotype"] == 5


VCF_HEAD = ("##fileformat=VCFv4.2\n##contig=<ID=1>\n##FORMAT=<ID=GT,Number=1,Type=String,Description=\"GT\">\n"
            "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tA\tB\tC\n")


def vcf(tmp_path, body):
    path = tmp_path / "x.vcf"
    path.write_text(VCF_HEAD + body)
    (tmp_path / "ph.tsv").write_text("id\ty\tfold\nA\t1\t1\nB\t2\t2\nC\t3\t3\n")
    return path


def test_multiallelic_indel_and_haploid_sites_are_skipped_and_counted(tmp_path):
    path = vcf(tmp_path, "1\t10\trs1\tA\tG\t.\t.\t.\tGT\t0/0\t0|1\t./.\n"
                         "1\t20\t.\tA\tG,T\t.\t.\t.\tGT\t0/0\t1/2\t0/0\n"
                         "1\t30\t.\tAT\tA\t.\t.\t.\tGT\t0/0\t0/1\t0/0\n"
                         "1\t40\t.\tC\tT\t.\t.\t.\tGT\t0\t1\t1\n"
                         "1\t50\t.\tC\tT\t.\t.\t.\tGT\t1/1\t0/1\t1|1\n")
    rep = ingest_genotypes(VcfSource(path), tmp_path / "s.zarr", pheno=tmp_path / "ph.tsv", progress=False)
    s = open_store(tmp_path / "s.zarr")
    assert list(s.variant_id) == ["rs1", "1_50"]  # ID '.' -> CHROM_POS
    assert s.genotypes[:].T.tolist() == [[0, 1, -1], [2, 1, 2]]
    assert s.attrs["skipped_variants"] == {"multiallelic": 1, "not a SNP (indel or other)": 1, "ploidy 1": 1}
    assert any("1 multiallelic" in line for line in rep.extra)
    with pytest.raises(InputError, match=r"1:20: multiallelic"):
        ingest_genotypes(VcfSource(path, strict=True), tmp_path / "t.zarr", pheno=tmp_path / "ph.tsv",
                         progress=False)


def test_corrupt_files_are_clear_errors(sim, tmp_path):
    bad = tmp_path / "bad.vcf.gz"
    bad.write_bytes(gzip.compress(b"this is not a vcf\n"))
    with pytest.raises(InputError, match="bad.vcf.gz"):
        ingest_genotypes(VcfSource(bad), tmp_path / "s.zarr", pheno=sim["pheno"], progress=False)
    trunc = tmp_path / "trunc.vcf.gz"
    trunc.write_bytes(sim["vcf"].read_bytes()[:3000])
    with pytest.raises(InputError, match="trunc.vcf.gz"):
        ingest_genotypes(VcfSource(trunc), tmp_path / "s.zarr", pheno=sim["pheno"], progress=False)
    assert not (tmp_path / "s.zarr").exists()
    for ext in (".bim", ".fam"):
        (tmp_path / f"p{ext}").write_text((sim["bfile"].parent / f"sim{ext}").read_text())
    (tmp_path / "p.bed").write_bytes(b"\x00\x00\x00garbage")
    with pytest.raises(InputError, match="p.bed"):
        ingest_genotypes(PlinkSource(tmp_path / "p"), tmp_path / "s.zarr", pheno=sim["pheno"], progress=False)
    with pytest.raises(InputError, match=r"nope.bed: no such file \(PLINK needs .bed, .bim and .fam\)"):
        PlinkSource(tmp_path / "nope")


def test_fold_assignment_reproducible_balanced_and_grouped():
    ids = [f"s{i}" for i in range(103)]
    a, b = assign_folds(ids, 5, seed=1), assign_folds(ids, 5, seed=1)
    assert a.tolist() == b.tolist() and a.tolist() != assign_folds(ids, 5, seed=2).tolist()
    assert sorted(np.bincount(a)[1:].tolist()) == [20, 20, 21, 21, 21]
    groups = [f"fam{i % 13}" for i in range(103)]
    g = assign_folds(ids, 5, seed=1, groups=groups)
    frame = pd.DataFrame({"group": groups, "fold": g})
    assert (frame.groupby("group")["fold"].nunique() == 1).all()
    assert set(g) == {1, 2, 3, 4, 5} and np.bincount(g)[1:].max() - np.bincount(g)[1:].min() <= 8
    with pytest.raises(InputError, match="groups cannot fill"):
        assign_folds(ids, 5, seed=1, groups=["a", "b"] * 51 + ["a"])


def test_cli_vcf_with_assigned_folds_and_filters(sim, tmp_path):
    p = pd.read_csv(sim["pheno"], sep="\t").drop(columns=["fold"])
    p.to_csv(tmp_path / "nofold.csv", index=False)  # comma-separated works too
    proc = run_cli("ingest", sim["vcf"], "--pheno", tmp_path / "nofold.csv", "-o", tmp_path / "s.zarr",
                   "--folds", 4, "--seed", 3, "--group-column", "family", "--min-maf", 0.2)
    assert "random, K=4, seed 3, whole family groups" in proc.stdout and "MAF below --min-maf" in proc.stdout
    s = open_store(tmp_path / "s.zarr")
    assert s.n_folds == 4 and s.attrs["fold_assignment"].startswith("random")
    assert s.attrs["filters"]["min_maf"] == 0.2 and s.n_variants < 60
    fam = p.set_index("sample").loc[list(s.sample_id), "family"]
    assert (pd.DataFrame({"f": fam.values, "k": s.fold}).groupby("f")["k"].nunique() == 1).all()
    none = run_cli("ingest", sim["vcf"], "--pheno", tmp_path / "nofold.csv", "-o", tmp_path / "x.zarr", check=False)
    assert none.returncode == 2 and "no folds: give --folds K" in none.stderr
    seeded = run_cli("ingest", sim["vcf"], "--pheno", sim["pheno"], "-o", tmp_path / "y.zarr", "--seed", 5)
    assert "warning: --seed ignored without --folds" in seeded.stderr  # the folds come from the 'fold' column


def test_missing_rate_filters_drop_and_record(tmp_path, caplog):
    # 4 samples; SNP 2 is 75 % missing; sample D misses 3 of 4 SNPs
    path = tmp_path / "m.vcf"
    path.write_text(VCF_HEAD.replace("\tA\tB\tC\n", "\tA\tB\tC\tD\n")
                    + "1\t10\t.\tA\tG\t.\t.\t.\tGT\t0/0\t0/1\t1/1\t./.\n"
                    + "1\t20\t.\tA\tG\t.\t.\t.\tGT\t0/1\t./.\t./.\t./.\n"
                    + "1\t30\t.\tA\tG\t.\t.\t.\tGT\t0/0\t0/1\t0/0\t./.\n"
                    + "1\t40\t.\tA\tG\t.\t.\t.\tGT\t1/1\t0/1\t0/0\t0/1\n")
    (tmp_path / "ph.tsv").write_text("id\ty\tfold\nA\t1\t1\nB\t2\t2\nC\t3\t3\nD\t4\t3\n")
    rep = ingest_genotypes(VcfSource(path), tmp_path / "s.zarr", pheno=tmp_path / "ph.tsv", progress=False,
                           max_missing=0.5, max_sample_missing=0.5)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    s = open_store(tmp_path / "s.zarr")
    assert list(s.variant_id) == ["1_10", "1_30", "1_40"]  # 1_20 dropped by --max-missing
    assert list(s.sample_id) == ["A", "B", "C"]  # D misses 2 of the 3 kept SNPs
    assert s.attrs["filtered_variants"] == {"missing rate above --max-missing": 1}
    assert s.attrs["dropped_samples"]["sample_missing"] == 1 and "dropped 1 sample" in warnings[0]
    assert rep.n_samples == 3
