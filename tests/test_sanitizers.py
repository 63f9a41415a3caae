"""The C core under AddressSanitizer and UBSan: a few steps of every encoder and loss.

Builds nfcl._core with NFCL_SANITIZE=1 into a temporary folder (from a copy of
csrc/, setup.py and pyproject.toml) and runs a short script in a subprocess
with libasan preloaded; any sanitizer report fails the test. Skips cleanly
without gcc or libasan.
"""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import numpy as np
    import nfcl
    from nfcl import io, sessions
    from nfcl.sessions import training_batches

    split = sessions.leave_last_out(io.load_example())
    train, V = split.train, split.train.n_items
    models = [
        nfcl.SASRec(V, dim=8, heads=2, layers=2, seed=1),
        nfcl.GRU4Rec(V, dim=8, hidden=6, layers=2, seed=1),
        nfcl.Caser(V, dim=8, window=3, n_h=2, n_v=2, seed=1),
        nfcl.BERT4Rec(V, dim=8, heads=2, layers=1, seed=1),
    ]
    runs = [(m, loss, variant) for m in models for loss, variant in
            (("sampled", 0), ("full", 1))]
    for m, loss, variant in runs:
        m._opt = None
        m._init_optimizer()
        rng = np.random.default_rng(0)
        for i, (items, skips) in enumerate(training_batches(train, 16, m.max_len, rng)):
            if i == 3:
                break
            m._train_step(items, skips, lr=1e-3, w=0.5, tau=0.1, variant=variant,
                          loss=loss, n_neg=30, clip=5.0, weight_decay=0.01)
        m.evaluate(split.test, n_neg=50)
        m.recommend(split.test, k=5, exclude_seen=True)
    print("sanitized run ok", nfcl._core.__file__)
""")

CANARY = textwrap.dedent("""
    import ctypes
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    ctypes.memmove(libc.malloc(16), ctypes.create_string_buffer(64), 64)
""")


def _asan_lib():
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not found")
    out = subprocess.run(
        [gcc, "-print-file-name=libasan.so"], capture_output=True, text=True
    ).stdout.strip()
    if not out or not os.path.isabs(out) or not os.path.exists(out):
        pytest.skip("libasan.so not found")
    return out


def test_core_is_clean_under_asan_and_ubsan(tmp_path):
    libasan = _asan_lib()
    src = tmp_path / "src"
    src.mkdir()
    shutil.copytree(ROOT / "csrc", src / "csrc")
    for name in ("setup.py", "pyproject.toml"):
        shutil.copy(ROOT / name, src / name)
    lib, tmp = tmp_path / "lib", tmp_path / "build"
    env = dict(os.environ, NFCL_SANITIZE="1")
    build = subprocess.run(
        [
            sys.executable,
            "setup.py",
            "build_ext",
            "--build-lib",
            str(lib),
            "--build-temp",
            str(tmp),
        ],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if build.returncode != 0:
        pytest.fail(f"sanitized build failed:\\n{build.stderr[-3000:]}")
    # the Python package next to the sanitized extension
    for py in (ROOT / "nfcl").glob("*.py"):
        shutil.copy(py, lib / "nfcl" / py.name)
    shutil.copytree(ROOT / "nfcl" / "datasets", lib / "nfcl" / "datasets")
    env = dict(
        os.environ,
        PYTHONPATH=str(lib),
        LD_PRELOAD=libasan,
        ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:exitcode=99",
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=98",
        OPENBLAS_NUM_THREADS="1",
    )
    # canary: an overflow through an intercepted memmove must be reported,
    # or the preload is not active and a clean run would prove nothing
    canary = subprocess.run(
        [sys.executable, "-c", CANARY],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "heap-buffer-overflow" in canary.stderr, canary.stderr[-2000:]
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = run.stderr
    bad = (
        "AddressSanitizer",
        "runtime error:",
        "UndefinedBehaviorSanitizer",
        "LeakSanitizer",
    )
    assert run.returncode == 0 and not any(b in report for b in bad), report[-5000:]
    assert "sanitized run ok" in run.stdout and str(lib) in run.stdout

    # a short subset of the suite itself against the sanitized core (files
    # that need no torch, whose own allocator would drown the report)
    subset = [str(ROOT / "tests" / f) for f in ("test_models.py", "test_threads.py",
                                                "test_baselines.py")]
    suite = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *subset],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = suite.stdout + suite.stderr
    assert suite.returncode == 0 and not any(b in report for b in bad), report[-5000:]
    assert " passed" in suite.stdout
