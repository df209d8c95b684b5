"""Attribution methods: SmoothGrad without noise is the saliency; integrated gradients are complete."""

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from hpcsnp.cnn.attribution import is_gradient, make_attribution
from hpcsnp.cnn.attribution.ig import integrated_gradients, missing_baseline
from hpcsnp.cnn.attribution.smoothgrad import per_snp as smoothgrad
from hpcsnp.cnn.model import build_model
from hpcsnp.config import Config


@pytest.fixture(scope="module")
def model_and_input():
    import keras

    keras.utils.set_random_seed(2)
    model = build_model(50, Config(alpha=0.5))  # a strong ISRU curvature: the model is not linear
    for v in model.trainable_variables:  # weights large enough to use the non-linearity
        v.assign(v * 3.0)
    g = np.random.default_rng(0).integers(-1, 3, (6, 50))
    x = tf.one_hot(g + 1, 4)  # channel order does not matter for these identities
    return model, x


def test_every_registered_attribution_is_one_module_of_the_attribution_package():
    """config.ATTRIBUTION_METHODS and the modules of hpcsnp/cnn/attribution name the same methods."""
    import pkgutil

    import hpcsnp.cnn.attribution as package
    from hpcsnp.config import ATTRIBUTION_METHODS

    modules = {m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_")}
    assert modules == set(ATTRIBUTION_METHODS)
    assert [m for m in ATTRIBUTION_METHODS if not is_gradient(m)] == ["marginal"]
    with pytest.raises(ValueError, match="unknown attribution 'shap'"):
        make_attribution(None, "shap")
    with pytest.raises(ValueError, match="not a gradient"):
        make_attribution(None, "marginal")


def test_smoothgrad_without_noise_is_the_saliency(model_and_input):
    model, x = model_and_input
    sal = make_attribution(model, "saliency")(x).numpy()
    np.testing.assert_allclose(tf.reduce_sum(smoothgrad(model, x, samples=3, noise=0.0), 0).numpy(), sal, rtol=1e-6)
    noisy = tf.reduce_sum(smoothgrad(model, x, samples=3, noise=0.5), 0).numpy()
    assert not np.allclose(noisy, sal)  # the noise does something


def test_integrated_gradients_sum_to_the_change_of_the_output(model_and_input):
    model, x = model_and_input
    attr = integrated_gradients(model, x, steps=64).numpy()
    change = (model(x)[:, 0] - model(missing_baseline(x))[:, 0]).numpy()
    assert np.abs(change).min() > 1e-2
    np.testing.assert_allclose(attr.sum(axis=1), change, rtol=1e-3, atol=1e-4)
    shard = make_attribution(model, "ig")(x).numpy()  # the shard holds sums of |A_i|
    np.testing.assert_allclose(shard, np.abs(integrated_gradients(model, x)).sum(0), rtol=1e-5)


def test_a_fold_writes_a_shard_per_attribution(sim_store, tmp_path):
    import zarr
    from helpers import FAST

    from hpcsnp.cnn.train import train_fold

    store, _ = sim_store
    r = train_fold(store, 1, tmp_path, FAST.replace(attribution="smoothgrad,ig,marginal"))
    for method in ("saliency", "smoothgrad", "ig"):
        shard = zarr.open_array(str(r.path / f"{method}.zarr"))
        assert shard.attrs["n_samples"] == r.metrics["n_test"] and (shard[:] >= 0).all() and shard[:].sum() > 0
    assert set(r.metrics["attribution_seconds"]) == {"saliency", "smoothgrad", "ig", "marginal"}
    # marginal: the fold's predictions of every line against each SNP's called dosage, cov / sd
    import keras

    from hpcsnp.store import open_store

    s = open_store(store)
    g = s.genotypes[:]
    model = keras.models.load_model(r.path / "model.keras", compile=False)
    # a direct call: Keras' predict() would trace another function, and TensorFlow warns about
    # retracing process-wide, which a later test that asserts no warnings would see
    pred = model(np.eye(4, dtype=np.float32)[[0, 2, 1, 3]][g + 1], training=False).numpy()[:, 0]
    pred = pred * r.metrics["target_sd"] + r.metrics["target_mean"]
    want = []
    for j in range(g.shape[1]):
        ok = g[:, j] >= 0
        d = g[ok, j].astype(float)
        want.append(np.cov(pred[ok], d, bias=True)[0, 1] / d.std() if d.std() > 0 else 0.0)
    shard = zarr.open_array(str(r.path / "marginal.zarr"))
    got = shard[:] / shard.attrs["n_samples"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
    assert shard.attrs["scale"] == "phenotype" and (got < 0).any() and (got > 0).any()


def test_clumping_merges_a_block_in_perfect_ld_and_keeps_independent_snps_apart():
    import pandas as pd

    from hpcsnp.run.loci import clump, loci_table, r2_matrix

    rng = np.random.default_rng(0)
    block = rng.integers(0, 3, 200).astype(float)
    X = np.column_stack([block, rng.integers(0, 3, 200), block, 2 - block, rng.integers(0, 3, 200)])
    top = pd.DataFrame({"snp": list("abcde"), "chrom": ["1"] * 5, "pos": [100, 200, 300, 400, 500],
                        "score": [5, 4, 3, 2, 1], "rank": [1, 2, 3, 4, 5]})
    loci = clump(top, r2_matrix(X))
    table = loci_table(top, loci, "score")
    assert table["snps"].tolist() == ["a;c;d", "b", "e"] and table["n_snps"].tolist() == [3, 1, 1]
    assert table.loc[0, "start"] == 100 and table.loc[0, "end"] == 400 and table.loc[0, "lead_snp"] == "a"
    far = top.assign(pos=[100, 200, 300, 90_000_000, 500])  # the same genotypes beyond the window
    assert [lo.members for lo in clump(far, r2_matrix(X))] == [[0, 2], [1], [3], [4]]
    other = top.assign(chrom=["1", "1", "2", "1", "1"])  # another chromosome never joins
    assert [lo.members for lo in clump(other, r2_matrix(X))] == [[0, 3], [1], [2], [4]]


@pytest.fixture(scope="module")
def ig_run(tmp_path_factory):
    """Three folds of a simulated store trained with integrated gradients and the marginal attribution as well."""
    from helpers import FAST, run_cli

    from hpcsnp.cnn.train import train_fold
    from hpcsnp.io.simulate import simulate

    tmp_path = tmp_path_factory.mktemp("ig")
    simulate(tmp_path / "s.tsv", samples=300, snps=80, causal=3, folds=3, seed=2)
    run_cli("ingest", tmp_path / "s.tsv", "-o", tmp_path / "s.zarr")
    for i in (1, 2, 3):
        train_fold(tmp_path / "s.zarr", i, tmp_path / "run", FAST.replace(attribution="ig,marginal"))
    return tmp_path


def test_reduce_groups_top_snps_into_loci_and_compares_with_the_gwas(ig_run):
    from helpers import run_cli

    from hpcsnp.run.reduce import read_plink_style, reduce_run

    tmp_path = ig_run
    run_cli("gwas", tmp_path / "s.zarr", "--run", tmp_path / "run")
    out = reduce_run(tmp_path / "run", top=10)
    loci = read_plink_style(tmp_path / "run" / "top_loci.tsv")
    assert list(loci.columns[:5]) == ["#CHROM", "POS", "ID", "REF", "ALT"]
    assert set(loci["METHOD"]) == {"saliency", "ig", "marginal", "combined", "gwas"}
    assert (loci.groupby("METHOD")["N_SNPS"].sum().drop("gwas") == 10).all()  # every top SNP in one locus
    assert loci["REF"].isna().all()  # a text store knows no alleles: "."
    summary = read_plink_style(tmp_path / "run" / "attribution_summary.tsv").set_index("METHOD")
    assert set(summary.index) == {"saliency", "ig", "marginal", "combined"}
    assert summary["SPEARMAN_VS_GWAS"].notna().all()
    vs = read_plink_style(tmp_path / "run" / "attribution_vs_gwas.tsv")
    assert (vs["GWAS_LOCI_FOUND"] <= vs["GWAS_LOCI"]).all()
    stab = read_plink_style(tmp_path / "run" / "attribution_stability.tsv")
    assert stab["FOLDS_IN_TOP"].between(0, 3).all() and len(stab) == 40  # top 10 of four methods
    assert not (tmp_path / "run" / "top_loci.csv").exists()
    assert {"ig", "ig_rank", "gwas_p", "marginal", "marginal_signed", "marginal_rank"} <= set(out["saliency"].columns)
    scores = out["saliency"]
    np.testing.assert_allclose(scores["marginal"], scores["marginal_signed"].abs())
    assert scores.loc[scores["marginal_rank"] == 1, "marginal"].iloc[0] == scores["marginal"].max()
    assert (tmp_path / "run" / "attribution_vs_gwas.png").stat().st_size > 0
    np.testing.assert_allclose(scores["combined"], np.sqrt(scores["saliency"] * scores["marginal"]), rtol=1e-5)
    assert out["top"]["combined"].is_monotonic_decreasing  # the lead ranking


def test_a_damaged_gwas_table_is_named_with_the_command_that_writes_it(ig_run, tmp_path):
    import shutil

    from helpers import run_cli

    copy = tmp_path / "run"
    shutil.copytree(ig_run / "run", copy)
    run_cli("gwas", ig_run / "s.zarr", "--run", copy)
    table = copy / "s" / "gwas.tsv"
    table.write_bytes(table.read_bytes()[:300])
    proc = run_cli("reduce", "--run", copy, check=False)
    assert proc.returncode == 2 and "gwas.tsv cannot be read" in proc.stderr, proc.stderr
    assert f"hpcsnp gwas {ig_run / 's.zarr'} --run {copy} --name s" in proc.stderr


def test_a_fold_missing_a_configured_attribution_is_half_written(ig_run, tmp_path):
    """reduce never drops IG silently: a fold without its ig.zarr is named with the command that redoes it."""
    import shutil

    from hpcsnp.errors import IncompleteRunError
    from hpcsnp.run.reduce import reduce_run

    copy = tmp_path / "run"
    shutil.copytree(ig_run / "run", copy)
    shutil.rmtree(copy / "s" / "fold_2" / "ig.zarr")
    with pytest.raises(IncompleteRunError) as e:
        reduce_run(copy, plot=False)
    assert "s fold 2 (half-written: ig.zarr of its configured attributions missing)" in str(e.value)
    assert f"hpcsnp train {ig_run / 's.zarr'} --fold 2 --run {copy}" in str(e.value)
    assert "--force" in str(e.value) and e.value.missing == [("s", 2)]


def test_gwas_into_a_run_never_rebinds_or_adds_a_data_set(ig_run, tmp_path):
    """gwas --run with another store (or another write of it) is refused before it writes
    anything: dataset.json, the Gram cache and the folds stay as training left them."""
    import shutil

    from helpers import run_cli

    from hpcsnp.io.simulate import simulate

    copy = tmp_path / "run"
    shutil.copytree(ig_run / "run", copy)
    before = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    simulate(tmp_path / "o.tsv", samples=90, snps=80, causal=3, folds=3, seed=5)
    run_cli("ingest", tmp_path / "o.tsv", "-o", tmp_path / "o.zarr")
    shutil.copytree(ig_run / "s.zarr", tmp_path / "s.zarr")  # the same store, copied: still the trained one
    run_cli("ingest", tmp_path / "o.tsv", "-o", tmp_path / "s2" / "s.zarr")  # another store of the same name
    cases = [(tmp_path / "o.zarr", ["--name", "s"], "another store or another write of it"),
             (tmp_path / "s2" / "s.zarr", [], "another store or another write of it"),
             (tmp_path / "o.zarr", [], "no data set 'o' (it holds s)")]
    for store, extra, message in cases:
        proc = run_cli("gwas", store, "--run", copy, *extra, check=False)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    proc = run_cli("gwas", tmp_path / "o.zarr", "--run", copy, "-o", tmp_path / "d", check=False)
    assert proc.returncode == 2 and "not both" in proc.stderr and not (tmp_path / "d").exists()
    after = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    assert after == before
    run_cli("gwas", tmp_path / "s.zarr", "--run", copy)  # the trained store, wherever it lies, is welcome
    assert (copy / "s" / "gwas.tsv").exists() and (copy / "s" / "dataset.json").read_bytes() == before[
        Path("s") / "dataset.json"]
