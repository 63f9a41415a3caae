"""nfcl.distributed: data-parallel training and evaluation over MPI.

The MPI runs launch ``mpiexec -n 2`` and ``-n 3`` on tests/mpi/run_cases.py
(one launch each, shared by the tests) and compare what rank 0 wrote with
the same fit and evaluate in this process. They skip when mpi4py or an
mpiexec is missing. Open MPI's mpiexec gets --oversubscribe (CI has two
cores) and, as root, its run-as-root variables; MPICH's needs neither.

What must hold (docs/distributed.md):
- weights bitwise equal on every rank after every step;
- with dropout 0, the weights after K steps within float32 round-off of one
  process taking the same K steps on the whole batches;
- evaluation metrics bitwise equal to one process, for 2 and 3 ranks.
"""
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "mpi"))
import cases  # noqa: E402

from nfcl import distributed  # noqa: E402
from nfcl.errors import NfclError  # noqa: E402

# after 6 Adam steps (lr 5e-3) the ranks' weights differ from one process by
# round-off only (measured: <= 4e-6); a wrong scale or a lost row moves them
# by about lr per step (the dropout case, different masks: 5e-2)
ATOL = 5e-5

TRAIN_2 = ["sasrec-sampled", "sasrec-full", "gru4rec-sampled", "gru4rec-full",
           "bert4rec-sampled", "caser-full"]
TRAIN_3 = ["sasrec-sampled", "gru4rec-full"]


# ----------------------------------------------------------------------
# launching

def _mpiexec():
    """[mpiexec, flags...] and its environment, or None (skip)."""
    if importlib.util.find_spec("mpi4py") is None:
        return None
    exe = Path(sys.executable).with_name("mpiexec")
    exe = str(exe) if exe.exists() else shutil.which("mpiexec")
    if exe is None:
        return None
    version = subprocess.run([exe, "--version"], capture_output=True, text=True,
                             timeout=60).stdout
    env = dict(os.environ, NFCL_NUM_THREADS="1")
    cmd = [exe]
    if "Open MPI" in version or "OpenRTE" in version:
        cmd.append("--oversubscribe")
        if os.geteuid() == 0:
            env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return cmd, env


MPI = _mpiexec()
needs_mpi = pytest.mark.skipif(MPI is None, reason="mpi4py or mpiexec is not installed")


def _launch(n, args, cwd):
    cmd, env = MPI
    r = subprocess.run([*cmd, "-n", str(n), *args], capture_output=True, text=True,
                       timeout=300, cwd=cwd, env=env)
    assert r.returncode == 0, f"mpiexec -n {n} failed:\n{r.stdout}\n{r.stderr}"
    return r


def _run_cases(n, names, folder):
    out = folder / f"ranks{n}.npz"
    _launch(n, [sys.executable, "-m", "mpi4py", str(HERE / "mpi" / "run_cases.py"),
                str(out), *names], folder)
    with np.load(out) as z:
        report = json.loads(str(z["report"]))
        arrays = {k: z[k] for k in z.files if k != "report"}
    for name, rep in report.items():
        assert len(rep.get("digests", rep.get("errors"))) == n, (
            f"{name}: {n} ranks expected; mpi4py may use another MPI than mpiexec")
    return report, arrays


@pytest.fixture(scope="module")
def ranks2(tmp_path_factory):
    names = TRAIN_2 + ["sasrec-dropout", "evaluate", "nan-on-rank-1", "refusals",
                       "checkpoint"]
    return _run_cases(2, names, tmp_path_factory.mktemp("mpi2"))


@pytest.fixture(scope="module")
def ranks3(tmp_path_factory):
    names = TRAIN_3 + ["again:sasrec-sampled", "evaluate"]
    return _run_cases(3, names, tmp_path_factory.mktemp("mpi3"))


@pytest.fixture(scope="module")
def data():
    return cases.split()


def _single(name, data):
    m = cases.model(name, data)
    return m.fit(data.train, data.valid, **cases.fit_args(name))


# ----------------------------------------------------------------------
# training over 2 and 3 ranks against one process

