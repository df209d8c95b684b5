"""reduce and query: merging the folds of a run, its tables and figures, the ensemble's
inputs, and the saliency of named SNPs."""

import shutil

import numpy as np
import pandas as pd
import pytest

from hpcsnp.errors import IncompleteRunError, InputError


def test_shard_average_equals_direct_mean_over_all_test_samples(run, sim_store):
    """SPEC 5: S_bar_i = (1/M) sum_j max_c |df/dx[i, c]| over every test sample of every fold,
    computed here one sample at a time, with no batching."""
    import keras
    import tensorflow as tf

    from hpcsnp.cnn.data import one_hot
    from hpcsnp.run.reduce import reduce_run
    from hpcsnp.store import open_store

    run_dir, _ = run
    out = reduce_run(run_dir, top=5, plot=False)
    store = open_store(sim_store[0])
    g = store.genotypes[:]
    total, m = np.zeros(store.n_variants), 0
    for i in (1, 2, 3):
        model = keras.models.load_model(run_dir / "sim" / f"fold_{i}" / "model.keras")
        for row in np.flatnonzero(store.fold == i):
            x = tf.constant(one_hot(g[row:row + 1]))
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = model(x, training=False)
            total += np.abs(tape.gradient(y, x).numpy()[0]).max(-1)
            m += 1
    assert m == store.n_samples
    got = out["saliency"].set_index("snp").loc[list(store.variant_id), "saliency"].to_numpy()
    np.testing.assert_allclose(got, total / m, rtol=1e-4, atol=1e-9)
    stored = pd.read_csv(run_dir / "avg_saliency.csv")
    np.testing.assert_allclose(stored["saliency"], got, rtol=1e-5)


def test_reduce_outputs_and_summary(run):
    from hpcsnp.run.reduce import reduce_run

    run_dir, results = run
    reduce_run(run_dir, top=7, plot=True)
    log = pd.read_csv(run_dir / "fold_pcc_log.csv")
    assert log["fold"].tolist() == [1, 2, 3]
    np.testing.assert_allclose(log["pcc"], [r.metrics["pcc"] for r in results], rtol=1e-5)
    summary = pd.read_csv(run_dir / "fold_pcc_summary.csv")
    assert list(summary.columns[:5]) == ["dataset", "model", "n_folds", "pcc_mean", "pcc_sd"]
    assert summary.loc[0, "pcc_mean"] == pytest.approx(np.mean([r.metrics["pcc"] for r in results]), rel=1e-5)
    assert summary.loc[0, "pcc_sd"] == pytest.approx(np.std([r.metrics["pcc"] for r in results], ddof=1), rel=1e-4)
    top = pd.read_csv(run_dir / "top_saliency_snps.csv")  # the default attributions: ranked by combined
    assert list(top.columns) == ["dataset", "rank", "snp", "chrom", "pos", "saliency", "marginal", "combined", "locus",
                                 "folds_in_top", "n_folds", "fold_score_sd"]
    assert top["locus"].notna().all() and top["folds_in_top"].between(0, 3).all()
    assert top["rank"].tolist() == list(range(1, 8)) and top["combined"].is_monotonic_decreasing
    np.testing.assert_allclose(top["combined"], np.sqrt(top["saliency"] * top["marginal"]), rtol=1e-4)
    scores = pd.read_csv(run_dir / "avg_saliency.csv")
    assert scores["combined"].max() == pytest.approx(top["combined"].iloc[0], rel=1e-5)
    assert (scores["marginal"] == scores["marginal_signed"].abs()).all()
    png = (run_dir / "avg_saliency_across_folds.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_reduce_refuses_missing_and_half_written_folds(run, tmp_path):
    from hpcsnp.run.reduce import reduce_run

    run_dir, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "sim" / "fold_2")
    (copy / "sim" / "fold_3").rename(copy / "sim" / "fold_3.partial")
    with pytest.raises(IncompleteRunError) as e:
        reduce_run(copy)
    msg = str(e.value)
    assert "sim fold 2 (missing)" in msg and "sim fold 3 (half-written: interrupted" in msg
    assert f"--fold 2 --run {copy}" in msg and "sbatch --array=2,3 slurm/cv_array.sh" in msg
    assert e.value.missing == [("sim", 2), ("sim", 3)]


def test_query(run):
    from hpcsnp.run.reduce import reduce_run
    from hpcsnp.run.report import query

    run_dir, _ = run
    out = reduce_run(run_dir, top=5, plot=False)
    best = out["saliency"].nsmallest(1, "rank").iloc[0]  # the top SNP by saliency (query reports saliency)
    q = query(run_dir, [best["snp"]])
    assert q.iloc[0]["rank"] == 1 and q.iloc[0]["saliency"] == pytest.approx(best["saliency"], rel=1e-5)  # CSVs keep 6 significant digits  # noqa: E501
    assert q.iloc[0]["of"] == 60
    with pytest.raises(InputError, match="did you mean"):
        query(run_dir, [best["snp"][:-1]])


