"""Leaks, measured: reference counts of inputs, Python allocations and RSS
stay flat over many calls into the core, on success and on error paths."""
import gc
import sys
import tracemalloc

import numpy as np
import pytest

import nfcl
from nfcl import _core, io, sessions


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096
    except OSError:
        pytest.skip("no /proc/self/statm on this system")


def test_core_calls_leave_reference_counts_unchanged():
    rng = np.random.default_rng(0)
    V, C, N = 50, 8, 6
    q = rng.standard_normal((N, C)).astype(np.float32)
    emb = rng.standard_normal((V, C)).astype(np.float32)
    targets = rng.integers(1, V, N).astype(np.int32)
    seen = np.zeros(V, np.uint8)
    dq, demb = np.zeros_like(q), np.zeros_like(emb)
    bad = np.zeros((N, C), np.float64)
    arrays = (q, emb, targets, seen, dq, demb, bad)
    before = [sys.getrefcount(a) for a in arrays]
    for _ in range(200):
        cand, tidx = _core.sample_candidates(targets, V, 10, 0, 1, seen)
        _core.softmax_xent(q, emb, cand, tidx, 1.0, dq, demb, None)
        _core.rank_targets(q, emb, None, targets)
        _core.topk(q, emb, 5, None)
        for args in ((bad, emb, None, targets), (q, emb, None, targets + V)):
            with pytest.raises((TypeError, ValueError)):
                _core.rank_targets(*args)
    del args  # the loop variable itself holds q and emb
    assert [sys.getrefcount(a) for a in arrays] == before


def test_fit_and_score_memory_stays_flat():
    split = sessions.leave_last_out(io.load_example())
    seqs = [split.test.inputs[i, :split.test.lengths[i]] for i in range(64)]

    def cycle():
        m = nfcl.SASRec(split.train.n_items, dim=16, heads=2, layers=1, seed=0)
        m.fit(split.train, epochs=1, progress=False)
        m.score(seqs)
        m.recommend(seqs, k=5)
        m.evaluate(split.test, protocols="sampled")

    for _ in range(3):  # warm up caches and allocator pools
        cycle()
    gc.collect()
    rss0 = _rss_bytes()
    tracemalloc.start()
    snap0 = tracemalloc.take_snapshot()
    for _ in range(15):
        cycle()
    gc.collect()
    grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(snap0, "filename"))
    tracemalloc.stop()
    rss1 = _rss_bytes()
    assert grown < 512 * 1024, f"Python allocations grew by {grown} bytes over 15 cycles"
    assert rss1 - rss0 < 24 * 2**20, f"RSS grew by {(rss1 - rss0) / 2**20:.1f} MiB"
