"""valgrind over a short training run of every encoder in the C core alone.

Python itself is not run under valgrind (CPython's allocator and OpenBLAS's
generated kernels drown the report); tests/c/core_driver.c drives the same
entry points the binding uses, and valgrind must report no error and no
definitely lost block."""
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_core_driver_is_valgrind_clean(tmp_path):
    if shutil.which("valgrind") is None or shutil.which("gcc") is None:
        pytest.skip("valgrind or gcc is not installed")
    openblas = pytest.importorskip("scipy_openblas32")
    sources = [str(p) for p in sorted((ROOT / "csrc").glob("*.c")) if p.name != "binding.c"]
    exe = tmp_path / "core_driver"
    lib = openblas.get_lib_dir()
    subprocess.run(
        ["gcc", "-std=c11", "-O1", "-g", "-fopenmp", f"-I{ROOT / 'csrc'}",
         f"-I{openblas.get_include_dir()}", *sources, str(ROOT / "tests/c/core_driver.c"),
         f"-L{lib}", f"-l{openblas.get_library()}", f"-Wl,-rpath,{lib}", "-lm", "-o",
         str(exe)], check=True, capture_output=True, timeout=300)
    r = subprocess.run(["valgrind", "--error-exitcode=9", "--leak-check=full",
                        "--errors-for-leak-kinds=definite", str(exe)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ERROR SUMMARY: 0 errors" in r.stderr