def test_reduce_on_a_distributed_scheduler_gives_the_same_saliency(run):
    """`reduce --scheduler tcp://...`: the Dask graph runs on a distributed cluster."""
    distributed = pytest.importorskip("distributed")
    from hpcsnp.run.reduce import dask_context, reduce_run

    run_dir, _ = run
    local = reduce_run(run_dir, plot=False)["saliency"]["saliency"].to_numpy()
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        with dask_context(cluster.scheduler_address) as client:
            assert client is not None
            remote = reduce_run(run_dir, plot=False)["saliency"]["saliency"].to_numpy()
    np.testing.assert_array_equal(local, remote)


def test_two_data_sets_in_one_run(run, sim_store, tmp_path):
    """The typical run: imputed and QA stores of the same individuals, reduced together."""
    import shutil

    from PIL import Image

    from hpcsnp.cnn.train import train_fold
    from hpcsnp.run.reduce import reduce_run
    from hpcsnp.run.report import query

    run_dir, _ = run
    reduce_run(run_dir, top=4)  # the one-data-set plot, for comparison
    two = tmp_path / "two"
    shutil.copytree(run_dir, two)
    for i in (1, 2, 3):
        train_fold(sim_store[0], i, two, None, dataset="sim_qa")  # the run's settings
    out = reduce_run(two, top=4)
    assert out["summary"].query("model == 'cnn'")["dataset"].tolist() == ["sim", "sim_qa"]
    top = pd.read_csv(two / "top_saliency_snps.csv")
    assert top.groupby("dataset").size().to_dict() == {"sim": 4, "sim_qa": 4}
    q = query(two, [top["snp"].iloc[0]])
    assert q["dataset"].tolist() == ["sim", "sim_qa"]
    w, h = Image.open(two / "avg_saliency_across_folds.png").size
    one = Image.open(run_dir / "avg_saliency_across_folds.png").size
    assert w == one[0] and h > 1.8 * one[1]  # one panel per data set
    for figure, grows in (("fold_pcc.png", 0), ("observed_vs_predicted.png", 1)):  # by data set: wider, taller
        two_size, one_size = Image.open(two / figure).size, Image.open(run_dir / figure).size
        assert two_size[grows] > 1.5 * one_size[grows], (figure, two_size, one_size)


def test_within_group_pcc_is_reported_when_the_store_has_groups(tmp_path):
    """Groups given at ingest (a table keyed by sample id) are stored, copied into the run,
    and reduce reports every model's mean within-group PCC beside its PCC."""
    from helpers import FAST, run_cli

    from hpcsnp.cnn.train import train_fold
    from hpcsnp.io.simulate import simulate_formats
    from hpcsnp.linear.baseline import baseline_fold
    from hpcsnp.run.reduce import reduce_run, within_group_pcc
    from hpcsnp.store import open_store

    paths = simulate_formats(tmp_path / "d", samples=180, snps=40, folds=3, seed=5)
    run_cli("ingest", paths["tsv"], "-o", tmp_path / "s.zarr", "--groups", paths["pheno"], "--group-column", "family")
    store = open_store(tmp_path / "s.zarr")
    fam = pd.read_csv(paths["pheno"], sep="\t", dtype=str).set_index("sample")["family"]
    assert store.groups.tolist() == fam.loc[store.sample_id].tolist()
    for i in (1, 2, 3):
        train_fold(tmp_path / "s.zarr", i, tmp_path / "run", FAST)
        baseline_fold(tmp_path / "s.zarr", i, tmp_path / "run", encodings=("dosage",))
    out = reduce_run(tmp_path / "run", plot=False)
    log = out["log"]
    assert set(log["model"]) == {"cnn", "gblup_dosage", "ensemble"} and log["within_group_pcc"].notna().all()
    p = pd.read_csv(tmp_path / "run" / "s" / "baseline_dosage" / "fold_2" / "predictions.csv", dtype={"sample_id": str})
    direct = within_group_pcc(p["truth"], p["prediction"], fam.loc[p["sample_id"]])
    row = log[(log.model == "gblup_dosage") & (log.fold == 2)].iloc[0]
    assert row["within_group_pcc"] == pytest.approx(direct) and direct != pytest.approx(row["pcc"])
    summary = out["summary"].set_index("model")
    cnn = log[log.model == "cnn"]["within_group_pcc"]
    assert summary.loc["cnn", "within_group_pcc_mean"] == pytest.approx(cnn.mean())
    # a store without groups: no such column
    run_cli("ingest", paths["tsv"], "-o", tmp_path / "plain.zarr")
    assert open_store(tmp_path / "plain.zarr").groups is None


def test_reduce_query_info_and_gwas_run_without_tensorflow(run, sim_store, tmp_path):
    """The verbs that never touch a network must not load TensorFlow (0.7 GB, seconds of start-up):
    each runs in a fresh interpreter that fails if it was imported."""
    import subprocess
    import sys

    run_dir, _ = run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    snp = pd.read_csv(copy / "sim" / "variants.csv")["snp"].iloc[0]
    code = ("import sys; from hpcsnp.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n")
    for args in (["gwas", sim_store[0], "--run", copy], ["reduce", copy, "--top", "5"], ["query", copy, snp],
                 ["info", sim_store[0]]):
        proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
        assert proc.returncode == 0, (args, proc.stderr[-2000:])
