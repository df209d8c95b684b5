"""Covariates (--covar TABLE): fixed effects in REML, GBLUP/RKHS, the refit and the GWAS;
taken out of the CNN's target on the training lines alone."""

import numpy as np
import pandas as pd
import pytest
from helpers import FAST, fold_masks, run_cli, scalable_design
from scipy import stats

from hpcsnp.errors import InputError
from hpcsnp.io.simulate import simulate
from hpcsnp.io.text import ingest_tsv
from hpcsnp.linear.baseline import REMLSpectrum, baseline_fold, fixed_design, gblup_kernel_predict
from hpcsnp.linear.gwas import associate, gwas_store
from hpcsnp.store import open_store
from hpcsnp.traits import covariate_matrix

EFFECT = {"E1": 0.0, "E2": 3.0, "E3": -2.5}  # environment effects, in phenotype sds


@pytest.fixture(scope="module")
def env_data(tmp_path_factory):
    """A store of 360 lines (no missing call), its phenotype plus an environment effect as a
    trait of a table, and the covariate table: the environment (categorical) and noise."""
    d = tmp_path_factory.mktemp("covar")
    simulate(d / "sim.tsv", samples=360, snps=200, causal=5, folds=3, missing=0.0, seed=11)
    ingest_tsv(d / "sim.tsv", d / "sim.zarr", progress=False, chunk_rows=64)
    store = open_store(d / "sim.zarr")
    rng = np.random.default_rng(3)
    env = rng.choice(list(EFFECT), store.n_samples)
    y = store.phenotype.astype(float)
    shifted = y + y.std() * np.array([EFFECT[e] for e in env])
    pd.DataFrame({"id": store.sample_id, "yenv": shifted}).to_csv(d / "yenv.tsv", sep="\t", index=False)
    pd.DataFrame({"id": store.sample_id, "env": env, "noise": rng.normal(size=store.n_samples)}).to_csv(
        d / "covar.tsv", sep="\t", index=False)
    return d


def _direct_reml(K, y, X, log_delta):
    """REML log-likelihood with sg2 profiled out, from its textbook formula."""
    n = len(y)
    V = K + np.exp(log_delta) * np.eye(n)
    Vi = np.linalg.inv(V)
    XVX = X.T @ Vi @ X
    P = Vi - Vi @ X @ np.linalg.solve(XVX, X.T @ Vi)
    nq = n - X.shape[1]
    return -0.5 * (nq * np.log(y @ P @ y) + np.linalg.slogdet(V)[1] + np.linalg.slogdet(XVX)[1])


def test_reml_and_the_blup_with_covariates_are_the_textbook_mixed_model():
    rng = np.random.default_rng(0)
    n, p = 80, 300
    Z = rng.normal(size=(n + 20, p))
    Z -= Z[:n].mean(axis=0)
    K_all = Z @ Z[:n].T / p
    K, K_new = K_all[:n], K_all[n:]
    C = np.column_stack([rng.normal(size=n + 20), rng.random(n + 20) < 0.5, rng.normal(size=n + 20)])
    C[:, 2] = 2 * C[:, 0]  # collinear: one direction, not two
    y = 1 + C[:n, :2] @ [2.0, -3.0] + Z[:n] @ rng.normal(size=p) * 0.1 + rng.normal(size=n)
    X = fixed_design(C[:n, :2])
    spectrum = REMLSpectrum(K, y, covariates=C[:n])
    assert spectrum.fixed == 2
    for t in (-2.0, 0.5, 2.0):
        assert spectrum.loglik(t) - spectrum.loglik(0.0) == pytest.approx(
            _direct_reml(K, y, X, t) - _direct_reml(K, y, X, 0.0), abs=1e-8)
    delta = 0.7
    V = K + delta * np.eye(n)
    b = np.linalg.solve(X.T @ np.linalg.solve(V, X), X.T @ np.linalg.solve(V, y))
    want = fixed_design(C[n:, :2], C[:n, :2].mean(axis=0)) @ b + K_new @ np.linalg.solve(V, y - X @ b)
    got = gblup_kernel_predict(K, y, K_new, delta=delta, covariates=C[:n], covariates_new=C[n:])
    np.testing.assert_allclose(got.pred, want, rtol=1e-9, atol=1e-9)
    assert got.mu == pytest.approx(b[0], rel=1e-9)


