"""Thread control for the C core.

The core runs its own threads (OpenMP) and keeps OpenBLAS single-threaded,
so that results are bitwise the same with any thread count (see
csrc/blas.c). It starts on one thread (NFCL_NUM_THREADS or set_num_threads
change that). More threads than cores only slows training down, so asking
for that warns, as implicit does for a misconfigured OpenBLAS.
"""
import os
import warnings

from . import _core


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_num_threads(n: int) -> None:
    """Set how many threads the core uses (OpenBLAS stays at one)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"number of threads must be a positive int, got {n!r}")
    if n > _cores():
        warnings.warn(f"nfcl: {n} threads requested on {_cores()} cores; "
                      "oversubscribing slows training down", RuntimeWarning,
                      stacklevel=2)
    _core.set_threads(n)


def get_num_threads() -> int:
    """Return how many threads the core uses."""
    return int(_core.get_threads())


def _init_threads() -> None:
    """At import: pin OpenBLAS to one thread and start the core on one thread,
    or on NFCL_NUM_THREADS. One is the default because the products of a
    usual batch are small: a second thread pays off for large batches and
    catalogues, and fork-join steps stall badly when the other core is busy."""
    value = os.environ.get("NFCL_NUM_THREADS", "1")
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        warnings.warn(f"nfcl: NFCL_NUM_THREADS={value!r} is not a positive int; using 1",
                      RuntimeWarning, stacklevel=3)
        n = 1
    if n > _cores():
        warnings.warn(f"nfcl: NFCL_NUM_THREADS asks for {n} threads on {_cores()} "
                      "cores; oversubscribing slows training down", RuntimeWarning,
                      stacklevel=3)
    _core.set_threads(n)
