"""Storage formats: one object per way a shard set stores a sample's pixels (FORMAT.md).

A format owns what differs between them: its name in the manifest (`encoding.container`), the
sample member's extension, its build defaults, the per-sample list columns of `.samples.json`
(validated into CSR arrays of `ShardTable`), how a training window's bytes are cut out of a member
(`cut`, `window_bytes`), and what `sharding.verify` checks beyond the frame count (`check_sample`).
The DALI side picks its decode step from the same name (`dali_pipelines/decode.py`).

- `ivf`: VP9 in IVF, keyframe-indexed whole videos (`--split train`, the default): a window is the
  stream cut at the keyframes around it.
- `webm` / `mp4`: whole videos (`--split eval`) or overlapping segments (`--split train
  --container webm`, or H.264): a window's bytes are the whole member.
- `jpeg` (the image layout, SUN397): one still JPEG per sample; the pan/zoom graph.
- `jpeg_frames` (`--codec jpeg`): every frame of a video a baseline 4:2:0 JPEG, concatenated in one
  member; `frame_offsets` gives each frame's first byte, so a window is one contiguous read and
  exactly its frames are decoded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from sharding import ivf

if TYPE_CHECKING:  # pragma: no cover
    from sharding.reader import SampleReader, ShardTable


class Cut(NamedTuple):
    """Bytes [begin, end) of a member hold frames [first_frame, first_frame + num_frames): what a
    window's decode reads (`StorageFormat.window_bytes` makes them a decodable unit)."""

    begin: int
    end: int
    first_frame: int
    num_frames: int


class FormatError(ValueError):
    """A table's format-specific columns are inconsistent (the message names the row)."""


class StorageFormat:
    """What every format answers; the defaults are those of a whole-member video (webm/mp4)."""

    name = ""                      # encoding["container"] in the manifest
    ext = ""                       # the sample member's extension
    list_columns: tuple[str, ...] = ()  # per-sample list columns of .samples.json
    arrays = ""                    # the prefix of the ShardTable CSR arrays `read_lists` makes
    cuts = False                   # a window reads part of a member (`cut`), not all of it

    def build_defaults(self, args) -> None:
        """Fill the builder options left unset (`--gop`, `--segment-frames`)."""
        if args.gop is None:
            args.gop = 64
        if args.segment_frames is None:
            args.segment_frames = 64

    def read_lists(self, table: dict, n: int, sizes: np.ndarray, num_frames: np.ndarray) -> dict[str, np.ndarray]:
        """This format's list columns of one shard's table as CSR arrays (`ShardTable` fields).

        Raises:
            FormatError: a column missing, of the wrong length, or inconsistent with a row.
        """
        return {}

    def cut(self, t: "ShardTable", row: int, start: int, span: int) -> Cut | None:
        """Where to cut row `row` for frames [start, start + span); None: read the whole member."""
        return None

    def window_bytes(self, reader: "SampleReader", row: int, c: Cut) -> bytes:
        """The bytes of a cut, as the decoder takes them."""
        return reader.read(row, c.begin, c.end)

    def sample_lists(self, data: bytes) -> dict[str, list]:
        """The list columns of a freshly encoded member (the builder stores them in the table and
        the sample's json)."""
        return {}

    def row_lists(self, arrays: dict[str, np.ndarray], row: int) -> dict[str, list]:
        """Row `row`'s list columns out of the CSR arrays `read_lists` made."""
        return {}

    def check_sample(self, data: bytes, lists: dict[str, list]) -> list[str]:
        """`sharding.verify`'s checks of one member (`lists`: its `row_lists`) beyond its frame
        count and size."""
        return []


def _csr(col: list) -> tuple[np.ndarray, np.ndarray]:
    """Per-row lists as (ptr, flat) CSR arrays."""
    ptr = np.concatenate([[0], np.cumsum([len(x) for x in col])]).astype(np.int64)
    flat = np.fromiter((v for x in col for v in x), dtype=np.int64, count=int(ptr[-1]))
    return ptr, flat


class WholeVideo(StorageFormat):
    """VP9 in WebM or H.264 in MP4: whole videos or overlapping segments; a window reads a member."""

    def __init__(self, name: str):
        self.name = self.ext = name


