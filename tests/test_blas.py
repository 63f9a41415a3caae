"""The core's matrix product (csrc/blas.c) against NumPy in float64.

nfcl_sgemm runs a product whole, in row blocks, or in slices of K whose
partial products are added in a fixed order; which one depends on the
shape alone. Each shape below is picked to take one of those paths, for
every transposition and for beta 0 and 1."""
import numpy as np
import pytest

import nfcl
from nfcl import _core

# (M, N, K, path): the path blas.c takes for that shape
SHAPES = [
    (37, 29, 53, "whole"),          # below 2^24 multiply-adds
    (1000, 130, 160, "rows"),       # 20.8M multiply-adds, 15 row blocks -> 8
    (64, 64, 4096, "k-slices"),     # weight-gradient shape: 4 slices
    (192, 64, 2100, "k-slices"),    # 2 slices (the buffer holds one 192x64)
    (64, 256, 12800, "k-slices"),   # 2 slices
    (130, 130, 1100, "rows"),       # output too big for the K buffer
]


def _expected(a, b, c, ta, tb, alpha, beta):
    A = a.astype(np.float64).T if ta else a.astype(np.float64)
    B = b.astype(np.float64).T if tb else b.astype(np.float64)
    return alpha * (A @ B) + beta * c.astype(np.float64)


@pytest.mark.parametrize("M, N, K, path", SHAPES)
@pytest.mark.parametrize("ta, tb", [(0, 0), (0, 1), (1, 0), (1, 1)])
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_matmul_matches_numpy(M, N, K, path, ta, tb, beta):
    rng = np.random.default_rng(M * 7 + N * 3 + K + 11 * ta + 5 * tb)
    a = rng.standard_normal((K, M) if ta else (M, K), dtype=np.float32)
    b = rng.standard_normal((N, K) if tb else (K, N), dtype=np.float32)
    c = rng.standard_normal((M, N), dtype=np.float32)
    if beta == 0.0:
        c[0, 0] = np.nan  # beta 0 must overwrite, never read, c
    want = _expected(a, b, np.nan_to_num(c), ta, tb, 0.5, beta)
    _core.matmul(a, b, c, ta, tb, 0.5, beta)
    # float32 sums of K products of unit normals: error ~ sqrt(K) * eps
    np.testing.assert_allclose(c, want, rtol=0, atol=4e-6 * np.sqrt(K) * 4)


@pytest.mark.parametrize("M, N, K, path", SHAPES)
def test_matmul_same_bits_with_one_and_two_threads(M, N, K, path):
    rng = np.random.default_rng(5)
    a = rng.standard_normal((K, M), dtype=np.float32)
    b = rng.standard_normal((K, N), dtype=np.float32)
    out = []
    before = nfcl.get_num_threads()
    try:
        for threads in (1, 2):
            nfcl.set_num_threads(threads)
            c = np.ones((M, N), np.float32)
            _core.matmul(a, b, c, 1, 0, 1.0, 1.0)
            out.append(c)
    finally:
        nfcl.set_num_threads(before)
    np.testing.assert_array_equal(out[0], out[1])


def test_matmul_refuses_shapes_that_do_not_chain():
    a = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="do not chain"):
        _core.matmul(a, np.zeros((5, 2), np.float32), np.zeros((3, 2), np.float32),
                     0, 0, 1.0, 0.0)
    with pytest.raises(TypeError, match="dtype"):
        _core.matmul(a.astype(np.float64), a.T.copy(), np.zeros((3, 3), np.float32),
                     0, 0, 1.0, 0.0)
