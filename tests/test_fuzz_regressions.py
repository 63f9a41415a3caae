"""The fuzz seed corpus and every fuzz finding, replayed without atheris.

fuzz/fuzz_loaders.py and fuzz/fuzz_core.py define ``one_input(data)``, which
swallows only the expected exception types; anything else propagates here
and fails the test. A crash in C would kill the test process, so each
corpus is replayed in a subprocess.
"""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FUZZ = ROOT / "fuzz"

REPLAY = textwrap.dedent("""
    import sys, glob, os, traceback
    sys.path.insert(0, sys.argv[1])
    import nfcl
    import importlib
    harness = importlib.import_module(sys.argv[2])
    bad = 0
    files = sorted(glob.glob(os.path.join(sys.argv[3], "*")))
    for path in files:
        try:
            harness.one_input(open(path, "rb").read())
        except Exception:
            bad += 1
            print("FAIL", path, traceback.format_exc(), flush=True)
    print("replayed", len(files), "failed", bad)
    sys.exit(1 if bad else 0)
""")


@pytest.mark.parametrize(
    "harness, corpus", [("fuzz_loaders", "loaders"), ("fuzz_core", "core")]
)
def test_seed_corpus_replays_cleanly(harness, corpus):
    folder = FUZZ / "corpus" / corpus
    assert len(list(folder.iterdir())) >= 6
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    run = subprocess.run(
        [sys.executable, "-c", REPLAY, str(FUZZ), harness, str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    assert f"replayed {len(list(folder.iterdir()))} failed 0" in run.stdout


def test_harness_lets_unexpected_exceptions_through(monkeypatch):
    """The harness must not hide bugs: a KeyError from a loader reaches us."""
    sys.path.insert(0, str(FUZZ))
    try:
        import fuzz_loaders
    finally:
        sys.path.remove(str(FUZZ))
    from nfcl import io

    def broken(*a, **kw):
        raise KeyError("bug")

    monkeypatch.setattr(io, "load_events", broken)
    with pytest.raises(KeyError):
        fuzz_loaders.one_input(b"\x00a,b\n")
    monkeypatch.setattr(
        io,
        "load_events",
        lambda *a, **kw: (_ for _ in ()).throw(ValueError("expected")),
    )
    fuzz_loaders.one_input(b"\x00a,b\n")


# Findings: none so far (fuzz_loaders 481k runs and fuzz_core 124k runs, 3 min
# each, no crash and no unexpected exception). Each future finding goes here as
# a test that replays its bytes, marked xfail(strict=True) until it is fixed.


@pytest.mark.parametrize("harness, corpus", [("fuzz_loaders", "loaders"),
                                             ("fuzz_core", "core")])
def test_short_atheris_run(harness, corpus, tmp_path):
    """A short coverage-guided run in CI (10 s each), from a copy of the seed
    corpus; any crash or unexpected exception fails it."""
    pytest.importorskip("atheris")
    work = tmp_path / corpus
    shutil.copytree(FUZZ / "corpus" / corpus, work)
    run = subprocess.run(
        [sys.executable, str(FUZZ / f"{harness}.py"), "-max_total_time=10",
         "-rss_limit_mb=3072", str(work)],
        capture_output=True, text=True, timeout=180,
        env=dict(os.environ, OPENBLAS_NUM_THREADS="1"),
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert "Done" in run.stderr