class Ivf(StorageFormat):
    """VP9 in IVF with keyframes every `--gop` frames; `keyframes` / `keyframe_offsets` per sample."""

    name = ext = "ivf"
    list_columns = ("keyframes", "keyframe_offsets")
    arrays = "kf_"
    cuts = True

    def build_defaults(self, args) -> None:
        if args.gop is None:
            args.gop = 16
        if args.segment_frames is None:
            args.segment_frames = 0

    def read_lists(self, table, n, sizes, num_frames):
        frames, offsets = table.get("keyframes"), table.get("keyframe_offsets")
        if frames is None or offsets is None or len(frames) != n or len(offsets) != n:
            raise FormatError("keyframes / keyframe_offsets columns missing or of the wrong length "
                              "(an ivf build must list every sample's keyframes)")
        for i, (f, o) in enumerate(zip(frames, offsets)):
            if (len(f) != len(o) or not f or f[0] != 0 or any(b <= a for a, b in zip(f, f[1:]))
                    or any(b <= a for a, b in zip(o, o[1:])) or o[0] < ivf.HEADER or o[-1] >= sizes[i]
                    or f[-1] >= num_frames[i]):
                raise FormatError(f"row {i} ({table['keys'][i]}): keyframe table is inconsistent "
                                  "(must start at frame 0, increase, and lie inside the sample)")
        ptr, kf_frames = _csr(frames)
        return {"kf_ptr": ptr, "kf_frames": kf_frames, "kf_offsets": _csr(offsets)[1]}

    def cut(self, t, row, start, span):
        """From the last keyframe at or before `start` to the first at or after `start + span` (or
        the end): a stream that decodes on its own and holds the window. Example: keyframes 0, 16,
        32, 48 of 64 frames, window [20, 36) -> frames [16, 48), the window is frames 4..19 of it."""
        lo, hi = int(t.kf_ptr[row]), int(t.kf_ptr[row + 1])
        frames = t.kf_frames[lo:hi]
        k = lo + int(np.searchsorted(frames, start, side="right")) - 1
        j = lo + int(np.searchsorted(frames, start + span, side="left"))
        nf, size = int(t.columns["num_frames"][row]), int(t.columns["size"][row])
        end_frame, end_byte = (int(t.kf_frames[j]), int(t.kf_offsets[j])) if j < hi else (nf, size)
        first = int(t.kf_frames[k])
        return Cut(int(t.kf_offsets[k]), end_byte, first, end_frame - first)

    def window_bytes(self, reader, row, c):
        # the member's 32-byte IVF header (its frame count set to the cut's) + the cut's records
        return ivf.cut_stream(reader.read(row, 0, ivf.HEADER), reader.read(row, c.begin, c.end), c.num_frames)

    def sample_lists(self, data):
        frames, offsets = ivf.keyframes(data)  # where a reader may cut the stream (FORMAT.md)
        return {"keyframes": frames, "keyframe_offsets": offsets}

    def row_lists(self, arrays, row):
        lo, hi = int(arrays["kf_ptr"][row]), int(arrays["kf_ptr"][row + 1])
        return {"keyframes": arrays["kf_frames"][lo:hi].tolist(), "keyframe_offsets": arrays["kf_offsets"][lo:hi].tolist()}

    def check_sample(self, data, lists):
        got = ivf.keyframes(data)
        want = (lists["keyframes"], lists["keyframe_offsets"])
        return [] if (list(got[0]), list(got[1])) == (list(want[0]), list(want[1])) else [
            "keyframes differ from the table's"]


class StillImage(StorageFormat):
    """One JPEG per sample (`--layout images`): a one-frame video for the pan/zoom graph."""

    name, ext = "jpeg", "jpg"