def test_the_association_test_with_covariates_is_least_squares_with_them():
    rng = np.random.default_rng(1)
    n = 120
    g = rng.integers(0, 3, size=(n, 4)).astype(np.int8)
    C = rng.normal(size=(n, 2))
    y = C @ [1.0, -2.0] + 0.5 * g[:, 0] + rng.normal(size=n)
    # a constant column first (e.g. a level no tested line has) adds nothing, and must not
    # keep the next column from being projected out
    frame = associate(g, y, None, None, covariates=np.column_stack([np.zeros(n), C]))
    for j in range(4):
        X = np.column_stack([np.ones(n), C, g[:, j]])
        coef, res, *_ = np.linalg.lstsq(X, y, rcond=None)
        s2 = res[0] / (n - 4)
        se = np.sqrt(s2 * np.linalg.inv(X.T @ X)[-1, -1])
        assert frame["beta"][j] == pytest.approx(coef[-1], rel=1e-9)
        assert frame["se"][j] == pytest.approx(se, rel=1e-9)
        assert frame["p"][j] == pytest.approx(2 * stats.t.sf(abs(coef[-1] / se), n - 4), rel=1e-7)


def test_categorical_and_numeric_covariates_are_read_by_sample_id(env_data, tmp_path):
    store = open_store(env_data / "sim.zarr")
    table = pd.read_csv(env_data / "covar.tsv", sep="\t", dtype={"id": str})
    table.iloc[::-1].head(-5).to_csv(tmp_path / "c.tsv", sep="\t", index=False)  # other order, 5 lines absent
    C, names = covariate_matrix(store, tmp_path / "c.tsv")
    assert names == ["env=E2", "env=E3", "noise"]
    by_id = table.set_index("id")
    ids = [str(i) for i in store.sample_id]
    absent = set(table["id"].head(5))  # the last 5 of the reversed table
    for i, s in enumerate(ids):
        if s in absent:
            assert np.isnan(C[i]).all()
        else:
            e = by_id.loc[s, "env"]
            assert C[i].tolist() == [float(e == "E2"), float(e == "E3"), pytest.approx(by_id.loc[s, "noise"])]
    view = open_store(env_data / "sim.zarr", covar=tmp_path / "c.tsv", covar_names=["env"])
    assert view.covariate_names == ["env=E2", "env=E3"] and (view.fold == 0).sum() == 5
    assert view.store_id != open_store(env_data / "sim.zarr", covar=tmp_path / "c.tsv").store_id
    table.assign(trial=np.arange(len(table)) % 3 + 1).to_csv(tmp_path / "t.tsv", sep="\t", index=False)
    assert covariate_matrix(store, tmp_path / "t.tsv", ["trial"])[1] == ["trial"]
    C, names = covariate_matrix(store, tmp_path / "t.tsv", ["trial:cat"])
    assert names == ["trial=2", "trial=3"] and C.sum(axis=0).tolist() == [120, 120]
    with pytest.raises(InputError, match="no covariate column 'year'"):
        open_store(env_data / "sim.zarr", covar=tmp_path / "c.tsv", covar_names=["year"])


