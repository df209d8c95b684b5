"""`hpcsnp predict`: new lines from every input format, aligned with the training store,
predicted by the fold CNNs and the refitted GBLUPs."""

import json

import numpy as np
import pandas as pd
import pytest
from helpers import FAST, run_cli

from hpcsnp.errors import InputError
from hpcsnp.io.simulate import simulate, simulate_formats, write_plink, write_vcf
from hpcsnp.run.predict import predict_run

PRED_COLUMNS = ["prediction", "cnn_mean", "cnn_sd", "gblup_dosage", "gblup_onehot", "rkhs", "rkhs_local",
                "observed_fraction"]


def _train_run(store, run, k):
    from hpcsnp.cnn.train import train_fold
    from hpcsnp.linear.baseline import baseline_fold

    for i in range(1, k + 1):
        train_fold(store, i, run, FAST)
        baseline_fold(store, i, run)


@pytest.fixture(scope="module")
def vcf_run(tmp_path_factory):
    """A run trained on a store ingested from VCF (so it knows REF/ALT), with its source data."""
    from hpcsnp.io.genotype_files import ingest_genotypes
    from hpcsnp.io.vcf import VcfSource

    d = tmp_path_factory.mktemp("predict")
    paths = simulate_formats(d / "data", samples=240, snps=60, folds=3, missing=0.05, seed=3)
    ingest_genotypes(VcfSource(paths["vcf"]), d / "train.zarr", pheno=paths["pheno"], progress=False,
                     chunk_rows=64)
    _train_run(d / "train.zarr", d / "run", 3)
    table = pd.read_csv(paths["tsv"], sep="\t")
    return d, table


def test_a_folds_own_test_lines_reproduce_its_predictions(vcf_run, monkeypatch):
    """The fold model alone on its test lines gives predictions.csv; the marker-effect GBLUP
    (REML's float32 tridiagonalisation in two stages, as the fold's, and a Cholesky solve) and
    the RKHS fit on a fold's fitting rows (with the variance ratio the fold recorded) give that
    fold's baseline predictions; where only the one-stage reduction is there, the GBLUP's to
    float32 rounding of the kernel's eigenvalues (its REML delta moves by ~1e-5 of itself)."""
    from hpcsnp.folds import fold_split
    from hpcsnp.linear import tridiagonal
    from hpcsnp.linear.baseline import cached_gram
    from hpcsnp.linear.refit import kernel_fit, marker_effects
    from hpcsnp.rundir import RunDir
    from hpcsnp.store import open_store

    d, _ = vcf_run
    store = open_store(d / "train.zarr")
    for fold in (1, 3):
        r = predict_run(d / "run", d / "train.zarr", out=d / f"fold{fold}.csv", fold=fold)
        got = r.table.set_index("sample_id")
        want = pd.read_csv(d / "run" / "train" / f"fold_{fold}" / "predictions.csv",
                           dtype={"sample_id": str}).set_index("sample_id")
        np.testing.assert_allclose(got.loc[want.index, "cnn_mean"], want["prediction"], rtol=1e-5)
        assert got["cnn_sd"].isna().all() and got["gblup_dosage"].isna().all()  # one model, no baseline
        split = fold_split(store.fold, store.n_folds, fold)
        fit = np.sort(np.concatenate([split.train, split.val]))
        for enc, one_stage in (("dosage", False), ("onehot", False), ("dosage", True)):
            with monkeypatch.context() as m:
                if one_stage:
                    m.setattr(tridiagonal, "two_stage", lambda dtype: None)
                G, width, _ = cached_gram(store, enc, RunDir(d / "run").baseline_cache("train", enc))
                effects = marker_effects(store, enc, G, width, fit)
            base = pd.read_csv(d / "run" / "train" / f"baseline_{enc}" / f"fold_{fold}" / "predictions.csv")
            np.testing.assert_allclose(effects.predict(store.genotypes[:][split.test]), base["prediction"],
                                       rtol=1e-5 if one_stage else 1e-8)
        for kind in ("rkhs", "rkhs_local"):
            rk = d / "run" / "train" / f"baseline_{kind}" / f"fold_{fold}"
            chosen = json.loads((rk / "metrics.json").read_text())
            dist = chosen["distance"]
            G, _, _ = cached_gram(store, dist, RunDir(d / "run").baseline_cache("train", dist))
            fit_k = kernel_fit(store, G, fit, chosen["theta"], dist, delta=chosen["delta"])
            np.testing.assert_allclose(fit_k.predict(store.genotypes[:][split.test]),
                                       pd.read_csv(rk / "predictions.csv")["prediction"], rtol=1e-7)


