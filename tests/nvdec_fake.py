"""A stand-in for PyNvVideoCodec that decodes on the CPU with PyAV, for tests without a GPU.

It keeps the contract the nvdec backend relies on: `CreateDecoder(...)` returns a decoder whose
`Decode(PacketData)` takes one Annex B / raw access unit through `bsl_data` (an address) and
`bsl` (its size), returns the frames that became displayable (display order, each with the
`pts` of the packet that carried it as `timestamp`, NV12 exported through DLPack as
(H * 3/2, W) uint8), flushes on an empty packet, and reuses its output surfaces: a frame is
overwritten by the next `Decode` call, as NVDEC's are.
"""

from __future__ import annotations

import ctypes
from types import SimpleNamespace
from typing import Any

import av
import numpy as np

_DECODERS = {"H264": "h264", "HEVC": "hevc", "VP9": "vp9", "AV1": "libdav1d"}


class PacketData:
    def __init__(self) -> None:
        self.bsl_data = 0
        self.bsl = 0
        self.pts = 0
        self.decode_flag = 0


class DecodedFrame:
    def __init__(self, surface: np.ndarray, timestamp: int) -> None:
        self._surface = surface
        self.timestamp = timestamp

    def __dlpack__(self, stream: Any = None) -> Any:
        return self._surface.__dlpack__()

    def __dlpack_device__(self) -> tuple[int, int]:
        return self._surface.__dlpack_device__()  # type: ignore[return-value]


class FakeDecoder:
    def __init__(self, codec: str, maxwidth: int, maxheight: int, **kwargs: Any) -> None:
        self.codec = codec
        self.max_size = (maxwidth, maxheight)
        self.kwargs = kwargs
        self.ctx = av.CodecContext.create(_DECODERS[codec], "r")
        self.surfaces: list[np.ndarray] = []
        self.reconfigured: list[tuple[int, int]] = []
        self.packets = 0
        self.flushes = 0

    def setReconfigParams(self, width: int = 0, height: int = 0) -> int:
        if width > self.max_size[0] or height > self.max_size[1]:
            raise RuntimeError("Resize dimensions must be lower than max width and height")
        self.reconfigured.append((width, height))
        return 1

    def Decode(self, pkt: PacketData) -> list[DecodedFrame]:
        if pkt.bsl == 0:
            frames = list(self.ctx.decode(None))
            self.ctx.flush_buffers()
            self.flushes += 1
        else:
            packet = av.Packet(ctypes.string_at(pkt.bsl_data, pkt.bsl))
            packet.pts = pkt.pts
            frames = list(self.ctx.decode(packet))
            self.packets += 1
        out = []
        for k, frame in enumerate(frames):
            if frame.width > self.max_size[0] or frame.height > self.max_size[1]:
                raise RuntimeError("Reconfigure Not supported when width/height > maxwidth")
            nv12 = frame.to_ndarray(format="nv12")
            if k >= len(self.surfaces):
                self.surfaces.append(nv12.copy())
            elif self.surfaces[k].shape != nv12.shape:
                self.surfaces[k] = nv12.copy()
            else:
                self.surfaces[k][...] = nv12  # overwrite what the last call handed out
            out.append(DecodedFrame(self.surfaces[k], int(frame.pts)))
        return out


class FakeNvc:
    """The module: records every decoder it creates."""

    cudaVideoCodec = SimpleNamespace(H264="H264", HEVC="HEVC", VP9="VP9", AV1="AV1")
    OutputColorType = SimpleNamespace(NATIVE="NATIVE")
    DisplayDecodeLatencyType = SimpleNamespace(NATIVE="NATIVE", LOW="LOW", ZERO="ZERO")
    PacketData = PacketData

    def __init__(self) -> None:
        self.decoders: list[FakeDecoder] = []

    def CreateDecoder(
        self, *, codec: str, maxwidth: int, maxheight: int, **kwargs: Any
    ) -> FakeDecoder:
        dec = FakeDecoder(codec, maxwidth, maxheight, **kwargs)
        self.decoders.append(dec)
        return dec
