"""Threads: the same seed gives bitwise the same weights on 1 and 2 threads,
for every encoder, and oversubscribing warns."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import nfcl
from nfcl import io, sessions


@pytest.fixture(scope="module")
def split():
    return sessions.leave_last_out(io.load_example())


def _train(split, cls, threads, **kw):
    before = nfcl.get_num_threads()
    nfcl.set_num_threads(threads)
    try:
        m = cls(split.train.n_items, seed=3, dropout=0.2, **kw)
        return m.fit(split.train, split.valid, epochs=2, loss="full", batch_size=128,
                     progress=False).params
    finally:
        nfcl.set_num_threads(before)


@pytest.mark.parametrize("cls, kw", [
    (nfcl.SASRec, dict(dim=64, heads=2)),
    (nfcl.BERT4Rec, dict(dim=64, heads=2)),
    (nfcl.GRU4Rec, dict(dim=64, hidden=64)),
    (nfcl.Caser, dict(dim=64)),
])
def test_one_and_two_threads_give_identical_weights(split, cls, kw):
    np.testing.assert_array_equal(_train(split, cls, 1, **kw), _train(split, cls, 2, **kw))


def test_thread_count_is_set_and_checked():
    before = nfcl.get_num_threads()
    try:
        nfcl.set_num_threads(1)
        assert nfcl.get_num_threads() == 1
        with pytest.raises(ValueError, match="positive int"):
            nfcl.set_num_threads(0)
        with pytest.warns(RuntimeWarning, match="oversubscribing"):
            nfcl.set_num_threads((os.cpu_count() or 1) * 4 + 1)
    finally:
        nfcl.set_num_threads(before)


def _run(script: str) -> subprocess.CompletedProcess:
    """Run a script in a fresh interpreter: a hang or crash fails the test
    instead of taking pytest down."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)],
                          capture_output=True, text=True, timeout=120)


def test_small_core_calls_work_in_a_forked_child():
    """A child forked after 2-thread work makes small core calls (libgomp's
    pool does not survive fork, so small calls must not open a parallel
    region)."""
    res = _run("""
        import os, numpy as np, nfcl
        from nfcl import _core
        nfcl.set_num_threads(2)
        a = np.ones((600, 600), np.float32); c = np.zeros_like(a)
        _core.matmul(a, a, c, 0, 0, 1.0, 0.0)       # big enough for both threads
        pid = os.fork()
        if pid == 0:
            s = np.ones((4, 4), np.float32); o = np.zeros_like(s)
            _core.matmul(s, s, o, 0, 0, 1.0, 0.0)
            _core.trunc_normal(np.zeros(8, np.float32), 0.02, 1, 0)
            os._exit(0 if o[0, 0] == 4.0 else 3)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "0", res.stdout


def test_split_products_run_on_a_small_thread_stack():
    """The K-slice path keeps its partial products on the heap, so a Python
    thread with a 64 KB stack can run one."""
    res = _run("""
        import threading, numpy as np
        from nfcl import _core
        a = np.ones((4096, 128), np.float32); c = np.zeros((128, 128), np.float32)
        out = []
        def work():
            _core.matmul(a, a, c, 1, 0, 1.0, 0.0)   # 128x128x4096: K slices
            out.append(float(c[0, 0]))
        threading.stack_size(64 * 1024)
        t = threading.Thread(target=work); t.start(); t.join()
        print(out)
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[4096.0]", res.stdout