def _new_lines(table, n=40):
    lines = table.sample(n, random_state=1).reset_index(drop=True)
    lines["sample"] = [f"NEW{i:03d}" for i in range(n)]
    return lines


def test_every_format_shuffled_swapped_partial_gives_the_aligned_predictions(vcf_run):
    """TSV with shuffled columns, VCF and PLINK with swapped alleles, each with SNPs absent and
    extra ones, predict exactly what the perfectly aligned store does with the absent SNPs
    missing."""
    from hpcsnp.io.text import ingest_tsv

    d, table = vcf_run
    rng = np.random.default_rng(0)
    lines = _new_lines(table)
    snps = list(table.columns[3:])
    absent = set(rng.choice(snps, 4, replace=False))
    present = [s for s in snps if s not in absent]
    swapped = set(rng.choice(present, 10, replace=False))
    g = lines[snps].to_numpy(np.int8)
    # the reference: every training SNP in training order, the absent ones missing
    ref = lines[["sample"]].assign(fold=np.arange(len(lines)) % 3 + 1, phenotype=0.0)
    ref_g = g.copy()
    ref_g[:, [snps.index(s) for s in absent]] = -1
    ref = pd.concat([ref, pd.DataFrame(ref_g, columns=snps)], axis=1)
    ref.to_csv(d / "ref.tsv", sep="\t", index=False)
    ingest_tsv(d / "ref.tsv", d / "ref.zarr", progress=False)
    want = predict_run(d / "run", d / "ref.zarr", out=d / "ref.csv").table

    extra = {f"Chr09_{1000 + i}": rng.integers(0, 3, len(lines)) for i in range(3)}
    # text: an ignored phenotype column, SNP columns shuffled, extra columns
    cols = list(rng.permutation(present + list(extra)))
    tsv = pd.concat([lines[["sample"]].assign(phenotype=1.0), lines[present], pd.DataFrame(extra)], axis=1)[
        ["sample", "phenotype", *cols]]
    tsv.to_csv(d / "new.tsv", sep="\t", index=False)
    # VCF and PLINK: swapped REF/ALT with the dosage counted the other way
    names = present + list(extra)
    gv = np.column_stack([lines[present].to_numpy(np.int8), np.column_stack(list(extra.values()))]).astype(np.int8)
    alleles = []
    for j, s in enumerate(names):
        if s in swapped:
            gv[:, j] = np.where(gv[:, j] >= 0, 2 - gv[:, j], -1)
            alleles.append(("G", "A"))
        else:
            alleles.append(("A", "G"))
    write_vcf(d / "new.vcf.gz", list(lines["sample"]), names, gv, alleles)
    write_plink(d / "new", list(lines["sample"]), names, gv, alleles)

    results = {"tsv": predict_run(d / "run", d / "new.tsv", out=d / "t.csv"),
               "vcf": predict_run(d / "run", d / "new.vcf.gz", out=d / "v.csv"),
               "plink": predict_run(d / "run", bfile=d / "new", out=d / "p.csv")}
    for fmt, r in results.items():
        got = r.table.set_index("sample_id").loc[want["sample_id"]]
        for c in PRED_COLUMNS:
            np.testing.assert_allclose(got[c], want[c].to_numpy(), rtol=1e-5, err_msg=f"{fmt} {c}")
        a = r.alignment
        assert (a["matched"], a["absent"], a["extra"]) == (56, 4, 3), (fmt, a)
        assert a["flipped"] == (0 if fmt == "tsv" else 10), (fmt, a)
        report = json.loads(r.report_path.read_text())
        assert report["alignment"]["matched"] == 56 and report["lines"] == len(lines)
    np.testing.assert_allclose(want["observed_fraction"], 1 - 4 / 60 - (g[:, [snps.index(s) for s in present]] < 0)
                               .sum(1) / 60)


