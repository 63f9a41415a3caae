"""Thread control for the OpenBLAS that the C core links."""
import ctypes

import scipy_openblas32 as _openblas


def _dll():
    _openblas.get_openblas_config()  # loads and keeps the library
    return _openblas.dll


def set_num_threads(n: int) -> None:
    """Set how many threads OpenBLAS may use inside the core's matrix products."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"number of threads must be a positive int, got {n!r}")
    _dll().scipy_openblas_set_num_threads(ctypes.c_int(n))


def get_num_threads() -> int:
    """Return how many threads OpenBLAS uses."""
    return int(_dll().scipy_openblas_get_num_threads())
