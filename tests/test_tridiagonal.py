"""The tridiagonal reduction REML works from: LAPACK's two-stage routine, called through
ctypes, against scipy's one-stage ?sytrd and a dense eigendecomposition."""

import numpy as np
import pytest

from hpcsnp.linear import tridiagonal


def symmetric(n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, n // 2))
    A = Z @ Z.T / n + np.diag(rng.uniform(0, 1, n))
    A[1:, 0] = rng.standard_normal(n - 1)  # a first column the reduction must rotate away
    A[0, 1:] = A[1:, 0]
    return A.astype(dtype)


def tridiagonal_matrix(d, e):
    return np.diag(d.astype(np.float64)) + np.diag(e.astype(np.float64), 1) + np.diag(e.astype(np.float64), -1)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 2e-4)])
@pytest.mark.parametrize("n", [2, 3, 150, 301])
def test_two_stage_reduction_keeps_the_spectrum_and_the_first_axis(n, dtype, tol):
    """T = Q' A Q with Q e1 = e1 (REML reflects y onto e1 before reducing): T's eigenvalues
    are A's, and e1' (T + d I)^-1 e1 = e1' (A + d I)^-1 e1; the same from both reductions.
    Only the lower triangle is read (REMLSpectrum updates only that one): NaN above it."""
    if tridiagonal.two_stage(dtype) is None:
        pytest.skip("scipy's LAPACK here has no sytrd_2stage (scipy not from its wheels)")
    A = symmetric(n, dtype, seed=n)
    exact = A.astype(np.float64)
    want = np.linalg.eigvalsh(exact)
    for reflectors in (False, True):
        lower = np.asfortranarray(np.where(np.tri(n, dtype=bool), A, np.nan).astype(dtype))
        d, e, q = tridiagonal.tridiagonalise(lower, reflectors=reflectors)
        assert (q is not None) == reflectors and d.dtype == e.dtype == dtype and e.shape == (n - 1,)
        T = tridiagonal_matrix(d, e)
        scale = np.abs(want).max()
        np.testing.assert_allclose(np.linalg.eigvalsh(T), want, rtol=0, atol=tol * scale)
        for delta in (0.5, 3.0):
            first = np.linalg.solve(T + delta * np.eye(n), np.eye(n)[0])[0]
            assert first == pytest.approx(np.linalg.solve(exact + delta * np.eye(n), np.eye(n)[0])[0], rel=tol * 10)


def test_two_stage_reduction_is_found_in_the_wheels_lapack():
    """scipy's wheels bundle an OpenBLAS with ssytrd_2stage and dsytrd_2stage; where scipy was
    built otherwise the one-stage reduction is used (the same results to rounding)."""
    if not tridiagonal.bundled_openblas():
        pytest.skip("scipy was not installed from its Linux wheels (no bundled OpenBLAS)")
    assert tridiagonal.two_stage(np.float32) is not None and tridiagonal.two_stage(np.float64) is not None


def test_the_two_stage_reduction_needs_a_fortran_ordered_matrix():
    if tridiagonal.two_stage(np.float64) is None:
        pytest.skip("scipy's LAPACK here has no sytrd_2stage (scipy not from its wheels)")
    with pytest.raises(ValueError, match="Fortran"):
        tridiagonal.tridiagonalise(np.ascontiguousarray(symmetric(5, np.float64)))