def test_a_new_population_is_predicted_as_well_as_the_cv_says(tmp_path):
    """Same planted effects, lines never seen in training: PCC close to the CV's."""
    from hpcsnp.io.text import ingest_tsv
    from hpcsnp.run.ensemble import ensemble_folds
    from hpcsnp.rundir import RunDir

    simulate(tmp_path / "all.tsv", samples=900, snps=200, causal=4, folds=3, seed=7)
    table = pd.read_csv(tmp_path / "all.tsv", sep="\t")
    table = pd.concat([pd.DataFrame({"line": [f"L{i}" for i in range(len(table))]}), table], axis=1)
    table.iloc[:600].to_csv(tmp_path / "train.tsv", sep="\t", index=False)
    table.iloc[600:].drop(columns=["fold", "phenotype"]).to_csv(tmp_path / "new.tsv", sep="\t", index=False)
    ingest_tsv(tmp_path / "train.tsv", tmp_path / "train.zarr", progress=False)
    _train_run(tmp_path / "train.zarr", tmp_path / "run", 3)
    ds = RunDir(tmp_path / "run").datasets()[0]
    cv_pcc = np.mean([row["pcc"] for row, _, _ in ensemble_folds(tmp_path / "run", ds, ["gblup_dosage",
                                                                                          "gblup_onehot"])])
    r = predict_run(tmp_path / "run", tmp_path / "new.tsv", out=tmp_path / "pred.csv")
    truth = table.iloc[600:].set_index("line").loc[r.table["sample_id"], "phenotype"]
    pcc = np.corrcoef(truth, r.table["prediction"])[0, 1]
    assert pcc > 0.5 and abs(pcc - cv_pcc) < 0.1, (pcc, cv_pcc)
    assert r.table["rank"].tolist() == r.table["prediction"].rank(ascending=False).astype(int).tolist()
    assert list(pd.read_csv(tmp_path / "pred.csv").columns) == ["sample_id", "prediction", "lower", "upper", "rank",
                                                              "cnn_mean", "cnn_sd", "gblup_dosage", "gblup_onehot",
                                                              "rkhs", "rkhs_local", "observed_fraction"]
    # the 90 % interval: the headline +- the conformal quantile of its out-of-fold residuals,
    # covering about 90 % of the 300 new lines' phenotypes
    rows = ensemble_folds(tmp_path / "run", ds, ["gblup_dosage", "gblup_onehot", "rkhs", "rkhs_local"])
    res = np.sort(np.abs(np.concatenate([(p["truth"] - p["prediction"]).to_numpy() for _, _, p in rows])))
    assert len(res) == 600 and r.interval["half_width"] == pytest.approx(res[int(np.ceil(601 * 0.9)) - 1])
    np.testing.assert_allclose(r.table["upper"] - r.table["prediction"], r.interval["half_width"], rtol=1e-9)
    np.testing.assert_allclose(r.table["prediction"] - r.table["lower"], r.interval["half_width"], rtol=1e-9)
    inside = ((truth.to_numpy() >= r.table["lower"]) & (truth.to_numpy() <= r.table["upper"])).mean()
    assert 0.84 <= inside <= 0.96, inside
    low = predict_run(tmp_path / "run", tmp_path / "new.tsv", out=tmp_path / "low.csv", rank_by="low", level=0.5)
    assert low.table["rank"].tolist() == low.table["prediction"].rank(ascending=True).astype(int).tolist()
    assert low.interval["half_width"] < r.interval["half_width"]
    report = json.loads((tmp_path / "low.alignment.json").read_text())
    assert report["rank_by"] == "low" and report["interval"]["level"] == 0.5


def test_too_few_training_snps_is_refused_and_writes_nothing(vcf_run):
    d, table = vcf_run
    lines = _new_lines(table)
    snps = list(table.columns[3:])
    lines[["sample", *snps[:50]]].to_csv(d / "few.tsv", sep="\t", index=False)  # 50 of 60 = 0.83
    proc = run_cli("predict", "--run", d / "run", d / "few.tsv", "-o", d / "few.csv", check=False)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("hpcsnp: error")]
    assert len(errors) == 1 and "below --min-overlap 0.9" in errors[0] and "50 of the 60" in errors[0]
    assert not list(d.glob("few.*csv*")) and not (d / "few.alignment.json").exists()
    r = predict_run(d / "run", d / "few.tsv", out=d / "few.csv", min_overlap=0.8)  # allowed when lowered
    assert r.alignment["absent"] == 10 and (r.table["observed_fraction"] <= 50 / 60).all()


