"""The core's softmax exp, GRU gate functions and float mode (csrc/fastmath.h).

nfcl_exp_nonpos replaces libm's exp in the softmax kernels so their loops
vectorise; it is checked here against libm over every float it can see. The
core flushes subnormals to zero during its calls and must hand the caller's
float mode back untouched."""
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from nfcl import _core

ROOT = Path(__file__).resolve().parents[1]


def _run_check(tmp_path, name):
    """Build tests/c/<name>.c against csrc/fastmath.h, run it, return stdout."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    exe = tmp_path / name
    subprocess.run(["gcc", "-std=c11", "-O2", "-fno-trapping-math", "-fno-math-errno",
                    f"-I{ROOT / 'csrc'}", str(ROOT / f"tests/c/{name}.c"), "-lm",
                    "-o", str(exe)], check=True, capture_output=True, timeout=120)
    return subprocess.run([str(exe)], capture_output=True, text=True, timeout=300).stdout


def test_exp_is_within_one_ulp_of_libm(tmp_path):
    out = _run_check(tmp_path, "exp_accuracy")
    _, max_ulp, _, zeros_ok = out.split()
    assert float(max_ulp) < 1.0, out
    assert zeros_ok == "1", out


def test_gru_gates_are_within_three_ulp_of_libm(tmp_path):
    """nfcl_sigmoid and nfcl_tanh, the GRU's gate functions, against double
    libm over 36 M floats of [-90, 90] (tests/c/gate_accuracy.c)."""
    out = _run_check(tmp_path, "gate_accuracy")
    _, sig_ulp, _, tanh_ulp, _, ends_ok = out.split()
    assert float(sig_ulp) < 3.0, out
    assert float(tanh_ulp) < 3.0, out
    assert ends_ok == "1", out


def _xent(q, emb, tgt):
    V, C = emb.shape
    dq, demb = np.zeros_like(q), np.zeros_like(emb)
    rs = (np.zeros(V, np.uint8), np.zeros(V, np.int32), np.zeros(1, np.int64))
    loss = _core.softmax_xent(q, emb, None, tgt, 1.0, dq, demb, rs)
    return loss, dq, demb


def test_far_logits_get_exactly_zero_probability_and_caller_mode_survives():
    # one query, 3 items: logits 0, -50, -100 relative to the max. e^-100 is
    # below the normal float range: its gradient entry must be exactly 0.
    C = 4
    emb = np.zeros((4, C), np.float32)
    emb[1, 0], emb[2, 0], emb[3, 0] = 100.0, 50.0, 0.0
    q = np.array([[1.0, 0, 0, 0]], np.float32)
    loss, dq, demb = _xent(q, emb, np.array([0], np.int32))
    p = np.exp(np.array([0.0, -50.0, -100.0]))
    p /= p.sum()
    assert loss == pytest.approx(-np.log(p[0]), rel=1e-6)
    assert demb[3].tolist() == [0.0] * C  # probability e^-100 flushed
    assert demb[2, 0] == pytest.approx(p[1], rel=1e-5)

    # NumPy arithmetic after the call still produces subnormals: the core
    # restored the caller's float mode (no FTZ/DAZ leak into Python)
    tiny = np.float32(1e-38) * np.float32(0.25)
    assert tiny != 0 and tiny < np.finfo(np.float32).tiny


def test_softmax_matches_a_float64_twin_on_wide_rows():
    rng = np.random.default_rng(5)
    N, C, V = 300, 16, 5000
    q = rng.standard_normal((N, C)).astype(np.float32) * 3
    emb = rng.standard_normal((V, C)).astype(np.float32) * 3
    tgt = rng.integers(-1, V - 1, N).astype(np.int32)
    loss, dq, demb = _xent(q, emb, tgt)

    z = q.astype(np.float64) @ emb[1:].astype(np.float64).T
    rows = tgt >= 0
    z = z[rows]
    lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    ref_loss = (lse - z[np.arange(rows.sum()), tgt[rows]]).mean()
    G = np.exp(z - lse[:, None])
    G[np.arange(rows.sum()), tgt[rows]] -= 1
    G /= rows.sum()
    assert loss == pytest.approx(ref_loss, rel=2e-6)
    np.testing.assert_allclose(dq[rows], G @ emb[1:].astype(np.float64), rtol=0,
                               atol=1e-5 * np.abs(G @ emb[1:]).max())
    assert np.all(dq[~rows] == 0)
    np.testing.assert_allclose(demb[1:], G.T @ q[rows].astype(np.float64), rtol=0,
                               atol=1e-5 * np.abs(G.T @ q[rows]).max())