def test_an_environment_effect_is_removed_by_the_covariate(env_data, tmp_path):
    """With the environment as a covariate the GBLUP's and the GWAS's heritability and the
    GWAS's p-values are those of the phenotype without the effect; without it they are not."""
    plain = open_store(env_data / "sim.zarr")
    shifted = open_store(env_data / "sim.zarr", pheno=env_data / "yenv.tsv")
    adjusted = open_store(env_data / "sim.zarr", pheno=env_data / "yenv.tsv", covar=env_data / "covar.tsv",
                          covar_names=["env"])
    g_plain, g_shift, g_adj = (gwas_store(s) for s in (plain, shifted, adjusted))
    assert abs(g_adj.summary["h2_reml"] - g_plain.summary["h2_reml"]) < 0.05
    assert g_plain.summary["h2_reml"] - g_shift.summary["h2_reml"] > 0.3
    logp = [-np.log10(g.table["p"]) for g in (g_plain, g_shift, g_adj)]
    assert stats.spearmanr(logp[0], logp[2])[0] > 0.97 > stats.spearmanr(logp[0], logp[1])[0]
    assert "covariate" in g_adj.summary["method"] and g_adj.summary["covariates"] == ["env=E2", "env=E3"]
    fits = {}
    for name, kw in (("shifted", {}), ("adjusted", {"covar": env_data / "covar.tsv", "covar_names": ["env"]})):
        fits[name] = baseline_fold(env_data / "sim.zarr", 1, tmp_path / name, encodings=("dosage",),
                                   pheno=env_data / "yenv.tsv", **kw)[0]
    plain_fit = baseline_fold(env_data / "sim.zarr", 1, tmp_path / "plain", encodings=("dosage",))[0]
    assert abs(fits["adjusted"]["h2_reml"] - plain_fit["h2_reml"]) < 0.05
    assert fits["adjusted"]["pcc"] > fits["shifted"]["pcc"] + 0.3


def test_a_covariate_equal_to_the_test_fold_phenotypes_cannot_leak_into_its_test_pcc(env_data, tmp_path):
    """The covariate is the phenotype on fold 1's lines and noise elsewhere: the effects are
    fitted on training lines only, so its effect is ~0 and fold 1's test PCC does not rise
    above that of the models without it (a fit that saw the test lines would give it an
    effect near 1 and predict them almost exactly).  The small effect fitted on the noise,
    times the test lines' covariate (their phenotype), can move the PCC either way."""
    from hpcsnp.cnn.train import train_fold

    store = open_store(env_data / "sim.zarr")
    leak = np.random.default_rng(5).normal(store.phenotype.mean(), store.phenotype.std(), store.n_samples)
    leak[store.fold == 1] = store.phenotype[store.fold == 1]
    pd.DataFrame({"id": store.sample_id, "leak": leak}).to_csv(tmp_path / "leak.tsv", sep="\t", index=False)
    with_leak = {"covar": tmp_path / "leak.tsv"}
    cnn = train_fold(env_data / "sim.zarr", 1, tmp_path / "run", FAST, **with_leak).metrics
    cnn_plain = train_fold(env_data / "sim.zarr", 1, tmp_path / "plain", FAST).metrics
    base = baseline_fold(env_data / "sim.zarr", 1, tmp_path / "run", encodings=("dosage",), **with_leak)[0]
    base_plain = baseline_fold(env_data / "sim.zarr", 1, tmp_path / "plain", encodings=("dosage",))[0]
    assert base["pcc"] < base_plain["pcc"] + 0.03 and base["pcc"] < 0.9
    assert cnn["pcc"] < cnn_plain["pcc"] + 0.03 and cnn["pcc"] < 0.9
    assert abs(cnn["covariate_effects"][0]) < 0.15  # per unit (the phenotype's); a leak would give ~1


