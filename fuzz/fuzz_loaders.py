"""Fuzz nfcl.io loaders with random bytes written to a temporary CSV/JSON file.

Run: python fuzz/fuzz_loaders.py [-max_total_time=180] [fuzz/corpus/loaders]
(needs ``pip install nfcl[fuzz]``). ``one_input`` is also called, without
atheris, by tests/test_fuzz_regressions.py on the seed corpus.

The first byte picks the loader and file suffix; the rest is the file. A
loader may raise NfclError, ValueError, TypeError or OSError on bad bytes;
any other exception (or a crash) is a finding.
"""

from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _bytes import Bytes  # noqa: E402

EXPECTED = None  # filled on first use: the exception types a loader may raise

TARGETS = (
    ("events", ".csv"),
    ("spotify", ".csv"),
    ("spotify", ".json"),
    ("mssd", ".csv"),
    ("sniff", ".csv"),
    ("sniff", ".json"),
)


def _expected():
    global EXPECTED
    if EXPECTED is None:
        from nfcl.errors import NfclError

        EXPECTED = (NfclError, ValueError, TypeError, OSError)
    return EXPECTED


def one_input(data: bytes) -> None:
    """Load ``data[1:]`` with the loader chosen by ``data[0]``."""
    from nfcl import io

    fb = Bytes(data[:1])
    loader, suffix = fb.pick(TARGETS)
    fd, path = tempfile.mkstemp(suffix=suffix, prefix="nfcl-fuzz-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data[1:])
        try:
            if loader == "events":
                io.load_events(path)
            elif loader == "spotify":
                io.load_spotify(path)
            elif loader == "mssd":
                io.load_mssd([path])
            else:
                io.sniff_format(path)
        except _expected():
            pass
    finally:
        os.unlink(path)


def main():
    import atheris

    with atheris.instrument_imports():
        import nfcl.io  # noqa: F401
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
