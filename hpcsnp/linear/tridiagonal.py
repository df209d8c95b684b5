"""A symmetric matrix's tridiagonal form, the step of REML (``REMLSpectrum``) that costs.

LAPACK reduces a symmetric matrix to tridiagonal form in one stage (``?sytrd``: half its
arithmetic in matrix-vector products, limited by memory bandwidth) or in two
(``?sytrd_2stage``, LAPACK 3.7: to a band by blocked matrix-matrix products, then the band to
tridiagonal by bulge chasing).  At n = 4,500 on one core the two-stage reduction takes a third
to a half of the one-stage time; it does not return the reflectors, which REML does not need.
Both keep the first axis (Q e1 = e1, lower triangle), which REML's Householder reflection of y
relies on.  scipy wraps only ``?sytrd``, so the two-stage routine is called through ctypes from
the OpenBLAS that scipy's wheels bundle; where scipy was built otherwise (no such library),
``two_stage`` is None and the one-stage routine is used: the same tridiagonal form up to
rounding.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os

import numpy as np

_INT = ctypes.c_int  # scipy's bundled OpenBLAS has 32-bit LAPACK integers (numpy's ILP64 one is not used)


def bundled_openblas() -> list[str]:
    """The OpenBLAS libraries with 32-bit LAPACK integers that scipy's Linux wheels bundle
    (none where scipy was built otherwise)."""
    import scipy

    libs = os.path.join(os.path.dirname(os.path.dirname(scipy.__file__)), "scipy.libs")
    return [p for p in sorted(glob.glob(os.path.join(libs, "libscipy_openblas*.so*")))
            if "openblas64" not in os.path.basename(p)]


@functools.cache
def two_stage(dtype) -> ctypes._CFuncPtr | None:
    """LAPACK's ``ssytrd_2stage`` / ``dsytrd_2stage`` from scipy's bundled OpenBLAS, or None."""
    char = {np.dtype(np.float32): "s", np.dtype(np.float64): "d"}[np.dtype(dtype)]
    for path in bundled_openblas():
        try:
            return getattr(ctypes.CDLL(path), f"scipy_{char}sytrd_2stage_")
        except (OSError, AttributeError):
            continue
    return None


def tridiagonalise(A: np.ndarray, reflectors: bool = False):
    """(d, e, reflectors) of the lower triangle of the symmetric float32 or float64 matrix A
    (Fortran order; overwritten): T = Q' A Q with diagonal d and off-diagonal e, Q e1 = e1.

    ``reflectors``: also return (refl, tau), Q's Householder vectors as LAPACK ``?sytrd``
    stores them, from the one-stage reduction; otherwise the two-stage reduction where there
    is one, and None."""
    from scipy.linalg import lapack

    n = A.shape[0]
    routine = None if reflectors else two_stage(A.dtype)
    if routine is None:
        prefix = "s" if A.dtype == np.float32 else "d"
        sytrd, lwork = getattr(lapack, f"{prefix}sytrd"), getattr(lapack, f"{prefix}sytrd_lwork")
        refl, d, e, tau, info = sytrd(A, lower=1, lwork=int(lwork(n, lower=1)[0]), overwrite_a=1)
        if info != 0:
            raise np.linalg.LinAlgError(f"sytrd failed (info {info})")
        return d, e, (refl, tau) if reflectors else None
    if not A.flags.f_contiguous:
        raise ValueError("tridiagonalise needs a Fortran-ordered matrix")
    d, e, tau = (np.empty(max(k, 1), A.dtype) for k in (n, n - 1, n - 1))
    info = _INT(0)

    def call(hous, lhous, work, lwork):
        ptr = lambda x: x.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
        routine(b"N", b"L", ctypes.byref(_INT(n)), ptr(A), ctypes.byref(_INT(n)), ptr(d), ptr(e), ptr(tau),
                ptr(hous), ctypes.byref(_INT(lhous)), ptr(work), ctypes.byref(_INT(lwork)), ctypes.byref(info),
                ctypes.c_size_t(1), ctypes.c_size_t(1))  # the two character arguments' lengths
        if info.value != 0:
            raise np.linalg.LinAlgError(f"sytrd_2stage failed (info {info.value})")

    hous, work = np.empty(1, A.dtype), np.empty(1, A.dtype)
    call(hous, -1, work, -1)  # workspace query: sizes as floats (float32 rounds above 2^24: a margin)
    hous, work = (np.empty(int(x[0]) + int(x[0]) // 1000 + 8, A.dtype) for x in (hous, work))
    call(hous, len(hous), work, len(work))
    return d[:n], e[:n - 1], None