def test_covariates_through_cv_and_predict(env_data, tmp_path):
    run = tmp_path / "run"
    run_cli("cv", env_data / "sim.zarr", "--run", run, "--pheno", env_data / "yenv.tsv", "--covar",
            env_data / "covar.tsv", "--covar-name", "env", "--epochs", FAST.max_epochs, "--batch-size",
            FAST.batch_size, "--models-per-fold", 1, "--no-refit", "--threads", 2, "--no-progress")
    summary = pd.read_csv(run / "fold_pcc_summary.csv").set_index("model")
    assert summary.loc["gblup_dosage", "pcc_mean"] > 0.8  # the environment's effect is predicted
    record = (run / "sim.yenv" / "dataset.json").read_text()
    assert str(env_data / "covar.tsv") in record and '"env"' in record
    assert f"env of {env_data / 'covar.tsv'}" in (run / "report.html").read_text()
    raw = pd.read_csv(env_data / "sim.tsv", sep="\t").drop(columns=["fold", "phenotype"]).head(6)
    raw.insert(0, "id", [f"new{i}" for i in range(6)])
    raw.to_csv(tmp_path / "new.tsv", sep="\t", index=False)
    run_cli("predict", "--run", run, tmp_path / "new.tsv", "-o", tmp_path / "pred.csv")
    assert len(pd.read_csv(tmp_path / "pred.csv")) == 6
    run_cli("predict", "--run", run, tmp_path / "new.tsv", "-o", tmp_path / "pev.csv", "--pev")
    _check_pev(run, tmp_path / "new.tsv", pd.read_csv(tmp_path / "pev.csv").set_index("sample_id"))


def _check_pev(run_dir, new_tsv, got):
    """--pev with covariates: sg2 from the GLS residual of the intercept and the covariates
    (n - f degrees of freedom), PEV = se2 z' (Z'Z + w delta I)^-1 z, solved directly."""
    from hpcsnp.linear.baseline import uncentred
    from hpcsnp.linear.refit import refitted
    from hpcsnp.rundir import RunDir

    run = RunDir(run_dir)
    ds = run.datasets()[0]
    store = ds.open_store()
    rows = store.phenotyped
    new = pd.read_csv(new_tsv, sep="\t").set_index("id")
    codes_new = new.to_numpy(np.int8)
    for enc in ("dosage", "onehot"):
        fit = refitted(run, ds, store, enc)
        Z = uncentred(store.genotypes[:][rows], enc, fit.fill) - fit.means
        n, w = Z.shape
        V = Z @ Z.T / w + fit.delta * np.eye(n)
        F = fixed_design(store.covariates[rows])
        y = store.phenotype.astype(np.float64)[rows]
        b = np.linalg.solve(F.T @ np.linalg.solve(V, F), F.T @ np.linalg.solve(V, y))
        r = y - F @ b
        sg2 = r @ np.linalg.solve(V, r) / (n - F.shape[1])
        z = uncentred(codes_new, enc, fit.fill) - fit.means
        pev = fit.delta * sg2 * np.einsum("ij,ji->i", z, np.linalg.solve(Z.T @ Z + w * fit.delta * np.eye(w), z.T))
        np.testing.assert_allclose(got.loc[new.index, f"gblup_{enc}_pev"], pev, rtol=1e-5)  # 6 digits in the CSV


@pytest.mark.parametrize("encoding", ["dosage", "onehot"])
def test_the_scalable_solve_with_covariates_equals_the_exact_one(env_data, encoding):
    """For a fixed variance ratio the conjugate gradients with the covariates projected out
    give the exact GLS/BLUP predictions of the test lines and of the inner fit's held-out
    lines, to 1e-6 of the phenotype's sd."""
    from hpcsnp.folds import fold_split
    from hpcsnp.linear import scalable
    from hpcsnp.linear.baseline import centred_kernels, gram_matrix, read_rows

    store = open_store(env_data / "sim.zarr", pheno=env_data / "yenv.tsv", covar=env_data / "covar.tsv")
    split = fold_split(store.fold, store.n_folds, 2)
    fit = np.sort(np.concatenate([split.train, split.val]))
    inner = (np.flatnonzero(~np.isin(fit, split.val)), np.flatnonzero(np.isin(fit, split.val)))
    y = store.phenotype.astype(np.float64)
    C = store.covariates
    G, width = gram_matrix(read_rows(store, np.arange(store.n_samples)), encoding)
    K, K_test = centred_kernels(G, width, fit, split.test)
    exact = gblup_kernel_predict(K, y[fit], K_test, delta=0.6, inner=inner, covariates=C[fit],
                                 covariates_new=C[split.test])
    design = scalable_design(store, encoding)
    masks = fold_masks(store.n_samples, fit, inner)
    r = scalable.ridge(design, y, masks, 0.6, tol=1e-12, covariates=C)
    pred = r.mu + design.apply(r.beta, r.means)
    pred += scalable.covariate_effects(C, y[:, None] - pred, masks)
    assert np.abs(pred[split.test, 0] - exact.pred).max() < 1e-6 * y.std()
    assert np.abs(pred[fit[inner[1]], 1] - exact.inner_pred).max() < 1e-6 * y.std()
    # and a whole fold through the baseline: the same delta (exact REML on <= 8,000 lines)
    delta_exact = REMLSpectrum(K, y[fit], covariates=C[fit]).maximise()[0]
    got = scalable.variance_ratio(design, store, encoding, y, fit, covariates=C)
    assert got.delta == pytest.approx(delta_exact, rel=1e-9)