def _check_training(name, data, report, arrays):
    rep = report[name]
    assert len(set(rep["digests"])) == 1, "the ranks' weights differ"
    one = _single(name, data)
    params = arrays[f"{name}/params"]
    assert rep["step"] == one._opt["t"] == 6
    np.testing.assert_allclose(params, one.params, rtol=0, atol=ATOL)

    # the history (the whole batch's losses and anchors) and the validation
    h, h1 = rep["history"][0], one.history[0]
    assert h["anchors"] == h1["anchors"] > 0
    for key in ("loss", "rec", "cl"):
        assert h[key] == pytest.approx(h1[key], rel=1e-5)
    assert h["valid:MRR@10"] == pytest.approx(h1["valid:MRR@10"], abs=0.01)

    # the ranks' metrics are those one process gets from the same weights
    same = cases.model(name, data)
    same.params[:] = params
    assert rep["metrics"] == same.evaluate(data.test)


@needs_mpi
@pytest.mark.parametrize("name", TRAIN_2)
def test_two_ranks_train_like_one_process(name, data, ranks2):
    _check_training(name, data, *ranks2)


@needs_mpi
@pytest.mark.parametrize("name", TRAIN_3)
def test_three_uneven_ranks_train_like_one_process(name, data, ranks3):
    # the last batch of 40 rows splits 14/13/13, the others 64 each
    _check_training(name, data, *ranks3)


@needs_mpi
def test_a_run_on_the_same_ranks_is_bitwise_reproducible(ranks3):
    report, arrays = ranks3
    assert report["again:sasrec-sampled"]["digests"] == report["sasrec-sampled"]["digests"]
    np.testing.assert_array_equal(arrays["again:sasrec-sampled/params"],
                                  arrays["sasrec-sampled/params"])


@needs_mpi
def test_dropout_masks_are_per_rank_but_weights_stay_equal(data, ranks2):
    report, arrays = ranks2
    rep = report["sasrec-dropout"]
    assert len(set(rep["digests"])) == 1
    params = arrays["sasrec-dropout/params"]
    assert np.all(np.isfinite(params))
    # other masks than one process: the tolerance above tells the two apart
    assert np.abs(params - _single("sasrec-dropout", data).params).max() > 20 * ATOL


# ----------------------------------------------------------------------
# evaluation, failures and refusals

@needs_mpi
@pytest.mark.parametrize("n", [2, 3])
def test_metrics_are_bitwise_those_of_one_process(n, data, ranks2, ranks3):
    report, arrays = {2: ranks2, 3: ranks3}[n]
    m = cases.model("sasrec-sampled", data)
    m.fit(data.train, epochs=1, batch_size=cases.BATCH, n_neg=50, progress=False)
    np.testing.assert_array_equal(arrays["evaluate/params"], m.params)
    expected = m.evaluate(data.test)
    assert report["evaluate"]["metrics"] == expected
    assert 0 < expected["full:HR@20"] < 1


@needs_mpi
def test_nan_on_one_rank_stops_every_rank_at_the_same_step(ranks2):
    rep = ranks2[0]["nan-on-rank-1"]
    assert len(set(rep["digests"])) == 1
    assert rep["step"] == 2 and all(rep["grads_zero"])
    first, second = rep["errors"]
    assert first.startswith("step 3:") and "1 of 2 ranks" in first
    assert second.startswith("step 3: the next-item loss is NaN")


@needs_mpi
def test_resume_from_the_checkpoint_of_rank_0_continues_bit_for_bit(ranks2):
    rep = ranks2[0]["checkpoint"]
    assert len(set(rep["digests"])) == 1
    assert rep["digests"] == rep["straight"]
    assert [h["epoch"] for h in rep["history"]] == [1, 2]


@needs_mpi
def test_reference_variant_and_unequal_models_are_refused_on_every_rank(ranks2):
    for errors in ranks2[0]["refusals"]["errors"]:
        assert "contrastive='reference' is not available" in errors["reference"]
        assert "ranks [1] hold another model" in errors["other-seed"]
        assert "rank 1 was given other fit arguments" in errors["other-epochs"]
        assert "epochs: 2 vs 1" in errors["other-epochs"]


# ----------------------------------------------------------------------
# the command line