@pytest.mark.parametrize("body, message", [
    ("sample\tChr01_1\nA\t0\nA\t1\n", "sample id 'A' occurs more than once"),
    ("sample\tChr01_1\tChr01_2\nA\t0\n", "row has 2 columns, header has 3"),
    ("sample\tChr01_1\nA\t7\n", "genotype '7' is not one of -1, 0, 1, 2"),
])
def test_bad_text_rows_are_the_errors_ingest_gives(vcf_run, body, message):
    from hpcsnp.io.newlines import TextLines

    d, _ = vcf_run
    (d / "bad.tsv").write_text(body)
    source = TextLines(d / "bad.tsv")
    with pytest.raises(InputError, match=message):
        list(source.blocks())
    source.close()


def test_unknown_dataset_unfinished_run_and_other_store_versions_are_clear_errors(vcf_run, tmp_path):
    import shutil

    from hpcsnp.store import FORMAT_KEY, open_store

    d, _ = vcf_run
    with pytest.raises(InputError, match=r"no data set 'nope' \(it holds train\)"):
        predict_run(d / "run", d / "ref.tsv", out=tmp_path / "x.csv", dataset="nope")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    shutil.copy(d / "run" / "train" / "dataset.json", tmp_path / "empty" / "train")
    proc = run_cli("predict", "--run", tmp_path / "empty", d / "train.zarr", "-o", tmp_path / "x.csv", check=False)
    assert proc.returncode == 1 and "3 fold(s) not finished" in proc.stderr and "hpcsnp train" in proc.stderr
    assert not (tmp_path / "x.csv").exists()
    # another format version, and a version-1 store (no alleles) that still opens
    for version in (99, 1):
        s = tmp_path / f"v{version}.zarr"
        shutil.copytree(d / "train.zarr", s)
        meta = json.loads((s / "zarr.json").read_text())
        meta["attributes"][FORMAT_KEY] = version
        meta.pop("consolidated_metadata", None)
        (s / "zarr.json").write_text(json.dumps(meta))
        if version == 1:
            shutil.rmtree(s / "variant_allele")
    with pytest.raises(InputError, match="store format version 99, this hpcsnp reads version 1 and 2"):
        predict_run(d / "run", tmp_path / "v99.zarr", out=tmp_path / "x.csv")
    old = open_store(tmp_path / "v1.zarr")
    assert old.alleles is None and old.n_variants == 60
    r = predict_run(d / "run", tmp_path / "v1.zarr", out=tmp_path / "v1.csv")  # no alleles: none flipped
    assert r.alignment["flipped"] == 0 and r.n_lines == 240


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_predict_writes_only_its_own_files_and_checks_them_before_the_work(vcf_run, tmp_path):
    """No output may be an input, lie in the run's data sets, replace a file without --force
    or sit where it cannot be written; each is refused up front (exit 2), nothing touched."""
    import shutil

    d, _ = vcf_run
    genotypes = d / "data" / "sim.tsv"
    mine = genotypes.read_bytes()
    shutil.copy(genotypes, tmp_path / "X.alignment.json")
    shutil.copy(genotypes, tmp_path / "Y.explain.csv")
    (tmp_path / "Z.alignment.json").write_text("mine\n")
    (tmp_path / "afile").write_text("mine\n")
    cases = [(tmp_path / "X.alignment.json", ["-o", tmp_path / "X.csv"], "is an input"),
             (tmp_path / "Y.explain.csv", ["-o", tmp_path / "Y.csv", "--explain"], "is an input"),
             (genotypes, ["-o", tmp_path / "Z.csv"], "Z.alignment.json already exists; use --force"),
             (genotypes, ["-o", tmp_path / "nodir" / "p.csv"], "the directory " + str(tmp_path / "nodir")
              + " does not exist"),
             (genotypes, ["-o", tmp_path / "afile" / "p.csv"], "afile is a file, not a directory"),
             (genotypes, ["-o", d / "run" / "train" / "p.csv", "--force"], "is a file of the run"),
             (d / "train.zarr", ["-o", d / "train.zarr" / "p.csv"], "inside the input")]
    for source, args, message in cases:
        proc = run_cli("predict", "--run", d / "run", source, *args, check=False)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
        assert "internal error" not in proc.stderr and "predicted" not in proc.stdout
    assert (tmp_path / "X.alignment.json").read_bytes() == mine == (tmp_path / "Y.explain.csv").read_bytes()
    assert (tmp_path / "Z.alignment.json").read_text() == "mine\n" and (tmp_path / "afile").read_text() == "mine\n"
    assert not list(tmp_path.glob("[XYZ].csv*")) and not (d / "run" / "train" / "p.csv").exists()
    r = predict_run(d / "run", genotypes, out=tmp_path / "Z.csv", force=True)  # --force replaces predict's own
    assert json.loads(r.report_path.read_text())["lines"] == 240


