"""Fuzz the argument checking of nfcl._core with random shapes, dtypes and values.

Run: python fuzz/fuzz_core.py [-max_total_time=180] [fuzz/corpus/core]
(needs ``pip install nfcl[fuzz]``). ``one_input`` is also called, without
atheris, by tests/test_fuzz_regressions.py on the seed corpus.

Each input picks one kernel and builds its arguments: mostly well formed
(small sizes), with one or more of them perturbed in shape, dtype, layout or
value. The binding must answer with ValueError, TypeError, OverflowError,
FloatingPointError or MemoryError (or succeed); a crash or any other
exception is a finding.
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _bytes import Bytes  # noqa: E402

EXPECTED = (ValueError, TypeError, OverflowError, FloatingPointError, MemoryError)
DTYPES = (np.float32, np.float64, np.int32, np.int64, np.uint8, np.int8)


def _array(fb: Bytes, shape, dtype, low=0, high=1):
    """A well-formed array, or (when the fuzz says so) a broken one."""
    mode = fb.int(0, 15)
    if mode == 1:  # wrong dtype
        dtype = fb.pick(DTYPES)
    elif mode == 2:  # wrong shape
        shape = tuple(fb.int(0, 6) for _ in range(fb.int(0, 3)))
    elif mode == 3 and len(shape) and shape[-1] > 1:  # not contiguous
        a = _array(Bytes(b""), shape[:-1] + (shape[-1] * 2,), dtype, low, high)
        return a[..., ::2]
    elif mode == 4:
        return None
    n = int(np.prod(shape)) if shape else 1
    if np.issubdtype(dtype, np.floating):
        vals = [
            fb.float() if fb.int(0, 7) == 0 else (fb.int(0, 2000) - 1000) / 500
            for _ in range(min(n, 64))
        ]
        a = np.resize(np.array(vals or [0.0], dtype=np.float64), n).astype(dtype)
    else:
        vals = [
            fb.int(low, high) if fb.int(0, 7) else fb.int(-5, 2**31 - 1)
            for _ in range(min(n, 64))
        ]
        info = np.iinfo(dtype)
        a = np.clip(np.resize(np.array(vals or [0], np.int64), n), info.min, info.max)
        a = a.astype(dtype)
    return a.reshape(shape)


def _cfg(fb: Bytes, V, C):
    kind = fb.pick(("transformer", "gru", "caser"))
    L = fb.int(1, 5)
    drop = fb.pick((0.0, 0.2, 0.99, 1.0, -0.1, float("nan")))
    if kind == "transformer":
        nh = fb.pick((1, 2, 3))
        return (kind, V, C, nh, fb.int(1, 2), L, fb.int(1, 8), drop, fb.int(0, 1))
    if kind == "gru":
        return (kind, V, C, fb.int(1, 8), fb.int(1, 2), L, drop)
    return (kind, V, C, fb.int(1, 4), fb.int(0, 3), fb.int(0, 3), L, drop)


def one_input(data: bytes) -> None:
    """Call one _core function with arguments built from ``data``."""
    from nfcl import _core

    fb = Bytes(data)
    which = fb.int(0, 8)
    V, C = fb.int(1, 12), fb.pick((1, 2, 4, 6, 8))
    B, T, N = fb.int(1, 3), fb.int(1, 5), fb.int(1, 6)
    f32, i32, u8 = np.float32, np.int32, np.uint8
    rowset = None
    if fb.int(0, 1):
        rowset = (
            _array(fb, (V,), u8, 0, 0),
            _array(fb, (V,), i32, 0, 0),
            _array(fb, (1,), np.int64, 0, 0),
        )
    try:
        if which == 0:
            cand = _array(fb, (fb.int(0, V),), i32, 1, V - 1) if fb.int(0, 1) else None
            _core.softmax_xent(
                _array(fb, (N, C), f32),
                _array(fb, (V, C), f32),
                cand,
                _array(fb, (N,), i32, 0, V - 1),
                fb.float(),
                _array(fb, (N, C), f32),
                _array(fb, (V, C), f32),
                rowset,
            )
        elif which == 1:
            _core.infonce(
                _array(fb, (B, T, C), f32),
                _array(fb, (V, C), f32),
                _array(fb, (B, T + 1), i32, 0, V - 1),
                _array(fb, (B, T + 1), u8, 0, 1),
                fb.float(),
                fb.int(-1, 2),
                fb.float(),
                _array(fb, (B, T, C), f32),
                _array(fb, (V, C), f32),
                rowset,
            )
        elif which == 2:
            ex = _array(fb, (N, fb.int(0, 3)), i32, 0, V - 1) if fb.int(0, 1) else None
            _core.topk(
                _array(fb, (N, C), f32), _array(fb, (V, C), f32), fb.int(-1, V + 1), ex
            )
        elif which == 3:
            cand = _array(fb, (fb.int(0, V),), i32, 1, V - 1) if fb.int(0, 1) else None
            _core.rank_targets(
                _array(fb, (N, C), f32),
                _array(fb, (V, C), f32),
                cand,
                _array(fb, (N,), i32, 0, V - 1),
            )
        elif which == 4:
            _core.sample_candidates(
                _array(fb, (N,), i32, 0, V - 1),
                fb.int(-1, V + 2),
                fb.int(-2, V + 2),
                fb.int(0, 2**32),
                fb.int(0, 9),
                _array(fb, (V,), u8, 0, 0),
            )
        elif which == 5:
            n = V * C + fb.int(0, 8)
            _core.adam_step(
                _array(fb, (n,), f32),
                _array(fb, (n,), f32),
                _array(fb, (n,), f32),
                _array(fb, (n,), f32, 0, 0),
                fb.int(-1, V + 1),
                fb.pick((C, 0, -1, C + 1)),
                rowset,
                fb.float(),
                fb.float(),
                fb.float(),
                fb.float(),
                fb.float(),
                fb.float(),
                fb.int(-1, 5),
            )
        elif which == 6:
            cfg = _cfg(fb, V, C)
            _core.enc_layout(cfg)
            np_, na, _ = _core.enc_sizes(cfg, B, T)
            params = _array(fb, (np_,), f32)
            _core.enc_forward(
                cfg,
                params,
                _array(fb, (na,), f32),
                _array(fb, (B, T), i32, 0, V - 1),
                _array(fb, (B, T, C), f32),
                fb.int(0, 99),
                fb.int(0, 99),
                bool(fb.int(0, 1)),
            )
        elif which == 7:
            cfg = _cfg(fb, V, C)
            np_, na, ns = _core.enc_sizes(cfg, B, T)
            params, acts = np.zeros(np_, f32), np.zeros(na, f32)
            items = _array(fb, (B, T), i32, 0, V - 1)
            _core.enc_init(cfg, params, 1)
            try:
                _core.enc_forward(
                    cfg, params, acts, items, np.zeros((B, T, C), f32), 1, 1, True
                )
            except EXPECTED:
                pass
            _core.enc_backward(
                cfg,
                params,
                _array(fb, (np_,), f32, 0, 0),
                acts,
                _array(fb, (ns,), f32),
                items,
                _array(fb, (B, T, C), f32),
                1,
                1,
                bool(fb.int(0, 1)),
                rowset,
            )
        else:
            _core.trunc_normal(
                _array(fb, (fb.int(0, 9),), f32),
                fb.float(),
                fb.int(0, 2**40),
                fb.int(0, 9),
            )
    except EXPECTED:
        pass


def main():
    import atheris

    import nfcl  # noqa: F401  (loads OpenBLAS before _core)

    # the C core has no libFuzzer coverage; the harness's own branches
    # (which kernel, which argument is broken how) guide the search
    atheris.instrument_all()
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