class JpegFrames(StorageFormat):
    """Every frame a baseline 4:2:0 JPEG, concatenated in one member (`--codec jpeg`).

    `frame_offsets[r]` lists the first byte of each of row r's frames within its member (the first
    is 0); frame i is bytes [offsets[i], offsets[i + 1]) and the last runs to the member's end. A
    window [start, start + span) is the bytes from its first frame to the end of its last, cut
    exactly: nothing outside the window is read or decoded.
    """

    name, ext = "jpeg_frames", "jpgs"
    list_columns = ("frame_offsets",)
    arrays = "fo_"
    cuts = True

    def build_defaults(self, args) -> None:
        args.gop = 1 if args.gop is None else args.gop  # every frame stands alone
        args.segment_frames = 0 if args.segment_frames is None else args.segment_frames

    def read_lists(self, table, n, sizes, num_frames):
        offsets = table.get("frame_offsets")
        if offsets is None or len(offsets) != n:
            raise FormatError("frame_offsets column missing or of the wrong length (a jpeg_frames build "
                              "lists every frame's first byte)")
        for i, o in enumerate(offsets):
            if (len(o) != num_frames[i] or not o or o[0] != 0 or any(b <= a for a, b in zip(o, o[1:]))
                    or o[-1] >= sizes[i]):
                raise FormatError(f"row {i} ({table['keys'][i]}): frame_offsets inconsistent (one per frame, "
                                  "from 0, increasing, inside the sample)")
        ptr, flat = _csr(offsets)
        return {"fo_ptr": ptr, "fo_offsets": flat}

    def cut(self, t, row, start, span):
        lo = int(t.fo_ptr[row])
        nf, size = int(t.columns["num_frames"][row]), int(t.columns["size"][row])
        end = min(start + span, nf)
        return Cut(int(t.fo_offsets[lo + start]), int(t.fo_offsets[lo + end]) if end < nf else size, start, end - start)

    def frame_bounds(self, t: "ShardTable", row: int, c: Cut) -> np.ndarray:
        """(num_frames + 1,) byte bounds of the cut's frames, relative to `c.begin`."""
        lo = int(t.fo_ptr[row]) + c.first_frame
        return np.append(t.fo_offsets[lo:lo + c.num_frames], c.end) - c.begin

    def sample_lists(self, data):
        return {"frame_offsets": jpeg_frame_offsets(data)}

    def row_lists(self, arrays, row):
        return {"frame_offsets": arrays["fo_offsets"][int(arrays["fo_ptr"][row]):int(arrays["fo_ptr"][row + 1])].tolist()}

    def check_sample(self, data, lists):
        o = list(lists["frame_offsets"]) + [len(data)]
        bad = [i for i in range(len(o) - 1) if data[o[i]:o[i] + 2] != b"\xff\xd8" or data[o[i + 1] - 2:o[i + 1]] != b"\xff\xd9"]
        return [f"frames {bad[:5]} are not whole JPEGs at their frame_offsets"] if bad else []


def jpeg_frame_offsets(data: bytes) -> list[int]:
    """The first byte of each JPEG in a concatenation of baseline (one-scan) JPEGs.

    Walks each image's marker segments by their lengths to its scan, then to the end-of-image
    marker: inside the entropy-coded scan a 0xFF byte is always followed by 0x00 or a restart
    marker, so FF D9 there is the image's end (a byte search for FF D8 alone could match inside a
    table). Raises FormatError where the bytes are not such JPEGs.
    """
    offsets, pos, n = [], 0, len(data)
    while pos < n:
        if data[pos:pos + 2] != b"\xff\xd8":
            raise FormatError(f"no JPEG start (FF D8) at byte {pos} of {n}")
        offsets.append(pos)
        p = pos + 2
        while True:
            if p + 4 > n or data[p] != 0xFF:
                raise FormatError(f"JPEG at byte {pos}: bad marker at byte {p}")
            marker, length = data[p + 1], int.from_bytes(data[p + 2:p + 4], "big")
            p += 2 + length
            if marker == 0xDA:  # start of scan: its entropy-coded data runs to FF D9
                end = data.find(b"\xff\xd9", p)
                if end < 0:
                    raise FormatError(f"JPEG at byte {pos}: no end of image (FF D9)")
                pos = end + 2
                break
    return offsets


FORMATS = {f.name: f for f in (Ivf(), WholeVideo("webm"), WholeVideo("mp4"), StillImage(), JpegFrames())}
# every format's per-sample list columns (the builder writes those a sample carries), and the
# prefixes of the CSR arrays they become in a ShardTable's columns
LIST_COLUMNS = tuple(c for f in FORMATS.values() for c in f.list_columns)
ARRAY_PREFIXES = tuple(f.arrays for f in FORMATS.values() if f.arrays)


def format_named(name: str) -> StorageFormat:
    """The format stored as `encoding.container == name`."""
    try:
        return FORMATS[name]
    except KeyError:
        raise FormatError(f"unknown storage format {name!r} (this version knows {', '.join(FORMATS)}); "
                          "rebuild the shards, or update this checkout") from None


def format_of(info: dict) -> StorageFormat:
    """The storage format of a shard set's manifest (`_info.json`)."""
    enc = info.get("encoding") or {}
    if enc.get("media") == "image":
        return FORMATS["jpeg"]
    return format_named(enc.get("container", "webm"))