@pytest.mark.parametrize("loco", [False, True])
def test_the_scalable_gwas_with_covariates_ranks_snps_as_the_exact_test_does(env_data, loco):
    """The environment as a covariate on both paths, whole-genome or LOCO: the same delta
    (exact REML on <= 8,000 lines), -log10 p with a Spearman correlation of at least 0.99, the
    same top SNPs, and both far from the test without the covariate."""
    store = open_store(env_data / "sim.zarr", pheno=env_data / "yenv.tsv", covar=env_data / "covar.tsv",
                       covar_names=["env"])
    exact, fast = gwas_store(store, solver="exact", loco=loco), gwas_store(store, solver="scalable", loco=loco)
    assert fast.summary["loco"] == loco
    assert fast.summary["delta"] == pytest.approx(exact.summary["delta"], rel=1e-9)
    a, b = (-np.log10(r.table["p"].to_numpy()) for r in (exact, fast))
    assert stats.spearmanr(a, b)[0] >= 0.99
    assert set(np.argsort(-a)[:3]) == set(np.argsort(-b)[:3])
    shifted = gwas_store(open_store(env_data / "sim.zarr", pheno=env_data / "yenv.tsv"), solver="scalable")
    assert stats.spearmanr(a, -np.log10(shifted.table["p"].to_numpy()))[0] < 0.97


def test_monte_carlo_reml_with_covariates_refines_a_sample_toward_reml_on_every_line(env_data):
    """Above REML_LINES (here forced lower): REML with the covariates on a sample, refined by
    the Monte Carlo score on every fitting line, lands within 0.03 h2 of exact REML with them
    on every fitting line (the sample's own estimate is the start, not the answer)."""
    from hpcsnp.folds import fold_split
    from hpcsnp.linear import scalable
    from hpcsnp.linear.baseline import centred_kernels, gram_matrix, read_rows

    store = open_store(env_data / "sim.zarr", pheno=env_data / "yenv.tsv", covar=env_data / "covar.tsv",
                       covar_names=["env"])
    split = fold_split(store.fold, store.n_folds, 1)
    fit = np.sort(np.concatenate([split.train, split.val]))
    y, C = store.phenotype.astype(np.float64), store.covariates
    G, width = gram_matrix(read_rows(store, np.arange(store.n_samples)), "dosage")
    K, _ = centred_kernels(G, width, fit, fit[:0])
    exact = REMLSpectrum(K, y[fit], covariates=C[fit]).maximise()[0]
    design = scalable.Design(store, "dosage", np.zeros(store.n_variants))
    design.fill = scalable.design_fill(store, design)
    refined = scalable.variance_ratio(design, store, "dosage", y, fit, reml_lines=len(fit) // 2, covariates=C)
    assert refined.mc_evaluations >= 2
    assert abs(1 / (1 + refined.delta) - 1 / (1 + exact)) < 0.03, (refined.delta, exact)
