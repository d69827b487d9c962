"""Input bytes or a file, with random-access reads for packets taken straight from the index."""

from __future__ import annotations

import contextlib
import io
import mmap
import os
import stat
from pathlib import Path
from typing import Any, NamedTuple

from vidtag.decode.limits import DecodeLimits
from vidtag.errors import InvalidVideo, LimitExceeded

# open() flags: read-only and not inherited by child processes; READ_UNTRUSTED also refuses a
# final symbolic link and does not block on a FIFO (a path a client named, or a checked file).
READ = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
READ_UNTRUSTED = READ | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)


class FileRef(NamedTuple):
    """A file someone else checked (the server's path inputs): opened here only if the path
    still names that same file (device and inode), so nothing swapped in after the check is
    read. Path-like: a backend that takes paths opens `path`."""

    path: str
    device: int
    inode: int
    size: int  # at the check

    def __fspath__(self) -> str:
        return self.path


class SpoolRef(NamedTuple):
    """An upload another process (the server, `vidtag.server.spool`) copied into shared
    memory: the first `size` bytes of its descriptor `fd`, mapped here read-only."""

    pid: int
    fd: int
    size: int


Input = bytes | bytearray | memoryview | str | Path | FileRef | SpoolRef


class Source:
    """Validated input: `handle` for av.open, `read(offset, size)` for packet bytes."""

    def __init__(self, source: Input, limits: DecodeLimits):
        self._fd: int | None = None
        self._buf: memoryview | None = None
        self._bytes: bytes | None = None
        self._map: mmap.mmap | None = None
        self._path: str | None = None
        self.limits = limits
        if isinstance(source, SpoolRef):
            self.size = source.size
            self._check(limits)
            self._map = map_spooled(source)
            self._buf = memoryview(self._map)
            return
        if isinstance(source, bytes | bytearray | memoryview):
            self.size = len(source)
            self._check(limits)
            self._buf = memoryview(source)
            # BytesIO shares a bytes object's buffer until written to; anything else it copies
            # (a 3.7 MB upload: 0.56 ms a copy, once per open).
            self._bytes = source if isinstance(source, bytes) else None
            return
        if isinstance(source, FileRef):
            self._fd = open_same(source)
            self.size = os.fstat(self._fd).st_size
            # FFmpeg reads the descriptor we checked, not whatever the name points at now
            # (without /proc: the name, checked a moment ago).
            proc = f"/proc/self/fd/{self._fd}"
            self._path = proc if os.path.exists(proc) else source.path
        else:
            path = Path(source)
            if not path.is_file():
                raise InvalidVideo(f"no such file: {path}")
            self.size = path.stat().st_size
            self._fd = os.open(path, READ)
            self._path = str(path)
        try:
            self._check(limits)
        except Exception:
            self.close()
            raise

    @property
    def handle(self) -> Any:
        """What av.open reads: the path, or a fresh stream over the bytes."""
        if self._path is not None:
            return self._path
        if self._map is not None:  # read in place; the opens of one Source come one by one
            self._map.seek(0)
            return self._map
        assert self._buf is not None
        return io.BytesIO(self._bytes if self._bytes is not None else self._buf)

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
        if self._map is not None:
            assert self._buf is not None
            self._buf.release()
            with contextlib.suppress(BufferError):  # a view still out: unmapped when collected
                self._map.close()
            self._map = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def map_spooled(ref: SpoolRef) -> mmap.mmap:
    """`ref`'s bytes, mapped read-only (OSError if that process's descriptor cannot be
    opened from here)."""
    fd = os.open(f"/proc/{ref.pid}/fd/{ref.fd}", READ)
    try:
        if os.fstat(fd).st_size < ref.size:
            raise OSError(f"shared upload segment is shorter than its {ref.size} bytes")
        return mmap.mmap(fd, ref.size, prot=mmap.PROT_READ)  # stays mapped after the close
    finally:
        os.close(fd)


def spooled_bytes(ref: SpoolRef) -> bytes:
    """A copy of `ref`'s bytes (for what needs bytes, not a mapping)."""
    mapped = map_spooled(ref)
    try:
        return bytes(mapped)
    finally:
        mapped.close()


def open_same(ref: FileRef) -> int:
    """A read-only descriptor of `ref.path`, if it is still `ref`'s regular file."""
    try:
        fd = os.open(ref.path, READ_UNTRUSTED)
    except OSError as exc:
        raise InvalidVideo(f"the file changed after it was checked: {exc.strerror}") from None
    info = os.fstat(fd)
    if (info.st_dev, info.st_ino) != (ref.device, ref.inode) or not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise InvalidVideo("the file was replaced after it was checked")
    return fd
