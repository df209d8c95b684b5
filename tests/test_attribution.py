"""Attribution methods: SmoothGrad without noise is the saliency; integrated gradients are complete."""

import numpy as np
import pytest
import tensorflow as tf

from hpcsnp.config import Config
from hpcsnp.model import build_model
from hpcsnp.saliency import integrated_gradients, make_attribution, missing_baseline, smoothgrad


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

    from hpcsnp.train import train_fold

    store, _ = sim_store
    r = train_fold(store, 1, tmp_path, FAST.replace(attribution="smoothgrad,ig"))
    for method in ("saliency", "smoothgrad", "ig"):
        shard = zarr.open_array(str(r.path / f"{method}.zarr"))
        assert shard.attrs["n_samples"] == r.metrics["n_test"] and (shard[:] >= 0).all() and shard[:].sum() > 0
    assert set(r.metrics["attribution_seconds"]) == {"saliency", "smoothgrad", "ig"}


def test_clumping_merges_a_block_in_perfect_ld_and_keeps_independent_snps_apart():
    import pandas as pd

    from hpcsnp.loci import clump, loci_table, r2_matrix

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


def test_reduce_groups_top_snps_into_loci_and_compares_with_the_gwas(tmp_path):
    import pandas as pd
    from helpers import FAST, run_cli

    from hpcsnp.reduce import reduce_run
    from hpcsnp.simulate import simulate
    from hpcsnp.train import train_fold

    simulate(tmp_path / "s.tsv", samples=300, snps=80, causal=3, folds=3, seed=2)
    run_cli("ingest", tmp_path / "s.tsv", "-o", tmp_path / "s.zarr")
    for i in (1, 2, 3):
        train_fold(tmp_path / "s.zarr", i, tmp_path / "run", FAST.replace(attribution="ig"))
    run_cli("gwas", tmp_path / "s.zarr", "--run", tmp_path / "run")
    out = reduce_run(tmp_path / "run", top=10)
    loci = pd.read_csv(tmp_path / "run" / "top_loci.csv")
    assert set(loci["method"]) == {"saliency", "ig", "gwas"}
    assert (loci.groupby("method")["n_snps"].sum().drop("gwas") == 10).all()  # every top SNP in one locus
    summary = pd.read_csv(tmp_path / "run" / "attribution_summary.csv").set_index("method")
    assert set(summary.index) == {"saliency", "ig"} and summary["spearman_vs_gwas"].notna().all()
    vs = pd.read_csv(tmp_path / "run" / "attribution_vs_gwas.csv")
    assert (vs["gwas_loci_found"] <= vs["gwas_loci"]).all()
    stab = pd.read_csv(tmp_path / "run" / "attribution_stability.csv")
    assert stab["folds_in_top"].between(0, 3).all() and len(stab) == 20
    assert {"ig", "ig_rank", "gwas_p"} <= set(out["saliency"].columns)
    assert (tmp_path / "run" / "attribution_vs_gwas.png").stat().st_size > 0