@needs_mpi
def test_mpirun_nfcl_run_prints_and_writes_once(tmp_path):
    nfcl_exe = Path(sys.executable).with_name("nfcl")
    cmd = [str(nfcl_exe)] if nfcl_exe.exists() else [sys.executable, "-m", "nfcl"]
    args = ["run", "--epochs", "1", "--seeds", "1", "--dim", "16", "--heads", "2",
            "--layers", "1", "--dropout", "0", "--n-neg", "50", "--no-progress"]
    r = _launch(2, [*cmd, *args, "--out", str(tmp_path / "two")], tmp_path)
    assert r.stdout.count("wrote ") == 1 and r.stdout.count("data: ") == 1
    assert r.stdout.count("sasrec   +term") == 1
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert not list((tmp_path / "two").glob(".nfcl-*"))

    one_run = subprocess.run([*cmd, *args, "--out", str(tmp_path / "one")],
                             capture_output=True, text=True, timeout=300)
    assert one_run.returncode == 0, one_run.stderr
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    for a, b in zip(two["runs"], one["runs"], strict=True):
        assert (a["model"], a["variant"]) == (b["model"], b["variant"])
        for key, value in b.items():
            if ":" in key and np.isfinite(value):  # a metric
                assert a[key] == pytest.approx(value, abs=0.01), key


@needs_mpi
def test_mpirun_nfcl_run_error_ends_every_rank(tmp_path):
    cmd, env = MPI
    r = subprocess.run([*cmd, "-n", "2", sys.executable, "-m", "nfcl", "run", "--data",
                        str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2
    # every rank fails on the file; whichever aborts first ends the others,
    # so the message may come from either rank
    assert re.search(r"nfcl: error \(rank [01]\)", r.stderr), r.stderr
    assert "missing.csv" in r.stderr


# ----------------------------------------------------------------------
# without MPI: the parts' scaling, and the launch detection

@pytest.mark.parametrize("name", ["sasrec-sampled", "bert4rec-sampled", "caser-full"])
def test_gradients_of_the_parts_sum_to_the_whole_batch(name, data):
    """What every rank computes, summed in one process: the same gradient
    and the same touched rows as the whole batch."""
    from nfcl.sessions import training_batches
    rng = np.random.default_rng(0)
    items_ext, skips = next(training_batches(data.train, 50, 8, rng))
    args = dict(w=0.5, tau=0.1, variant=0, loss=cases.CASES[name][2]["loss"], n_neg=50)
    whole, parts = cases.model(name, data), cases.model(name, data)
    for m in (whole, parts):
        m._init_optimizer()
    batch = whole._make_batch(items_ext, skips, 1)
    out = whole._gradients(batch, 1, **args)
    anchors = 0
    for lo, hi in ((0, 17), (17, 17), (17, 50)):  # an empty part too
        part = dict(lo=lo, hi=hi)
        parts._gradients(batch, 1, part=part, **args)
        assert part["n_rec"] == int((batch["targets"] > 0).sum())
        assert part["anchors"] == out["anchors"] > 0
        anchors += part["anchors_part"]
    assert anchors == out["anchors"]
    np.testing.assert_allclose(parts._opt["grads"], whole._opt["grads"], rtol=0,
                               atol=1e-6 * np.abs(whole._opt["grads"]).max())

    def touched(m):
        rows, count = m._opt["rowset"][1], m._opt["rowset"][2][0]
        return set(rows[:count].tolist())
    assert touched(parts) == touched(whole)


def test_launch_detection_reads_the_launchers_environment(monkeypatch):
    for var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE", "NFCL_MPI"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.launched_size() == 1
    assert distributed.launched() is None
    monkeypatch.setenv("PMI_SIZE", "4")
    assert distributed.launched_size() == 4
    monkeypatch.setenv("NFCL_MPI", "0")
    assert distributed.launched() is None
    monkeypatch.setenv("NFCL_MPI", "")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # as if not installed
    with pytest.raises(NfclError, match=r"needs mpi4py.*nfcl\[mpi\]"):
        distributed.launched()


@pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None,
                    reason="mpi4py is not installed")
def test_a_launcher_of_another_mpi_is_a_clear_error(tmp_path):
    """A launcher's variable (MVAPICH's, which MPICH and Open MPI ignore)
    says 3 processes, MPI sees 1: nfcl run stops instead of running 3
    copies of the whole job."""
    env = dict(os.environ, MV2_COMM_WORLD_SIZE="3")
    r = subprocess.run([sys.executable, "-m", "nfcl", "run", "--epochs", "1", "--seeds", "1",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=120,
                       env=env)
    assert r.returncode == 2 and "the launcher started 3 processes, but MPI sees 1" in r.stderr
    assert not (tmp_path / "results.json").exists()


def test_import_nfcl_does_not_import_mpi4py():
    code = ("import sys, nfcl, nfcl.cli, nfcl.distributed; "
            "print('mpi4py' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
