"""Checkpoints: resume is bitwise, writes are atomic, bad files are refused."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import nfcl
from nfcl import checkpoint as ck
from nfcl import io, sessions
from nfcl.errors import InputError, NfclError
from nfcl.models import TrainingError

FIT = dict(batch_size=64, n_neg=50, w=0.5, loss="sampled", progress=False)


@pytest.fixture(scope="module")
def split():
    return sessions.leave_last_out(io.load_example())


def _sasrec(split, seed=3, **kw):
    return nfcl.SASRec(
        split.train.n_items, dim=8, heads=2, layers=1, dropout=0.3, seed=seed, **kw
    )


def _models(split):
    V = split.train.n_items
    return {
        "sasrec": lambda: _sasrec(split),
        "gru4rec": lambda: nfcl.GRU4Rec(V, dim=8, hidden=8, dropout=0.3, seed=3),
        "bert4rec": lambda: nfcl.BERT4Rec(
            V, dim=8, heads=2, layers=1, dropout=0.3, seed=3
        ),
    }


@pytest.mark.parametrize(
    "name, restore_best",
    [("sasrec", False), ("sasrec", True), ("gru4rec", True), ("bert4rec", False)],
)
def test_resume_is_bitwise_equal_to_a_straight_run(split, tmp_path, name, restore_best):
    make = _models(split)[name]
    args = dict(FIT, restore_best=restore_best)
    straight = make().fit(split.train, split.valid, epochs=3, **args)
    path = tmp_path / "run.npz"
    first = make().fit(split.train, split.valid, epochs=1, checkpoint=path, **args)
    resumed = make().fit(
        split.train, split.valid, epochs=2, checkpoint=path, resume=True, **args
    )
    assert first is not resumed
    np.testing.assert_array_equal(resumed.params, straight.params)
    assert resumed._opt["t"] == straight._opt["t"] and resumed._opt["epoch"] == 3
    np.testing.assert_array_equal(resumed._opt["m"], straight._opt["m"])
    key = "valid:MRR@10"
    assert [h[key] for h in resumed.history] == [h[key] for h in straight.history]


def test_checkpoint_file_layout_and_every_epoch_saved(split, tmp_path):
    path = tmp_path / "c.npz"
    m = _sasrec(split).fit(split.train, epochs=2, checkpoint=path, **FIT)
    with np.load(path, allow_pickle=False) as z:
        assert set(z.files) == {"header", "params", "m", "v"}
        header = json.loads(str(z["header"]))
        np.testing.assert_array_equal(z["params"], m.params)
    assert header["epoch"] == 2 and header["t"] == m._opt["t"]
    assert header["data_fingerprint"] == split.train.fingerprint()
    assert header["model"] == "SASRec" and header["config"] == m.config
    assert set(header["sha256"]) == {"params", "m", "v"}
    assert not [f for f in os.listdir(tmp_path) if f != "c.npz"]  # no temp files left


def _write_variant(path, out, edit_header=None, edit_arrays=None):
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: np.array(z[k]) for k in z.files}
    header = json.loads(str(arrays.pop("header")))
    if edit_header:
        edit_header(header)
    if edit_arrays:
        edit_arrays(arrays)
    np.savez(out, header=np.array(json.dumps(header)), **arrays)
    return out


def test_bad_checkpoints_raise_nfcl_error(split, tmp_path):
    path = tmp_path / "c.npz"
    _sasrec(split).fit(split.train, epochs=1, checkpoint=path, **FIT)
    raw = path.read_bytes()

    def resume(p, model=None, train=None, **kw):
        model = model or _sasrec(split)
        model.fit(
            train or split.train, epochs=1, checkpoint=p, resume=True, **dict(FIT, **kw)
        )

    def flip(arrays):
        arrays["m"][3] += 1.0

    cases = {
        "format version 99": _write_variant(
            path, tmp_path / "v.npz", lambda h: h.update(format_version=99)
        ),
        "checksum mismatch in 'm'": _write_variant(
            path, tmp_path / "s.npz", None, flip
        ),
        "do not match": _write_variant(
            path, tmp_path / "k.npz", None, lambda a: a.pop("v")
        ),
    }
    for match, p in cases.items():
        with pytest.raises(NfclError, match=match):
            resume(p)
    for cut in (0, 100, len(raw) // 2, len(raw) - 10):
        (tmp_path / "t.npz").write_bytes(raw[:cut])
        with pytest.raises(NfclError, match="not a readable nfcl checkpoint"):
            resume(tmp_path / "t.npz")
    with pytest.raises(NfclError, match="config"):
        resume(path, model=_sasrec(split, seed=4))
    with pytest.raises(NfclError, match="checkpoint of a SASRec, not a BERT4Rec"):
        resume(
            path,
            model=nfcl.BERT4Rec(
                split.train.n_items, dim=8, heads=2, layers=1, dropout=0.3, seed=3
            ),
        )
    other = sessions.leave_last_out(io.load_example()).train
    other.items[5] = 1 + other.items[5] % (other.n_items - 2)
    with pytest.raises(NfclError, match="other training data"):
        resume(path, train=other)
    with pytest.raises(NfclError, match="lr="):
        resume(path, lr=1e-3)
    with pytest.raises(NfclError, match="no checkpoint"):
        resume(tmp_path / "missing.npz")
    with pytest.raises(InputError, match="resume=True needs"):
        _sasrec(split).fit(split.train, epochs=1, resume=True, **FIT)
    assert path.read_bytes() == raw


def test_refuses_to_write_nan_and_keeps_the_old_file(split, tmp_path):
    path = tmp_path / "c.npz"
    m = _sasrec(split).fit(split.train, epochs=1, checkpoint=path, **FIT)
    raw = path.read_bytes()
    m.params[7] = np.inf
    with pytest.raises(NfclError, match="params holds NaN"):
        ck.save_checkpoint(m, path, split.train.fingerprint(), {})
    assert path.read_bytes() == raw and os.listdir(tmp_path) == ["c.npz"]


def test_interrupt_mid_epoch_keeps_last_step_and_epoch_checkpoint(
    split, tmp_path, monkeypatch
):
    path = tmp_path / "c.npz"
    m = _sasrec(split)
    steps_per_epoch = -(-int(np.sum(split.train.lengths >= 2)) // FIT["batch_size"])
    original = type(m)._train_step
    after = []

    def step(self, *a, **kw):
        if self._opt["t"] == steps_per_epoch + 2:  # the middle of epoch 2
            raise KeyboardInterrupt
        out = original(self, *a, **kw)
        after.append(self.params.copy())
        return out

    monkeypatch.setattr(type(m), "_train_step", step)
    with pytest.raises(KeyboardInterrupt):
        m.fit(split.train, epochs=3, checkpoint=path, **FIT)
    np.testing.assert_array_equal(m.params, after[-1])
    assert not np.any(m._opt["grads"])
    header, arrays = ck.read_checkpoint(path)
    assert header["epoch"] == 1 and header["t"] == steps_per_epoch
    np.testing.assert_array_equal(arrays["params"], after[steps_per_epoch - 1])


def test_nan_mid_training_raises_and_checkpoint_stays_good(
    split, tmp_path, monkeypatch
):
    path = tmp_path / "c.npz"
    m = _sasrec(split)
    original = type(m)._train_step
    epoch1 = {}

    def step(self, *a, **kw):
        if self._opt["epoch"] == 1 and not epoch1:
            epoch1["params"] = self.params.copy()
        if self._opt["epoch"] == 1 and self._opt["t"] == len(epoch1) + 11:
            self.weights["head_b"][0] = np.nan
        return original(self, *a, **kw)

    monkeypatch.setattr(type(m), "_train_step", step)
    with pytest.raises(TrainingError):
        m.fit(split.train, epochs=3, checkpoint=path, **FIT)
    header, arrays = ck.read_checkpoint(path)
    assert header["epoch"] == 1
    np.testing.assert_array_equal(arrays["params"], epoch1["params"])


KILLER = textwrap.dedent("""
    import sys, numpy as np, nfcl
    from nfcl import checkpoint as ck, io, sessions
    train = sessions.leave_last_out(io.load_example()).train
    m = nfcl.SASRec(train.n_items, dim=32, heads=2, layers=2, seed=0)
    m.fit(train, epochs=1, n_neg=20, progress=False)
    fp = train.fingerprint()
    i = 0
    while True:
        m.params[0] = i  # each write differs
        m._opt["epoch"] = i
        ck.save_checkpoint(m, sys.argv[1], fp, {})
        if i == 0:
            print("ready", flush=True)
        i += 1