def test_a_rerun_removes_what_a_killed_predict_left(vcf_run, tmp_path):
    import subprocess

    d, _ = vcf_run
    writer = subprocess.Popen(["sleep", "300"])  # another process, alive: its temporary file stays
    dead, alive = _dead_pid(), writer.pid
    stale = [tmp_path / f"W.explain.csv.tmp-{dead}", tmp_path / f"W.csv.tmp-{dead}",
             tmp_path / f"W.alignment.json.tmp-{dead}"]
    for p in stale:
        p.write_text("partial\n")
    (tmp_path / f"W.csv.tmp-{alive}").write_text("a live writer's\n")
    try:
        r = predict_run(d / "run", d / "data" / "sim.tsv", out=tmp_path / "W.csv", explain=True)
    finally:
        writer.kill()
        writer.wait()
    assert not any(p.exists() for p in stale) and (tmp_path / f"W.csv.tmp-{alive}").exists()
    assert r.explain_path.exists() and r.out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["W.csv", "W.explain.csv", "W.alignment.json", f"W.csv.tmp-{alive}"])


def _vcf_records(d):
    import gzip

    lines = gzip.decompress((d / "data" / "sim.vcf.gz").read_bytes()).decode().splitlines(keepends=True)
    return [x for x in lines if x.startswith("#")], [x for x in lines if not x.startswith("#")]


def test_a_snp_given_twice_in_a_vcf_is_an_error_naming_both_lines(vcf_run, tmp_path):
    from hpcsnp.io.genotype_files import ingest_genotypes
    from hpcsnp.io.vcf import VcfSource

    d, _ = vcf_run
    head, body = _vcf_records(d)
    renamed = body[3].split("\t")
    renamed[2] = "another_id"  # the same site and alleles under another ID
    for name, repeat in (("dup", body[3]), ("renamed", "\t".join(renamed))):
        (tmp_path / f"{name}.vcf").write_text("".join(head + body[:5] + [repeat] + body[5:]))
        where = f"line {len(head) + 6}: variant "
        first = f"is already given at line {len(head) + 4}"
        proc = run_cli("predict", "--run", d / "run", tmp_path / f"{name}.vcf", "-o", tmp_path / f"{name}.csv",
                       check=False)
        assert proc.returncode == 2 and where in proc.stderr and first in proc.stderr, proc.stderr
        with pytest.raises(InputError, match=f"{where}.*{first}"):
            ingest_genotypes(VcfSource(tmp_path / f"{name}.vcf"), tmp_path / f"{name}.zarr",
                             pheno=d / "data" / "pheno.tsv", progress=False)


