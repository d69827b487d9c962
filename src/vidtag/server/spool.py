"""Uploads handed to decode workers through shared memory instead of a pipe.

Through a pipe, a 3.7 MB upload costs its round trip to a worker ~3 ms more than a file the
worker opens itself (two copies, and the worker's fresh buffer faulted in page by page). Here
the server writes the upload once into a memfd segment (`pwrite`, off the event loop and
without the GIL: ~0.3 ms once the pages are resident), and the worker maps those pages
read-only through /proc/<server pid>/fd/<n> (`vidtag.decode.source.SpoolRef`), reading only
what it decodes.

Segments are reused: a fresh one costs ~2 ms of page allocation for 3.7 MB. An upload that
does not fit under `max_bytes` (segments in use and kept) goes through the pipe instead, as
does one whose write fails (memory refused). The pages are not in /dev/shm (64 MB in a
default Docker container) but count in the process's memory cgroup like any other memory.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from vidtag.decode.source import SpoolRef

MIN_SEGMENT = 1 << 20  # bytes; segments are powers of two from here


def _capacity(size: int) -> int:
    return max(MIN_SEGMENT, 1 << (size - 1).bit_length())


@dataclass(eq=False)
class Segment:
    """One memfd; `refs` tasks read it now. The event loop assigns it an upload (`data`,
    `size`); `fill` writes it, from whichever thread sends a task naming it first."""

    fd: int
    capacity: int
    refs: int = 0
    size: int = 0  # bytes of the current upload
    data: Any = field(default=None, repr=False)  # the upload it holds while in use
    written: Any = field(default=None, repr=False)  # the upload its pages hold
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def ref(self) -> SpoolRef:
        return SpoolRef(os.getpid(), self.fd, self.size)

    @property
    def filled(self) -> bool:
        return self.written is not None and self.written is self.data

    def fill(self) -> None:
        """Write the upload, once however many threads ask (OSError if the memory is refused;
        a later call tries again). A thread still writing an upload this segment no longer
        holds (its worker died, the segment went to another upload) cannot pass it off as the
        new one: what was written is compared by identity."""
        with self.lock:
            data = self.data
            if data is None or self.written is data:
                return
            self.written = None
            write_all(self.fd, memoryview(data).cast("B"))
            self.written = data

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def write_all(fd: int, view: memoryview) -> None:
    """Write all of `view` from the start of `fd` (pwrite releases the GIL while it copies)."""
    done = 0
    while done < view.nbytes:
        done += os.pwrite(fd, view[done:], done)


def supported() -> bool:
    return hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")


class UploadSpool:
    """Reusable shared segments, at most `max_bytes` of them (in use plus kept for reuse).

    One event loop uses it (no locking). `put` assigns an upload to a free segment, or returns
    the one already holding that same object (a clip split between several workers is written
    once); `release` once per `put` when the worker is done reading."""

    def __init__(self, max_bytes: int) -> None:
        if not supported():
            raise OSError("shared upload segments need Linux (memfd_create and /proc)")
        self.max_bytes = max_bytes
        self._free: list[Segment] = []  # least recently used first
        self._live: dict[int, Segment] = {}  # id(upload) -> its segment, while in use
        self.allocated = 0  # bytes of all segments
        self.spooled = 0  # uploads assigned a segment (a shared one counted once)
        self._probe: Segment | None = None

    @property
    def in_use(self) -> int:
        """Segments holding an upload a worker has not finished with."""
        return len(self._live)

    def probe(self, payload: bytes) -> SpoolRef:
        """A segment of its own holding `payload` until `close` (a worker maps it at start to
        learn whether it can read this process's segments at all)."""
        if self._probe is None:
            fd = os.memfd_create("vidtag-upload-probe", os.MFD_CLOEXEC)
            self._probe = Segment(fd, len(payload), size=len(payload), data=payload)
            self._probe.fill()
        return self._probe.ref()

    def put(self, data: bytes | bytearray | memoryview) -> Segment | None:
        """The segment for `data` (written by `fill`), or None when it does not fit under
        `max_bytes`."""
        seg = self._live.get(id(data))
        if seg is not None and seg.data is data:
            seg.refs += 1
            return seg
        size = memoryview(data).nbytes
        if size == 0:
            return None
        seg = self._take(size)
        if seg is None:
            return None
        seg.size, seg.data, seg.refs = size, data, 1
        self._live[id(data)] = seg
        self.spooled += 1
        return seg

    def release(self, seg: Segment) -> None:
        seg.refs -= 1
        if seg.refs > 0:
            return
        self._live.pop(id(seg.data), None)
        seg.data = seg.written = None  # the upload may be freed; the pages stay
        self._free.append(seg)

    def close(self) -> None:
        """Close every segment (a worker still mapping one keeps its pages)."""
        for seg in [*self._free, *self._live.values(), *filter(None, [self._probe])]:
            seg.close()
        self._probe = None
        self._free.clear()
        self._live.clear()
        self.allocated = 0

    def _take(self, size: int) -> Segment | None:
        fits = [s for s in self._free if s.capacity >= size]
        if fits:
            seg = min(fits, key=lambda s: s.capacity)
            self._free.remove(seg)
            return seg
        capacity = _capacity(size)
        while self.allocated + capacity > self.max_bytes and self._free:
            old = self._free.pop(0)
            old.close()
            self.allocated -= old.capacity
        if self.allocated + capacity > self.max_bytes:
            return None
        fd = os.memfd_create("vidtag-upload", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, capacity)  # sparse: pages arrive with the first write
        except BaseException:
            os.close(fd)
            raise
        self.allocated += capacity
        return Segment(fd, capacity)
