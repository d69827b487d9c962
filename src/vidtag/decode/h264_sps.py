"""What an H.264 sequence parameter set says about the decoded pictures, without decoding one.

FFmpeg learns an H.264 stream's pixel format (chroma format, bit depth, full range) only by
decoding a picture; the stream probe that does so costs a keyframe's decode (~13 ms of a
540x960 clip's 13 ms open). The SPS carries the same facts in its first few fields and its VUI,
read here (ITU-T H.264 7.3.2.1.1 and E.1.1).
"""

from __future__ import annotations

from dataclasses import dataclass

# profile_idc values whose SPS carries chroma_format_idc, bit depths and scaling lists.
_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


@dataclass(frozen=True)
class SpsInfo:
    profile: int
    chroma_format: int  # 0 monochrome, 1 4:2:0, 2 4:2:2, 3 4:4:4
    bit_depth: int  # luma
    full_range: bool  # VUI video_full_range_flag
    matrix: int  # VUI matrix_coefficients (the AVColorSpace numbering); 2 = unspecified


class _Bits:
    """MSB-first bit reader over an RBSP; reading past the end raises ValueError."""

    def __init__(self, rbsp: bytes) -> None:
        self.data = rbsp
        self.pos = 0

    def u(self, n: int) -> int:
        value = 0
        for _ in range(n):
            byte = self.pos >> 3
            if byte >= len(self.data):
                raise ValueError("SPS ends early")
            value = (value << 1) | ((self.data[byte] >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return value

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("bad Exp-Golomb code in SPS")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


def rbsp(nal_payload: bytes) -> bytes:
    """The payload with its emulation-prevention bytes (00 00 03 -> 00 00) removed."""
    out = bytearray()
    zeros = 0
    for b in nal_payload:
        if zeros >= 2 and b == 3:
            zeros = 0
            continue
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


def _skip_scaling_list(r: _Bits, size: int) -> None:
    last = nxt = 8
    for _ in range(size):
        if nxt:
            nxt = (last + r.se() + 256) % 256
        last = nxt or last


def parse_sps(nal: bytes) -> SpsInfo:
    """Parse an SPS NAL unit (its header byte first, type 7). Raises ValueError when it is not
    one or ends early."""
    if not nal or nal[0] & 0x1F != 7:
        raise ValueError("not an H.264 SPS NAL unit")
    r = _Bits(rbsp(nal[1:]))
    profile = r.u(8)
    r.u(16)  # constraint flags, level_idc
    r.ue()  # seq_parameter_set_id
    chroma, bits = 1, 8
    if profile in _HIGH_PROFILES:
        chroma = r.ue()
        if chroma == 3:
            r.u(1)  # separate_colour_plane_flag
        bits = 8 + r.ue()
        r.ue()  # bit_depth_chroma_minus8
        r.u(1)  # qpprime_y_zero_transform_bypass_flag
        if r.u(1):  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma != 3 else 12):
                if r.u(1):
                    _skip_scaling_list(r, 16 if i < 6 else 64)
    r.ue()  # log2_max_frame_num_minus4
    poc_type = r.ue()
    if poc_type == 0:
        r.ue()
    elif poc_type == 1:
        r.u(1)
        r.se()
        r.se()
        for _ in range(r.ue()):
            r.se()
    r.ue()  # max_num_ref_frames
    r.u(1)  # gaps_in_frame_num_value_allowed_flag
    r.ue()  # pic_width_in_mbs_minus1
    r.ue()  # pic_height_in_map_units_minus1
    if not r.u(1):  # frame_mbs_only_flag
        r.u(1)
    r.u(1)  # direct_8x8_inference_flag
    if r.u(1):  # frame_cropping_flag
        for _ in range(4):
            r.ue()
    full_range, matrix = False, 2
    if r.u(1):  # vui_parameters_present_flag
        if r.u(1) and r.u(8) == 255:  # aspect_ratio_info_present_flag, aspect_ratio_idc
            r.u(32)  # sar_width, sar_height
        if r.u(1):  # overscan_info_present_flag
            r.u(1)
        if r.u(1):  # video_signal_type_present_flag
            r.u(3)  # video_format
            full_range = bool(r.u(1))
            if r.u(1):  # colour_description_present_flag
                r.u(16)  # colour_primaries, transfer_characteristics
                matrix = r.u(8)
    return SpsInfo(profile, chroma, bits, full_range, matrix)