def test_a_call_beyond_the_records_alleles_is_read_as_missing_and_counted(vcf_run, tmp_path):
    """2/2 at a biallelic site is not homozygous ALT: it predicts as a missing call, and the
    alignment report and the ingest report count it; --strict makes it an error."""
    from hpcsnp.io.genotype_files import ingest_genotypes
    from hpcsnp.io.vcf import VcfSource
    from hpcsnp.store import open_store

    d, _ = vcf_run
    head, body = _vcf_records(d)

    def with_call(call):
        rec = body[7].rstrip("\n").split("\t")
        rec[9] = call  # the first sample
        return "".join(head + body[:7] + ["\t".join(rec) + "\n"] + body[8:])

    (tmp_path / "bad.vcf").write_text(with_call("2/2"))
    (tmp_path / "missing.vcf").write_text(with_call("./."))
    bad = predict_run(d / "run", tmp_path / "bad.vcf", out=tmp_path / "bad.csv", baseline=False)
    want = predict_run(d / "run", tmp_path / "missing.vcf", out=tmp_path / "missing.csv", baseline=False)
    pd.testing.assert_frame_equal(bad.table, want.table)
    report = json.loads(bad.report_path.read_text())
    assert report["invalid_calls_read_as_missing"] == {"allele index beyond ALT": 1}
    rep = ingest_genotypes(VcfSource(tmp_path / "bad.vcf"), tmp_path / "bad.zarr", pheno=d / "data" / "pheno.tsv",
                           progress=False)
    assert open_store(tmp_path / "bad.zarr").genotypes[0, 7] == -1
    assert any("1 allele index beyond ALT" in line for line in rep.extra)
    with pytest.raises(InputError, match=rf"line {len(head) + 8}: .*allele index beyond ALT"):
        ingest_genotypes(VcfSource(tmp_path / "bad.vcf", strict=True), tmp_path / "strict.zarr",
                         pheno=d / "data" / "pheno.tsv", progress=False)


def test_a_damaged_cache_is_rebuilt_and_a_damaged_model_is_named(vcf_run, tmp_path):
    import shutil

    d, _ = vcf_run
    run = tmp_path / "run"
    shutil.copytree(d / "run", run)
    want = predict_run(run, d / "data" / "sim.tsv", out=tmp_path / "a.csv").table
    cache = run / "train" / "baseline_dosage"
    for f in ("refit_all.npz", "gram.npy"):
        with open(cache / f, "r+b") as fh:
            fh.truncate(100)
    (cache / "refit_all.json").unlink()  # the Gram matrix is read again only for a refit
    got = predict_run(run, d / "data" / "sim.tsv", out=tmp_path / "b.csv").table
    pd.testing.assert_frame_equal(got, want)
    with open(run / "train" / "fold_2" / "model.keras", "r+b") as fh:
        fh.truncate(1000)
    proc = run_cli("predict", "--run", run, d / "data" / "sim.tsv", "-o", tmp_path / "c.csv", check=False)
    assert proc.returncode == 2 and "fold_2/model.keras cannot be loaded" in proc.stderr, proc.stderr
    assert f"hpcsnp train {d / 'train.zarr'} --fold 2 --run {run}" in proc.stderr and "--force" in proc.stderr
    assert not (tmp_path / "c.csv").exists()


def test_the_run_is_given_the_same_way_to_every_verb(vcf_run, tmp_path):
    """--run RUN works for predict, reduce and query as for train, cv, baseline and gwas (the
    first-argument form still works, with a warning that it will go); --dataset and --name
    are one option."""
    import shutil

    d, table = vcf_run
    run = tmp_path / "run"
    shutil.copytree(d / "run", run)
    _new_lines(table, 10).drop(columns=["fold", "phenotype"]).to_csv(tmp_path / "new.tsv", sep="\t", index=False)
    proc = run_cli("predict", "--run", run, tmp_path / "new.tsv", "-o", tmp_path / "a.csv", "--dataset", "train")
    assert "oneDNN" not in proc.stderr and "absl" not in proc.stderr  # TensorFlow's start-up lines kept off
    older = run_cli("predict", run, tmp_path / "new.tsv", "-o", tmp_path / "b.csv", "--name", "train")
    assert f"older form and will go: give it as --run {run}" in older.stderr and "older form" not in proc.stderr
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv"))
    run_cli("reduce", "--run", run, "--no-plot")
    snp = table.columns[3]
    old_query = run_cli("query", run, snp)
    assert run_cli("query", "--run", run, snp).stdout == old_query.stdout and "older form" in old_query.stderr
    assert f"train\t{snp}\t" in run_cli("query", "--run", run, snp).stdout
    proc = run_cli("reduce", check=False)
    assert proc.returncode == 2 and "--run RUN" in proc.stderr


