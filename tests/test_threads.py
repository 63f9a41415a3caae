"""Threads: the same seed gives bitwise the same weights on 1 and 2 threads,
for every encoder, and oversubscribing warns."""
import os

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
