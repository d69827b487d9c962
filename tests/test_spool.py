"""The upload spool: segments reused and bounded, one copy per upload however many workers
read it, and a spooled upload decodes exactly as its bytes do."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pytest

from vidtag.decode import DecodeLimits, SamplingSpec, sample_frames
from vidtag.decode.source import Source, SpoolRef, map_spooled, spooled_bytes
from vidtag.errors import LimitExceeded
from vidtag.server.spool import MIN_SEGMENT, UploadSpool, supported

pytestmark = pytest.mark.skipif(not supported(), reason="memfd_create and /proc (Linux)")
MiB = 1 << 20


@pytest.fixture
def spool() -> Iterator[UploadSpool]:
    s = UploadSpool(8 * MiB)
    yield s
    s.close()


def test_segments_are_reused_and_sized_in_powers_of_two(spool: UploadSpool) -> None:
    a = spool.put(b"a" * 100)
    assert a is not None and a.capacity == MIN_SEGMENT and spool.allocated == MIN_SEGMENT
    a.fill()
    spool.release(a)
    b = spool.put(b"b" * 200)
    assert b is a and not b.filled
    b.fill()
    b.fill()  # once: a clip's shares each ask
    assert spooled_bytes(b.ref()) == b"b" * 200  # the same memfd, rewritten
    c = spool.put(bytes(3 * MiB))
    assert c is not None and c.capacity == 4 * MiB and spool.allocated == 5 * MiB
    assert spool.spooled == 3


def test_one_copy_per_upload_object(spool: UploadSpool) -> None:
    data = os.urandom(5000)
    first, second = spool.put(data), spool.put(data)
    assert first is second and first is not None and first.refs == 2 and spool.spooled == 1
    equal_not_same = bytes(bytearray(data))
    other = spool.put(equal_not_same)
    assert other is not first  # another object: its own segment
    spool.release(first)
    assert spool.put(b"x" * 10) is not first  # still read by one worker
    spool.release(first)
    assert spool.put(b"y" * 10) is first  # free again


def test_the_cap_evicts_free_segments_then_refuses(spool: UploadSpool) -> None:
    held = spool.put(bytes(3 * MiB))  # 4 MiB, in use
    kept = spool.put(bytes(MiB // 2))  # 1 MiB
    assert held is not None and kept is not None
    spool.release(kept)
    assert spool.allocated == 5 * MiB
    big = spool.put(bytes(3 * MiB + 1))  # another 4 MiB: the free 1 MiB goes
    assert big is not None and spool.allocated == 8 * MiB
    assert spool.put(bytes(10)) is None  # nothing free to evict: the caller uses the pipe
    assert spool.put(bytes(9 * MiB)) is None  # larger than the whole spool
    spool.release(held)
    assert spool.put(bytes(10)) is held


def test_a_spooled_upload_decodes_as_its_bytes(spool: UploadSpool, clip_bytes: bytes) -> None:
    seg = spool.put(clip_bytes)
    assert seg is not None
    seg.fill()
    ref = seg.ref()
    assert ref.pid == os.getpid() and ref.size == len(clip_bytes)
    spec, limits = SamplingSpec(frames=4, height=64, width=32), DecodeLimits()
    got, want = sample_frames(ref, spec, limits), sample_frames(clip_bytes, spec, limits)
    assert np.array_equal(got.frames, want.frames) and got.timestamps == want.timestamps
    with Source(ref, limits) as src:
        assert src.read(4, 4) == clip_bytes[4:8] and src.size == len(clip_bytes)
        assert src.handle.read(16) == clip_bytes[:16]
    with pytest.raises(LimitExceeded):
        Source(ref, DecodeLimits(max_bytes=len(clip_bytes) - 1))


def test_the_probe_is_no_upload(spool: UploadSpool) -> None:
    ref = spool.probe(b"probe")
    assert spooled_bytes(ref) == b"probe" and spool.probe(b"probe") == ref
    assert (spool.spooled, spool.in_use, spool.allocated) == (0, 0, 0)
    seg = spool.put(b"upload")
    assert seg is not None and spool.in_use == 1
    spool.release(seg)
    assert spool.in_use == 0


def test_a_reference_past_its_segment_is_refused(spool: UploadSpool) -> None:
    seg = spool.put(b"z" * 10)
    assert seg is not None
    with pytest.raises(OSError, match="shorter"):
        map_spooled(SpoolRef(os.getpid(), seg.fd, seg.capacity + 1))
    with pytest.raises(OSError):
        map_spooled(SpoolRef(os.getpid(), 1 << 20, 10))  # no such descriptor


def test_a_stale_write_cannot_pass_for_the_next_upload(
    spool: UploadSpool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sending thread still writing an upload whose worker died (the segment released and
    given to the next upload meanwhile) does not leave its bytes standing for the next one."""
    import threading

    from vidtag.server import spool as spool_module

    old, new = b"o" * 5000, b"n" * 5000
    seg = spool.put(old)
    assert seg is not None
    started, go = threading.Event(), threading.Event()
    pwrite = os.pwrite

    def slow_pwrite(fd: int, data: memoryview, offset: int) -> int:
        if bytes(data[:1]) == b"o":
            started.set()
            go.wait(5)
        return pwrite(fd, data, offset)

    monkeypatch.setattr(spool_module.os, "pwrite", slow_pwrite)
    stale = threading.Thread(target=seg.fill)
    stale.start()
    assert started.wait(5)
    spool.release(seg)  # its worker is gone
    assert spool.put(new) is seg  # the next upload gets the segment
    go.set()
    stale.join(5)
    assert not seg.filled
    seg.fill()
    assert seg.filled and spooled_bytes(seg.ref()) == new