def test_pev_and_reliability_are_rrblups_and_higher_for_the_fitted_lines(vcf_run):
    """--pev: each GBLUP column's PEV equals se2 z' (Z'Z + w delta I)^-1 z (the marker-side form
    of rrBLUP's, solved directly here), its reliability 1 - PEV / (sg2 z'z / w); the lines the
    refit was fitted on are predicted more reliably than lines drawn at random."""
    from hpcsnp.linear.baseline import cached_gram, uncentred
    from hpcsnp.linear.refit import PredictionErrorVariance, refitted
    from hpcsnp.rundir import RunDir
    from hpcsnp.store import open_store

    d, _ = vcf_run
    r = predict_run(d / "run", d / "train.zarr", out=d / "pev.csv", pev=True)
    store = open_store(d / "train.zarr")
    run = RunDir(d / "run")
    ds = next(x for x in run.datasets() if x.dataset == "train")
    codes, y = store.genotypes[:], store.phenotype.astype(np.float64)
    got = r.table.set_index("sample_id").loc[list(store.sample_id)]
    report = json.loads((d / "pev.alignment.json").read_text())
    for enc in ("dosage", "onehot"):
        fit = refitted(run, ds, store, enc)
        Z = uncentred(codes, enc, fit.fill) - fit.means
        n, w = Z.shape
        K = Z @ Z.T / w
        sg2 = (y - y.mean()) @ np.linalg.solve(K + fit.delta * np.eye(n), y - y.mean()) / (n - 1)
        pev = fit.delta * sg2 * np.einsum("ij,ji->i", Z, np.linalg.solve(Z.T @ Z + w * fit.delta * np.eye(w), Z.T))
        rel = 1 - pev / (sg2 * np.einsum("ij,ij->i", Z, Z) / w)
        np.testing.assert_allclose(got[f"gblup_{enc}_pev"], pev, rtol=1e-6)
        np.testing.assert_allclose(got[f"gblup_{enc}_reliability"], rel, rtol=1e-6, atol=1e-9)
        assert 0 < rel.min() and rel.max() < 1
        assert report["pev"][f"gblup_{enc}"]["sg2"] == pytest.approx(sg2, rel=1e-6)
        strangers = np.random.default_rng(0).integers(0, 3, (50, store.n_variants)).astype(np.int8)
        G, width, _ = cached_gram(store, enc, run.baseline_cache("train", enc))
        _, rel_strangers = PredictionErrorVariance(store, fit, G, width)(strangers)
        assert rel_strangers.mean() < rel.mean(), (rel_strangers.mean(), rel.mean())
    assert list(r.table.columns[:4]) == ["sample_id", "prediction", "lower", "upper"]
    assert "gblup_dosage_pev" not in predict_run(d / "run", d / "train.zarr", out=d / "nopev.csv").table


def test_loci_and_stability_tables_carry_the_stores_alleles_in_plink2s_columns(vcf_run, tmp_path):
    """A store ingested from VCF knows REF/ALT: top_loci.tsv and attribution_stability.tsv give
    each (lead) SNP's chromosome, position and alleles as the store has them, under PLINK 2's
    names, tab-separated; a reduce over a run an older version reduced removes its .csv tables."""
    import shutil

    from hpcsnp.run.reduce import read_plink_style, reduce_run
    from hpcsnp.store import open_store

    d, _ = vcf_run
    run = tmp_path / "run"
    shutil.copytree(d / "run", run)
    (run / "top_loci.csv").write_text("dataset,method\n")  # as an older reduce left it
    reduce_run(run, top=10)
    store = open_store(d / "train.zarr")
    truth = pd.DataFrame({"#CHROM": store.contig.astype(str), "POS": store.position, "REF": store.alleles[:, 0],
                          "ALT": store.alleles[:, 1]}, index=store.variant_id)
    for name in ("top_loci.tsv", "attribution_stability.tsv"):
        table = read_plink_style(run / name)
        assert list(table.columns[:5]) == ["#CHROM", "POS", "ID", "REF", "ALT"] and len(table)
        want = truth.loc[table["ID"]]
        for c in ("#CHROM", "POS", "REF", "ALT"):
            assert table[c].tolist() == want[c].tolist(), (name, c)
        assert "\t" in (run / name).read_text().splitlines()[0]
    assert not (run / "top_loci.csv").exists()
