"""Input bytes or a file, with random-access reads for packets taken straight from the index."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from vidtag.decode.limits import DecodeLimits
from vidtag.errors import InvalidVideo, LimitExceeded


class Source:
    """Validated input: `handle` for av.open, `read(offset, size)` for packet bytes."""

    def __init__(self, source: bytes | bytearray | memoryview | str | Path, limits: DecodeLimits):
        self._fd: int | None = None
        self._buf: memoryview | None = None
        self.limits = limits
        if isinstance(source, bytes | bytearray | memoryview):
            self.size = len(source)
            self._check(limits)
            self._buf = memoryview(source)
            self._path: str | None = None
            return
        path = Path(source)
        if not path.is_file():
            raise InvalidVideo(f"no such file: {path}")
        self.size = path.stat().st_size
        self._check(limits)
        self._fd = os.open(path, os.O_RDONLY)
        self._path = str(path)

    @property
    def handle(self) -> Any:
        """What av.open reads: the path, or a fresh stream over the bytes."""
        return self._path if self._path is not None else io.BytesIO(self._buf)  # type: ignore[arg-type]

    def _check(self, limits: DecodeLimits) -> None:
        if self.size > limits.max_bytes:
            raise LimitExceeded(f"video is {self.size} bytes, the limit is {limits.max_bytes}")
        if self.size == 0:
            raise InvalidVideo("empty input")

    def read(self, offset: int, size: int) -> bytes:
        """Up to `size` bytes at `offset` (fewer at the end of the input)."""
        if self._buf is not None:
            return bytes(self._buf[offset : offset + size])
        assert self._fd is not None
        return os.pread(self._fd, size, offset)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