""")


def test_sigkill_while_writing_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "c.npz"
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    for delay in (0.05, 0.13, 0.31):
        proc = subprocess.Popen(
            [sys.executable, "-c", KILLER, str(path)], stdout=subprocess.PIPE, env=env
        )
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        header, arrays = ck.read_checkpoint(path)
        assert arrays["params"][0] == header["epoch"]
        assert header["epoch"] >= 1 or delay == 0.05


def test_same_seed_same_data_is_bitwise_repeatable(split):
    runs = [_sasrec(split).fit(split.train, epochs=2, **FIT).params for _ in range(2)]
    np.testing.assert_array_equal(runs[0], runs[1])


def _threads_run(split, n, layers=2):
    old = nfcl.get_num_threads()
    nfcl.set_num_threads(n)
    try:
        m = nfcl.SASRec(
            split.train.n_items, dim=64, heads=2, layers=layers, dropout=0.3, seed=5
        )
        return m.fit(split.train, epochs=1, **FIT).params
    finally:
        nfcl.set_num_threads(old)


def test_two_threads_are_bitwise_repeatable(split):
    np.testing.assert_array_equal(_threads_run(split, 2), _threads_run(split, 2))


def test_one_and_two_threads_are_bitwise_equal(split):
    """The core splits products by shape, never by thread count (blas.c)."""
    a, b = _threads_run(split, 1), _threads_run(split, 2)
    np.testing.assert_array_equal(a, b)
