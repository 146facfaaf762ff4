"""The IVF container (VP8/VP9): a 32-byte file header, then one 12-byte record header + payload per
frame. Because each frame is a self-delimiting record, a reader can cut out a stream that starts at
any keyframe and decodes on its own (FORMAT.md, "keyframe-indexed samples").

Layout, little-endian:
    file header: b"DKIF", version (u16), header size (u16), fourcc, width (u16), height (u16),
                 rate (u32), scale (u32), frame count (u32 at byte 24), unused (u32)
    record:      payload size (u32), pts (u64), payload
"""

from __future__ import annotations

import io
import struct

HEADER = 32  # bytes of an IVF file header; frame records follow
RECORD_HEADER = 12
_FRAME_COUNT_AT = 24


class IVFError(ValueError):
    """Bytes that are not a well-formed IVF stream (not IVF, or a record past the end)."""


def frame_offsets(data: bytes) -> list[int]:
    """Byte offset of each frame record (its 12-byte header) in an IVF file, in stream order.

    Raises:
        IVFError: not an IVF file, or a record runs past the end (truncated).
    """
    if len(data) < HEADER or data[:4] != b"DKIF":
        raise IVFError("not an IVF stream")
    offsets, pos = [], int(struct.unpack_from("<H", data, 6)[0])
    while pos < len(data):
        if pos + RECORD_HEADER > len(data):
            raise IVFError(f"IVF frame record at byte {pos} is truncated")
        offsets.append(pos)
        pos += RECORD_HEADER + struct.unpack_from("<I", data, pos)[0]
    if pos != len(data):
        raise IVFError(f"IVF frame record at byte {offsets[-1]} runs past the end")
    return offsets


def keyframes(data: bytes) -> tuple[list[int], list[int]]:
    """(frame indices, record byte offsets) of the keyframes of an IVF VP9 stream.

    Every frame is one record here (no alt-ref / hidden frames: `sharding.encode` turns them off), so
    record i is frame i; the keyframe flags come from PyAV's demuxer.

    Raises:
        IVFError: malformed stream, records and packets disagree, or no keyframe at frame 0.
    """
    import av  # only the builder and the verifier need PyAV; readers of the cut do not

    offsets = frame_offsets(data)
    with av.open(io.BytesIO(data)) as c:
        flags = [p.is_keyframe for p in c.demux(video=0) if p.size]
    if len(flags) != len(offsets):
        raise IVFError(f"IVF stream has {len(offsets)} records but {len(flags)} packets")
    frames = [i for i, k in enumerate(flags) if k]
    if not frames or frames[0] != 0:
        raise IVFError("IVF stream does not start with a keyframe")
    return frames, [offsets[i] for i in frames]


def cut_stream(header: bytes, body: bytes, num_frames: int) -> bytes:
    """The IVF stream of a cut: the member's file header with its frame count set to `num_frames`,
    then the cut's frame records (`body`, which must start at a keyframe's record)."""
    h = bytearray(header[:HEADER])
    struct.pack_into("<I", h, _FRAME_COUNT_AT, num_frames)
    return bytes(h) + body
