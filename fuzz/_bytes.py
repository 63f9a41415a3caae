"""A tiny reader that turns fuzz bytes into choices, with or without atheris."""

from __future__ import annotations

import struct


class Bytes:
    """Consume a byte string as small ints, floats and choices; zeros when empty."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out.ljust(n, b"\0")

    def int(self, low: int, high: int) -> int:
        """An int in low..high (inclusive); low when the range is empty."""
        if high <= low:
            return low
        return low + int.from_bytes(self.take(4), "little") % (high - low + 1)

    def pick(self, options):
        return options[self.int(0, len(options) - 1)]

    def float(self) -> float:
        special = (
            0.0,
            -0.0,
            1.0,
            -1.0,
            1e-8,
            1e30,
            -1e30,
            float("nan"),
            float("inf"),
            float("-inf"),
            0.5,
            3.4e38,
        )
        if self.int(0, 1):
            return self.pick(special)
        return struct.unpack("<f", self.take(4))[0]

    def rest(self) -> bytes:
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out
