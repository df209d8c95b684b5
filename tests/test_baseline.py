"""The linear baseline: GBLUP equals the mixed-model equations' solution, and REML
finds the maximum of a directly computed restricted likelihood."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from helpers import run_cli

from hpcsnp.linear import tridiagonal
from hpcsnp.linear.baseline import (
    REMLSpectrum,
    centred_kernels,
    encode,
    gblup_fit_predict,
    gblup_kernel_predict,
    gblup_solve,
    gram_matrix,
    off_diagonal_median,
    reml_delta,
    squared_distances,
)


def data(n=60, p=40, h2=0.6, seed=0):
    rng = np.random.default_rng(seed)
    g = rng.binomial(2, rng.uniform(0.2, 0.8, p), size=(n, p)).astype(np.int8)
    beta = rng.standard_normal(p) * np.sqrt(h2 / p)
    Z, _ = encode(g, "dosage")
    y = 50 + Z @ beta / Z.std() + rng.standard_normal(n) * np.sqrt(1 - h2)
    return g, Z, y


@pytest.mark.parametrize("condition", [1e3, 1e12], ids=["refined", "falls-back"])
def test_spd_solve_is_a_float64_solve(condition):
    """spd_solve (float32 Cholesky refined in float64) returns the float64 solution to
    rounding: where H's condition number allows the refinement, and, by the float64
    Cholesky, where it does not; a zero right-hand side gives a zero column."""
    from scipy.linalg import cho_factor, cho_solve

    from hpcsnp.linear.baseline import spd_solve

    rng = np.random.default_rng(7)
    n = 300
    Q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    H = (Q * np.geomspace(1.0, 1.0 / condition, n)) @ Q.T
    H = (H + H.T) / 2
    B = np.column_stack([rng.standard_normal(n), np.zeros(n), np.ones(n)])
    want = cho_solve(cho_factor(H.copy(), lower=True), B)
    got = spd_solve(H.copy(), B)
    scale = np.abs(want).max(axis=0)
    scale[1] = 1.0
    # float64 accuracy: cond x 1e-16 relative; float32's alone would be cond x 1e-7
    assert (np.abs(got - want).max(axis=0) / scale).max() < condition * 1e-13
    assert not got[:, 1].any()


def test_gblup_equals_henderson_mixed_model_equations():
    """[[n, 1'Z], [Z'1, Z'Z + lambda I]] [mu; beta] = [1'y; Z'y], lambda = delta * p."""
    _, Z, y = data()
    Zfit, yfit, Znew = Z[:45], y[:45], Z[45:]
    delta = 0.7
    pred, _, mu, _ = gblup_fit_predict(Zfit, yfit, Znew, delta=delta)
    n, p = Zfit.shape
    X = np.column_stack([np.ones(n), Zfit])
    lhs = X.T @ X + np.diag([0.0] + [delta * p] * p)
    sol = np.linalg.solve(lhs, X.T @ yfit)
    np.testing.assert_allclose(mu, sol[0], rtol=1e-8)
    np.testing.assert_allclose(pred, sol[0] + Znew @ sol[1:], rtol=1e-8)


def test_inner_refit_is_a_fit_on_the_inner_rows_alone():
    """The validation-fold predictions: same delta, fitted on the first rows only.  (The
    kernel keeps the outer centring; a per-column constant shift of Z changes K by terms
    the intercept absorbs only approximately, so compare with the same centred Z.)"""
    _, Z, y = data()
    fit, held = np.arange(30), np.arange(30, 45)
    _, delta, _, inner = gblup_fit_predict(Z[:45], y[:45], Z[45:], delta=0.7, inner=(fit, held))
    direct, _, _, _ = gblup_fit_predict(Z[fit], y[fit], Z[held], delta=delta)
    np.testing.assert_allclose(inner, direct, rtol=1e-8)


def direct_reml(delta, K, y):
    """-2 log L_R profiled over sg2, straight from the definition (no eigen tricks)."""
    n = len(y)
    H = K + delta * np.eye(n)
    Hi = np.linalg.inv(H)
    one = np.ones(n)
    P = Hi - np.outer(Hi @ one, one @ Hi) / (one @ Hi @ one)
    sg2 = y @ P @ y / (n - 1)
    return -0.5 * ((n - 1) * np.log(sg2) + np.linalg.slogdet(H)[1] + np.log(one @ Hi @ one) + (n - 1))


@pytest.mark.parametrize("n,p,seed", [(60, 40, 0), (50, 200, 1), (80, 30, 2)])
def test_reml_matches_brute_force_maximisation(n, p, seed):
    _, Z, y = data(n, p, seed=seed)
    K = Z @ Z.T / p
    delta, _ = reml_delta(K, y)
    grid = np.exp(np.linspace(-8, 8, 3201))
    ll = np.array([direct_reml(d, K, y) for d in grid])
    best = grid[np.argmax(ll)]
    assert np.log(delta) == pytest.approx(np.log(best), abs=0.02)
    assert direct_reml(delta, K, y) >= ll.max() - 1e-6


def reml_projection(K, y, delta):
    """y' P y with P = H^-1 - H^-1 1 1' H^-1 / (1' H^-1 1), H = K + delta I: the
    restricted residual quadratic form, straight from the definition."""
    n = len(y)
    Hi = np.linalg.inv(K + delta * np.eye(n))
    one = np.ones(n)
    return y @ Hi @ y - (one @ Hi @ y) ** 2 / (one @ Hi @ one)


@pytest.fixture(params=["two-stage", "one-stage"])
def reduction(request, monkeypatch):
    """REMLSpectrum with LAPACK's two-stage tridiagonalisation (where scipy's LAPACK has it,
    the default) and with the one-stage one that keeps the reflectors."""
    if request.param == "one-stage":
        monkeypatch.setattr(tridiagonal, "two_stage", lambda dtype: None)
    elif tridiagonal.two_stage(np.float64) is None:
        pytest.skip("scipy's LAPACK here has no sytrd_2stage (scipy not from its wheels)")
    return request.param


@pytest.mark.parametrize("n,p,centre", [(70, 120, True), (90, 25, True), (60, 40, False)])
def test_reml_spectrum_matches_a_full_eigendecomposition(n, p, centre, reduction):
    """Full rank, rank-deficient (repeated eigenvalue 0) and a kernel that is not centred:
    the eigenvalues are those of S K S without the intercept's 0, the quadratic form from
    one tridiagonal solve is y' P y for every delta, and for a centred kernel reduced in one
    stage the GBLUP coefficients from the same factorisation are (K + delta I)^-1 (y - mean y)
    (the two-stage reduction keeps no reflectors: no solve)."""
    rng = np.random.default_rng(n)
    Z = rng.standard_normal((n, p)) + (0.0 if centre else rng.standard_normal(p))
    if centre:
        Z -= Z.mean(axis=0)
    K = Z @ Z.T / p
    y = rng.standard_normal(n) + 3.0
    spec = REMLSpectrum(K.copy(), y)
    assert spec.centred == centre
    S = np.eye(n) - 1.0 / n
    lam_ref, U = np.linalg.eigh(S @ K @ S)
    lam_ref = np.delete(lam_ref, np.argmax(np.abs(U.T @ np.ones(n))))  # the intercept's eigenvector 1/sqrt(n)
    np.testing.assert_allclose(np.sort(spec.xi), np.maximum(lam_ref, 0.0), atol=1e-10)
    for d in (0.05, 1.0, 20.0):
        assert spec.quadratic(d) == pytest.approx(reml_projection(K, y, d), rel=1e-9)
        if spec.solvable:
            np.testing.assert_allclose(spec.solve(d), np.linalg.solve(K + d * np.eye(n), y - y.mean()),
                                       rtol=1e-8, atol=1e-10)
            alpha, mu = gblup_solve(K, y, d)
            np.testing.assert_allclose(spec.solve(d), alpha, rtol=1e-8, atol=1e-10)
            assert spec.mean == pytest.approx(mu, rel=1e-10)
    assert spec.solvable == (centre and reduction == "one-stage")
    if not spec.solvable:
        with pytest.raises(ValueError):
            spec.solve(1.0)


@pytest.mark.parametrize("kernel", ["centred", "gaussian"])
def test_reml_in_single_precision_agrees_with_double_and_leaves_the_kernel_alone(kernel, reduction):
    """single=True (the RKHS fits'): eigenvalues and quadratic forms to float32 precision,
    REML's delta to 5e-4 of itself (the two-stage reduction's float32 rounding moves it by
    1.5e-4 here, the one-stage one's by 1e-5); an overwritable centred kernel is not overwritten (its
    solve is then a Cholesky one, as no float64 reflectors are kept) and the predictions are
    the Cholesky solve's with that delta."""
    rng = np.random.default_rng(11)
    n, p = 300, 400
    Z = rng.standard_normal((n, p))
    Z -= Z.mean(axis=0)
    if kernel == "centred":
        K = Z @ Z.T / p
    else:
        d2 = (Z * Z).sum(1)
        K = np.exp(-0.5 * (d2[:, None] + d2[None, :] - 2 * Z @ Z.T) / np.median(d2) / 2)
    y = Z[:, :20].sum(1) / 3 + rng.standard_normal(n) + 5.0
    double, single = REMLSpectrum(K, y), REMLSpectrum(K, y, single=True)
    assert not single.solvable and double.solvable == (kernel == "centred" and reduction == "one-stage")
    scale = double.xi.max()
    np.testing.assert_allclose(single.xi, double.xi, rtol=0, atol=1e-5 * scale)
    assert not np.array_equal(single.xi, double.xi)  # the float32 path ran
    for d in (0.1, 1.0):
        assert single.quadratic(d) == pytest.approx(double.quadratic(d), rel=1e-4)
    assert single.maximise()[0] == pytest.approx(double.maximise()[0], rel=5e-4)
    K_new = K[:30] + 0.01
    kept = K.copy()
    pred, delta, mu, _ = gblup_kernel_predict(kept, y, K_new, overwrite=True, single=True)
    ref, _, ref_mu, _ = gblup_kernel_predict(K, y, K_new, delta=delta)
    np.testing.assert_allclose(pred, ref, rtol=1e-10)
    assert delta == pytest.approx(double.maximise()[0], rel=5e-4)


def test_reml_path_predictions_equal_the_cholesky_solve(reduction):
    """gblup_kernel_predict with REML's delta: the centred kernel's solve (through the
    one-stage tridiagonalisation, or a Cholesky solve after the two-stage one, which must
    then not have overwritten the kernel) gives what a Cholesky solve with that delta gives."""
    _, Z, y = data(80, 50, seed=4)
    Zf = Z[:60] - Z[:60].mean(axis=0)
    K, K_new = Zf @ Zf.T / 50, (Z[60:] - Z[:60].mean(axis=0)) @ Zf.T / 50
    pred, delta, mu, _ = gblup_kernel_predict(K.copy(), y[:60], K_new, overwrite=True)
    ref, _, ref_mu, _ = gblup_kernel_predict(K, y[:60], K_new, delta=delta)
    np.testing.assert_allclose(pred, ref, rtol=1e-9)
    assert mu == pytest.approx(ref_mu, rel=1e-12)


@pytest.mark.parametrize("encoding", ["dosage", "onehot"])
def test_kernels_from_one_gram_matrix_equal_the_centred_designs(encoding):
    """Fold kernels from the store-wide uncentred Gram matrix == those of the design centred by
    the fitting rows' means (missing dosages filled with the store-wide mean), and so the
    same GBLUP predictions."""
    from hpcsnp.genotypes import mean_dosage

    rng = np.random.default_rng(3)
    g = rng.integers(0, 3, (50, 30)).astype(np.int8)
    g[rng.random(g.shape) < 0.1] = -1
    fit, new = np.arange(12, 50), np.arange(12)
    fill = mean_dosage([g], g.shape[1])
    G, width = gram_matrix(g, encoding)
    K, K_new = centred_kernels(G, width, fit, new)
    Z_fit, means = encode(g[fit], encoding, fill=fill)
    Z_new, _ = encode(g[new], encoding, means, fill=fill)
    assert width == Z_fit.shape[1]
    np.testing.assert_allclose(K, Z_fit @ Z_fit.T / width, atol=1e-12)
    np.testing.assert_allclose(K_new, Z_new @ Z_fit.T / width, atol=1e-12)
    y = rng.standard_normal(len(g))
    a = gblup_kernel_predict(K, y[fit], K_new, delta=0.5)[0]
    b = gblup_fit_predict(Z_fit, y[fit], Z_new, delta=0.5)[0]
    np.testing.assert_allclose(a, b, rtol=1e-9)


def test_gram_matrix_is_exact_in_float32_for_integer_designs(monkeypatch):
    """One-hot (and complete dosage) Gram matrices are integer: the float32 products used
    for speed must give them exactly; blocks over SNPs must add up to the whole."""
    import hpcsnp.linear.baseline as b

    monkeypatch.setattr(b, "GRAM_BLOCK", 7)
    rng = np.random.default_rng(4)
    g = rng.integers(-1, 3, (40, 45)).astype(np.int8)
    for enc, gg in (("onehot", g), ("dosage", np.abs(g))):
        G, width = gram_matrix(gg, enc)
        X = b.uncentred(gg, enc)
        np.testing.assert_array_equal(G, X @ X.T)


def test_encodings_center_and_handle_missing():
    g = np.array([[0, 2, -1], [2, -1, 1], [1, 1, 1]], dtype=np.int8)
    Z, means = encode(g, "dosage")
    np.testing.assert_allclose(means, [1.0, 1.5, 1.0])
    assert Z[0, 2] == 0.0 and Z[1, 1] == 0.0  # missing -> the mean -> 0 after centring
    np.testing.assert_allclose(Z.mean(0)[:1], 0)
    Zo, means_o = encode(g, "onehot")
    assert Zo.shape == (3, 12)
    np.testing.assert_allclose(means_o[8:12], [1 / 3, 2 / 3, 0, 0])  # third SNP: missing + two 1s
    test = np.array([[2, 2, 0]], dtype=np.int8)
    Zt, _ = encode(test, "dosage", means)  # test rows centred with the training means
    np.testing.assert_allclose(Zt, [[1.0, 0.5, -1.0]])


def test_baseline_fold_and_reduce_report_it_beside_the_cnn(sim_store, tmp_path):
    from hpcsnp.cnn.train import train_fold
    from hpcsnp.config import Config
    from hpcsnp.linear.baseline import baseline_fold
    from hpcsnp.run.reduce import reduce_run
    from hpcsnp.store import open_store

    store, _ = sim_store
    for i in (1, 2, 3):
        train_fold(store, i, tmp_path, Config(max_epochs=1, batch_size=32, n_models=1))
        baseline_fold(store, i, tmp_path)
    out = reduce_run(tmp_path, plot=False)
    log = pd.read_csv(tmp_path / "fold_pcc_log.csv")
    assert sorted(set(log["model"])) == ["cnn", "ensemble", "gblup_dosage", "gblup_onehot", "rkhs", "rkhs_local"]
    assert (log.groupby("model").size() == 3).all()
    paired = pd.read_csv(tmp_path / "paired_comparison.csv")
    best = log[~log.model.isin(["cnn", "ensemble"])].groupby("model")["pcc"].mean()
    linear = best[["gblup_dosage", "gblup_onehot"]].idxmax()
    # against the better GBLUP: the CNN, the ensemble and the RKHS; against an RKHS too when it is the best
    assert paired[paired.baseline == linear]["model"].tolist() == ["cnn", "ensemble", "rkhs", "rkhs_local"]
    assert paired["baseline"].unique().tolist() == list(dict.fromkeys([linear, best.idxmax()]))
    row = paired.iloc[0]
    d = (log[log.model == "cnn"].set_index("fold")["pcc"] - log[log.model == row["baseline"]].set_index("fold")["pcc"])
    assert row["diff_mean"] == pytest.approx(d.mean(), rel=1e-5)
    assert out["summary"]["model"].tolist() == ["cnn", "gblup_dosage", "gblup_onehot", "rkhs", "rkhs_local",
                                                "ensemble"]
    local = [json.loads((tmp_path / open_store(store).name / "baseline_rkhs_local" / f"fold_{i}" / "metrics.json")
                        .read_text()) for i in (1, 2, 3)]
    assert all(m["theta"] == 2.0 and m["distance"] in ("dosage", "onehot") for m in local)
    # the simulated trait is additive with h2 0.8: the linear baseline predicts it well
    assert best.max() > 0.4
    check_ensemble(tmp_path, store)
    # the Gram matrices were computed by fold 1 and read from the run directory by folds 2 and 3
    for enc in ("dosage", "onehot"):
        m = [json.loads((tmp_path / open_store(store).name / f"baseline_{enc}" / f"fold_{i}" / "metrics.json")
                        .read_text())["gram_seconds"] for i in (1, 2, 3)]
        assert m[0] > 0 and m[1] == m[2] == 0


def check_ensemble(run, store):
    """Weights on the simplex, chosen on the validation predictions of every line outside the
    test fold (their MSE there is no worse than any single model's), applied unchanged to
    the test predictions."""
    from hpcsnp.folds import fold_split
    from hpcsnp.store import open_store

    w = pd.read_csv(run / "ensemble_weights.csv")
    cols = ["w_cnn", "w_gblup_dosage", "w_gblup_onehot", "w_rkhs", "w_rkhs_local"]
    np.testing.assert_allclose(w[cols].sum(axis=1), 1.0)
    assert ((w[cols] >= 0) & (w[cols] <= 1)).all().all()
    pred = pd.read_csv(run / "ensemble_predictions.csv", dtype={"sample_id": str})
    st = open_store(store)
    for _, r in w.iterrows():
        i = int(r["fold"])
        dirs = [run / st.name / f"fold_{i}", *(run / st.name / f"baseline_{k}" / f"fold_{i}"
                                                for k in ("dosage", "onehot", "rkhs", "rkhs_local"))]
        pooled = [j for j in range(1, st.n_folds + 1) if j % st.n_folds + 1 != i]
        val = [pd.concat([pd.read_csv(str(d).replace(f"fold_{i}", f"fold_{j}") + "/val_predictions.csv",
                                      dtype={"sample_id": str}) for j in pooled]).set_index("sample_id")
               for d in dirs]
        assert set(val[0].index) == set(st.sample_id[st.fold != i]) and r["n_val"] == len(val[0])
        assert set(st.sample_id[fold_split(st.fold, st.n_folds, i).val]) <= set(val[0].index)
        y = val[0]["truth"]
        single = [((v.loc[y.index, "prediction"] - y) ** 2).mean() for v in val]
        assert r["val_mse"] <= min(single) * (1 + 1e-5)  # the CSV keeps 6 digits
        test = [pd.read_csv(d / "predictions.csv", dtype={"sample_id": str}).set_index("sample_id") for d in dirs]
        p = pred[pred.fold == i].set_index("sample_id")
        expect = sum(r[c] * t.loc[p.index, "prediction"] for c, t in zip(cols, test))
        np.testing.assert_allclose(p["prediction"], expect, rtol=1e-5)


@pytest.mark.parametrize("n,duplicates", [(2, 0), (3, 0), (8, 2), (57, 0), (120, 30)])
def test_the_kernel_scale_is_the_median_distance_between_two_different_lines(n, duplicates):
    """off_diagonal_median (the RKHS kernels' scale, from one partition of the whole matrix)
    equals the median of the upper triangle, to the bit, with duplicate lines (off-diagonal
    zeros) and distances in any order."""
    rng = np.random.default_rng(n)
    X = rng.integers(0, 3, (n, 30)).astype(np.float64)
    X[n // 2:] += rng.normal(0, 0.3, (n - n // 2, 30))
    X[n // 2 - duplicates:n // 2] = X[:duplicates]  # whole lines again: distances of 0 off the diagonal
    D2 = squared_distances(X @ X.T)
    D2 = np.minimum(D2, D2.T)  # exactly symmetric (sums of reals can round d_ij and d_ji apart)
    assert (np.sum(D2 == 0) - n) // 2 >= duplicates
    assert off_diagonal_median(D2.copy()) == float(np.median(D2[np.triu_indices(n, 1)]))


def test_rkhs_is_a_gaussian_kernel_regression_with_its_bandwidth_chosen_on_the_validation_fold():
    """Direct computation on small data: distances of the filled dosage design, the kernel,
    REML delta, the mixed-model solve; theta is the validation-MSE minimiser and the
    validation predictions come from a fit on the training rows alone, whose REML delta the
    refit on training + validation keeps."""
    from hpcsnp.linear.baseline import RKHS_THETAS, gram_matrix, reml_delta, rkhs_fit_predict, uncentred

    rng = np.random.default_rng(3)
    g = rng.integers(0, 3, size=(90, 40)).astype(np.int8)
    g[rng.random(g.shape) < 0.05] = -1
    y = (g[:, 3] == 1) * 2.0 + g[:, 7] * (g[:, 9] > 0) + rng.normal(0, 0.5, 90)  # dominance, epistasis
    fit, test = np.arange(70), np.arange(70, 90)
    inner = (np.arange(50), np.arange(50, 70))
    G, _ = gram_matrix(g, "dosage")
    pred, val_pred, info = rkhs_fit_predict(G.copy(), y, fit, inner, test)
    x = uncentred(g, "dosage")
    D2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    scale = np.median(D2[np.ix_(fit, fit)][np.triu_indices(70, 1)])
    assert info["distance_scale"] == pytest.approx(scale)

    def reml(rows, theta):
        return reml_delta(np.exp(-theta * D2[np.ix_(rows, rows)] / scale), y[rows])[0]

    def direct(rows, new, theta, delta=None):
        K = np.exp(-theta * D2[np.ix_(rows, rows)] / scale)
        delta = reml(rows, theta) if delta is None else delta
        H = K + delta * np.eye(len(rows))
        one = np.ones(len(rows))
        mu = one @ np.linalg.solve(H, y[rows]) / (one @ np.linalg.solve(H, one))
        return mu + np.exp(-theta * D2[np.ix_(new, rows)] / scale) @ np.linalg.solve(H, y[rows] - mu)

    val_mse = {t: np.mean((direct(fit[inner[0]], fit[inner[1]], t) - y[fit[inner[1]]]) ** 2) for t in RKHS_THETAS}
    theta = min(val_mse, key=val_mse.get)
    assert info["theta"] == theta  # the grid's minimum (here at its end: the walk went all the way)
    tried = [float(t) for t in info["val_mse_by_theta"]]
    assert theta in tried and len(tried) < len(RKHS_THETAS)  # the walk skipped what lay uphill
    np.testing.assert_allclose([info["val_mse_by_theta"][str(t)] for t in tried], [val_mse[t] for t in tried],
                               rtol=1e-6)
    np.testing.assert_allclose(val_pred, direct(fit[inner[0]], fit[inner[1]], theta), rtol=1e-6)
    delta = reml(fit[inner[0]], theta)  # the RKHS fits' REML is in float32 (RKHS_SINGLE): delta to ~1e-5
    assert info["delta"] == pytest.approx(delta, rel=1e-4) and abs(reml(fit, theta) / delta - 1) > 1e-3
    np.testing.assert_allclose(pred, direct(fit, test, theta, info["delta"]), rtol=1e-6)


def test_rkhs_chooses_its_distance_with_theta_on_the_validation_fold():
    """Missing calls that carry signal (as where calls are missing for one parent's allele):
    the one-hot distance keeps them apart, the filled dosage does not. The choice is the
    (distance, theta) with the smallest validation MSE, and its predictions are that
    distance's alone; one-hot squared distances count twice the SNPs whose codes differ."""
    from hpcsnp.linear.baseline import RKHS_THETAS, RKHS_WALK_MARGIN, gram_matrix, rkhs_choose, rkhs_fit_predict

    rng = np.random.default_rng(5)
    n, p = 120, 60
    g = rng.integers(0, 3, size=(n, p)).astype(np.int8)
    hidden = rng.random((n, 20)) < 0.5  # half the lines cannot be called at 20 SNPs...
    g[:, :20][hidden] = -1
    y = hidden.sum(axis=1) * 0.5 + rng.normal(0, 0.5, n)  # ...and that is what the trait follows
    fit, test = np.arange(100), np.arange(100, n)
    inner = (np.arange(75), np.arange(75, 100))
    grams = {e: gram_matrix(g, e)[0] for e in ("dosage", "onehot")}
    pred, val_pred, info = rkhs_choose(lambda e: grams[e].copy(), y, fit, inner, test)
    single = {e: rkhs_fit_predict(grams[e].copy(), y, fit, inner, test) for e in grams}
    best = {e: min(single[e][2]["val_mse_by_theta"].values()) for e in grams}
    assert info["distance"] == min(best, key=best.get) == "onehot"
    # the winner walked as alone; the loser's start was more than RKHS_WALK_MARGIN worse: not walked
    tried = info["val_mse_by_distance"]
    assert tried["onehot"] == single["onehot"][2]["val_mse_by_theta"]
    start = str(sorted(RKHS_THETAS)[(len(RKHS_THETAS) - 1) // 2])
    assert tried["dosage"] == {start: single["dosage"][2]["val_mse_by_theta"][start]}
    assert tried["dosage"][start] > (1 + RKHS_WALK_MARGIN) * best["onehot"]
    assert info["val_mse_by_theta"] == tried["onehot"]  # the chosen distance's whole walk
    np.testing.assert_allclose(pred, single["onehot"][0], rtol=1e-12)
    np.testing.assert_allclose(val_pred, single["onehot"][1], rtol=1e-12)
    mismatches = (g[fit][:, None, :] != g[fit][None, :, :]).sum(-1)
    assert info["distance_scale"] == pytest.approx(np.median(2 * mismatches[np.triu_indices(len(fit), 1)]))


def test_rkhs_walks_every_distance_whose_start_is_within_the_margin(monkeypatch):
    """With a margin no start exceeds, every distance is walked as it would be alone, and the
    choice, its predictions and every MSE tried are those of the distances chosen apart."""
    import hpcsnp.linear.baseline as bl

    monkeypatch.setattr(bl, "RKHS_WALK_MARGIN", 1e9)
    fits_made = []
    real = bl.gblup_kernel_predict
    monkeypatch.setattr(bl, "gblup_kernel_predict", lambda *a, **k: fits_made.append(1) or real(*a, **k))
    rng = np.random.default_rng(3)
    n, p = 110, 50
    g = rng.integers(0, 3, size=(n, p)).astype(np.int8)
    g[rng.random(g.shape) < 0.05] = -1
    y = g[:, 1] * 1.0 + (g[:, 4] == 1) * 1.5 + rng.normal(0, 0.5, n)
    fit, test, inner = np.arange(90), np.arange(90, n), (np.arange(70), np.arange(70, 90))
    grams = {e: bl.gram_matrix(g, e)[0] for e in ("dosage", "onehot")}
    pred, val_pred, info = bl.rkhs_choose(lambda e: grams[e].copy(), y, fit, inner, test)
    tried = info["val_mse_by_distance"]
    assert len(fits_made) == sum(map(len, tried.values())) + 1  # one REML fit a (distance, width), one refit
    single = {e: bl.rkhs_fit_predict(grams[e].copy(), y, fit, inner, test) for e in grams}
    assert tried == {e: single[e][2]["val_mse_by_theta"] for e in grams}
    assert info["val_mse_by_theta"] == tried[info["distance"]]
    assert all(len(v) > 1 for v in info["val_mse_by_distance"].values())  # both walked
    np.testing.assert_array_equal(pred, single[info["distance"]][0])


def test_the_narrow_kernel_reuses_the_fits_of_the_wide_one(monkeypatch):
    """rkhs_local after rkhs in one fold: the same predictions as computed alone, without
    refitting a (distance, theta) the wide kernel's walk already fitted."""
    import hpcsnp.linear.baseline as bl

    rng = np.random.default_rng(8)
    n, p = 110, 50
    g = rng.integers(0, 3, size=(n, p)).astype(np.int8)
    g[rng.random(g.shape) < 0.05] = -1
    y = (g[:, 2] == 1) * 2.0 + g[:, 5] * g[:, 6] * 0.7 + rng.normal(0, 0.4, n)  # narrow-kernel signal
    fit, test, inner = np.arange(90), np.arange(90, n), (np.arange(70), np.arange(70, 90))
    grams = {e: bl.gram_matrix(g, e)[0] for e in ("dosage", "onehot")}
    fits_made = []
    real = bl.gblup_kernel_predict
    monkeypatch.setattr(bl, "gblup_kernel_predict", lambda *a, **k: fits_made.append(1) or real(*a, **k))

    def load(e):
        return grams[e].copy()
    alone = bl.rkhs_choose(load, y, fit, inner, test, thetas=bl.RKHS_LOCAL_THETAS)
    n_alone = len(fits_made)
    shared = bl.RKHSFits()
    wide = bl.rkhs_choose(load, y, fit, inner, test, fits=shared)
    reusable = sum((d, bl.RKHS_LOCAL_THETAS[0]) in shared.val for d in bl.RKHS_DISTANCES)
    assert reusable  # the walk went up to the narrow width here
    fits_made.clear()
    narrow = bl.rkhs_choose(load, y, fit, inner, test, thetas=bl.RKHS_LOCAL_THETAS, fits=shared)
    same_refit = (wide.info["distance"], wide.info["theta"]) == (narrow.info["distance"], narrow.info["theta"])
    assert n_alone == len(bl.RKHS_DISTANCES) + 1  # a validation fit per distance, one refit
    assert len(fits_made) == n_alone - reusable - same_refit
    np.testing.assert_array_equal(narrow.pred, alone.pred)
    np.testing.assert_array_equal(narrow.val_pred, alone.val_pred)
    assert narrow.info == alone.info


def test_gram_cache_is_reused_and_redone_for_a_changed_store(sim_store, tmp_path):
    import os

    from hpcsnp.linear.baseline import cached_gram
    from hpcsnp.store import open_store

    store = open_store(sim_store[0])
    G1, w1, s1 = cached_gram(store, "onehot", tmp_path)
    G2, w2, s2 = cached_gram(store, "onehot", tmp_path)
    assert s1 > 0 and s2 == 0 and w1 == w2 and np.array_equal(G1, G2)
    zj = store.path / "zarr.json"  # a re-ingest rewrites the store's metadata
    st = zj.stat()
    os.utime(zj, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    _, _, s3 = cached_gram(open_store(store.path), "onehot", tmp_path)
    assert s3 > 0


def test_a_baseline_that_cannot_fit_in_memory_is_refused_up_front(sim_store, tmp_path):
    """The exact GBLUP holds n x n matrices: where the memory granted (here SLURM's 100 MB)
    is less than it needs, cv --solver exact refuses before training anything, naming
    --no-baseline and the scalable solver; --solver auto (the default) takes the scalable path."""
    from hpcsnp.errors import InputError
    from hpcsnp.linear.baseline import check_memory, memory_needed
    from hpcsnp.store import open_store

    store = open_store(sim_store[0])
    check_memory(store, available=memory_needed(store.n_samples, store.n_variants))
    with pytest.raises(InputError, match=r"needs about 0\.2 GB of memory .* 0\.1 GB is available"):
        check_memory(store, available=100 << 20)
    env = {"SLURM_MEM_PER_NODE": "100"}
    for verb in (["cv", sim_store[0], "--run", tmp_path / "run"], ["baseline", sim_store[0], "--run", tmp_path / "b"]):
        proc = run_cli(*verb, "--solver", "exact", env=env, check=False)
        assert proc.returncode == 2 and "--no-baseline" in proc.stderr and "--solver scalable" in proc.stderr, \
            proc.stderr
    assert not list(tmp_path.rglob("metrics.json"))
    proc = run_cli("baseline", sim_store[0], "--run", tmp_path / "auto", "--fold", 1, env=env)
    assert "RKHS" in proc.stderr and "skipped" in proc.stderr and "scalable solver" in proc.stderr
    fitted = [json.loads(p.read_text()) for p in (tmp_path / "auto").rglob("metrics.json")]
    assert sorted(m["model"] for m in fitted) == ["gblup_dosage", "gblup_onehot"]
    assert all(m["solver"] == "scalable" for m in fitted)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_keep_freed_memory_reuses_large_arrays_where_memory_allows():
    """keep_freed_memory: where the memory allows twice the need, an n x n array made again
    after the last one was freed reuses its pages (few page faults) instead of a fresh
    mapping faulted in page by page; with too little memory it changes nothing.  In a
    child process: malloc's settings last for the process."""
    code = textwrap.dedent("""
        import resource, sys
        import numpy as np
        from hpcsnp.resources import keep_freed_memory
        kept = keep_freed_memory(10 << 20, available=int(sys.argv[1]))
        np.ones((2048, 2048)).sum()  # 32 MB made and freed
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        np.ones((2048, 2048)).sum()
        print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """)
    out = {}
    for available in (1 << 40, 15 << 20):
        proc = subprocess.run([sys.executable, "-c", code, str(available)], capture_output=True, text=True, check=True)
        kept, faults = proc.stdout.split()
        out[kept] = int(faults)
    assert set(out) == {"True", "False"}
    # 32 MB is 8,192 pages of 4 KB (or 16 huge pages): a fresh mapping faults at least 16 times
    assert out["True"] < 10 <= out["False"], out
