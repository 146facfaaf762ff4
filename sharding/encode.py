"""Decode one input video with PyAV and re-encode it for training: short side S, constant frame rate,
yuv420p, VP9 (decodable by DALI's CPU and GPU backends) or H.264 (GPU only).

Every failure raises `VideoError` with a reason a person can act on; the builder records it in the
manifest's `errors` and goes on with the next video. An input that plays but holds fewer frames than
it declares keeps what decodes (`plan_frames`; the manifest's `warnings`).

Memory does not grow with a video's length: decode -> resize -> encode is streamed, holding a frame
or two plus the compressed output. A whole-video sample decodes once (`OnePassFrames` maps frames onto
the constant-rate grid as they come); a segmented one, or an input whose timestamps do not increase,
decodes twice: once for the timestamps (`probe`, `plan_frames`), then the frames (`resized_frames`).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import NamedTuple

import av
import numpy as np


# codec -> (PyAV encoder, default container format, its member extension)
CODECS = {
    "vp9": ("libvpx-vp9", "webm", "webm"),
    "h264": ("libx264", "mp4", "mp4"),
    "jpeg": ("pillow", "jpeg_frames", "jpgs"),  # JpegFramesEncoder: every frame a JPEG (sharding.formats)
}
# codec -> the containers it can be stored in (the container's name is the member's extension).
# IVF (VP8/VP9 only) is a 32-byte file header plus one 12-byte record header per frame, so a reader
# can cut out a valid stream that starts at any keyframe (FORMAT.md "keyframe-indexed samples").
CONTAINERS = {"vp9": ("webm", "ivf"), "h264": ("mp4",), "jpeg": ("jpeg_frames",)}


def default_container(codec: str, split: str) -> str:
    """`--container auto`: keyframe-indexed ivf for VP9 training builds, else the codec's default."""
    return "ivf" if codec == "vp9" and split == "train" else CODECS[codec][1]


class VideoError(Exception):
    """An input video that cannot be stored; the message is the reason shown in the manifest."""


@dataclass
class DecodedVideo:
    """A decoded, resized, constant-frame-rate video held as yuv420p planes.

    Attributes:
        frames: list of (H*3/2, W) uint8 arrays (PyAV's yuv420p ndarray layout).
        width, height: the output size (both even).
        fps: the constant output frame rate.
        src_width, src_height, src_fps: what the input said.
        vfr: True when the input's timestamps were not on a constant grid and frames were
            duplicated or dropped to reach `fps`.
    """

    frames: list[np.ndarray]
    width: int
    height: int
    fps: Fraction
    src_width: int
    src_height: int
    src_fps: float
    vfr: bool


def output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Scale so the short side is `short_side`, keep the aspect ratio, round both sides to even.

    >>> output_size(320, 240, 128)
    (170, 128)
    >>> output_size(240, 320, 128)
    (128, 170)
    """
    scale = short_side / min(width, height)
    w = max(2, 2 * round(width * scale / 2))
    h = max(2, 2 * round(height * scale / 2))
    return w, h


def _rate(stream) -> Fraction | None:
    for r in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if r is not None and 1 <= float(r) <= 240:
            return Fraction(r)
    return None


def cfr_indices(times: np.ndarray, fps: Fraction) -> np.ndarray:
    """Which decoded frame to show at each tick of a constant-rate grid starting at the first frame.

    The grid is t0 + k/fps for k = 0 .. round((t_last - t0) * fps); each tick takes the frame whose
    timestamp is nearest. A constant-rate input at `fps` maps onto itself; a variable-rate one has
    frames repeated (gaps) or dropped (bursts), as ffmpeg's fps filter does.

    >>> cfr_indices(np.array([0.0, 0.04, 0.08]), Fraction(25)).tolist()
    [0, 1, 2]
    >>> cfr_indices(np.array([0.0, 0.12]), Fraction(25)).tolist()
    [0, 0, 1, 1]
    """
    t0 = times[0]
    n = int(round((times[-1] - t0) * float(fps))) + 1
    grid = t0 + np.arange(n) / float(fps)
    right = np.searchsorted(times, grid, side="left").clip(1, len(times) - 1)
    left = right - 1
    pick_right = np.abs(times[right] - grid) < np.abs(grid - times[left])
    return np.where(pick_right, right, left)


class Probe(NamedTuple):
    """Pass 1 over an input: what decodes and when, before anything is resized or encoded.

    Attributes:
        num_decoded: frames that decoded (before `decode_error`, if any).
        times: each decoded frame's presentation time (s), or None when a frame had none.
        declared: the frame count the container declares (0: it does not say).
        src_width, src_height: the first decoded frame's size.
        src_rate: the stream's frame rate, if it states a plausible one.
        decode_error: what stopped decoding part-way (a truncated or corrupt stream), or None.
    """

    num_decoded: int
    times: np.ndarray | None
    declared: int
    src_width: int
    src_height: int
    src_rate: Fraction | None
    decode_error: str | None


class FramePlan(NamedTuple):
    """What to store: output frame j is decoded frame `indices[j]` (a constant-rate grid).

    Attributes:
        indices: decoded-frame index of every output frame.
        fps: the constant output frame rate.
        vfr: the grid repeats or drops frames (the input was not on a constant grid at `fps`).
        warning: why fewer frames than the container declares are stored (None: all of them).
    """

    indices: np.ndarray
    fps: Fraction
    vfr: bool
    warning: str | None


# A constant-rate grid this many times longer than the frames that exist (scaled by the rate
# change) comes from a bogus timestamp, not a real gap: e.g. last - first = 1e6 s.
MAX_GRID_RATIO = 10


def _open(path: str):
    if not os.path.exists(path):
        raise VideoError("file not found")
    if os.path.getsize(path) == 0:
        raise VideoError("empty file (0 bytes)")
    try:
        container = av.open(path)
    except Exception as e:  # PyAV raises several FFmpeg error classes
        raise VideoError(f"cannot open as a video container (truncated, or not a video): {e}") from None
    if not container.streams.video:
        container.close()
        raise VideoError("no video stream in the file")
    stream = container.streams.video[0]
    # One decoder thread, whatever the machine: FFmpeg's frame threads (the default count follows the
    # cores) hide a cut-off file's final decode error with 3 or more threads and report it with
    # fewer, so what is stored or listed for a damaged input would depend on the core count. The
    # builder runs one worker per core.
    stream.codec_context.thread_count = 1
    return container, stream


def probe(path: str) -> Probe:
    """Decode every frame of `path` once, keeping only its timestamp (memory: 8 bytes a frame).

    Raises:
        VideoError: missing/empty file, not a container, no video stream.
    """
    container, stream = _open(path)
    with container:
        rate, declared = _rate(stream), stream.frames  # 0 when the container does not say (webm, some AVIs)
        w, h = stream.codec_context.width, stream.codec_context.height
        times: list[float | None] = []
        error = None
        try:
            for frame in container.decode(stream):
                if not times:
                    w, h = frame.width, frame.height
                times.append(frame.time)
        except Exception as e:
            error = str(e) or type(e).__name__
    stamped = bool(times) and all(t is not None for t in times)
    return Probe(len(times), np.asarray(times, np.float64) if stamped else None, int(declared or 0), w, h,
                 rate, error)


def frame_count_warning(n: int, declared: int, decode_error: str | None, min_frames: int = 1,
                        strict: bool = False, span: float | None = None, rate: Fraction | None = None) -> str | None:
    """The policy for short, cut-off and broken inputs (`plan_frames`): the warning to list, if any.

    Fewer decoded frames than the container declares has two causes, told apart by time where the
    input has timestamps (`span`: last - first decoded frame time, s) and a stated `rate`: decoded
    frames that end well before the declared duration are a file cut off (a recording or download
    that stopped); decoded frames that span the whole declared duration are a complete video whose
    container counts entries that hold no frame (an AVI's empty "repeat the previous frame" chunks):
    the constant-rate grid restores those repeats, so nothing is missing (no warning, also with
    `strict`). Without timestamps the cause is not known and the message says so.

    Raises:
        VideoError: the input has nothing usable, or (with `strict`) any shortfall.
    """
    if n == 0:
        raise VideoError("no frames could be decoded (zero-frame or undecodable video)"
                         + (f": {decode_error}" if decode_error else ""))
    short = bool(declared) and n + max(2, declared // 50) < declared
    of = f" of the {declared} the container declares" if short else ""
    if decode_error is not None:
        if strict or n < min_frames:
            raise VideoError(f"decode error after {n} frames{of} (truncated or corrupt): {decode_error}")
        return f"decode error after {n} frames{of} (truncated or corrupt); the {n} frames before it are stored"
    if not short:
        return None
    if span is not None and rate:
        declared_s, decoded_s = declared / float(rate), span + 1 / float(rate)
        if decoded_s >= declared_s - 2 / float(rate):
            return None  # plays completely: the missing entries are repeats, restored by the grid
        cause = (f"they end at {decoded_s:.2f} s of the {declared_s:.2f} s it declares: the file is cut off, "
                 "as a recording or download that stopped")
    else:
        cause = "the input has no timestamps to tell a cut-off file from entries that hold no frame"
    if strict:
        raise VideoError(f"only {n} of the {declared} frames the container declares could be decoded ({cause})")
    return f"only {n} of the {declared} frames the container declares decode ({cause}); those are stored"


def output_rate(fps: float | None, src_rate: Fraction | None) -> Fraction:
    """`--fps`, else the input's stated rate, else 25."""
    return Fraction(fps).limit_denominator(1001) if fps else (src_rate or Fraction(25))


def grid_limit(n: int, declared: int, out_fps: Fraction, src_rate: Fraction | None) -> float:
    """The longest constant-rate grid `n` decoded frames may become (`MAX_GRID_RATIO`)."""
    rate_change = float(out_fps) / float(src_rate) if src_rate else 1.0
    return MAX_GRID_RATIO * max(n, declared) * max(1.0, rate_change) + 100


def plan_frames(pr: Probe, fps: float | None = None, min_frames: int = 1, strict: bool = False) -> FramePlan:
    """Decide what of a probed input is stored: the policy for short, cut-off and broken inputs.

    A video keeps what decodes. When fewer frames decode than the container declares (a header
    written before the recording or the download stopped), or a decode error stops the stream after
    at least `min_frames` frames (one clip's worth), the frames before it are stored with a warning.
    Only inputs with nothing usable are errors.

    Args:
        pr: the input's `probe`.
        fps: output frame rate; None keeps the input's rate (25 if it states none).
        min_frames: frames a decode error must come after for the frames before it to be kept.
        strict: `--strict-frame-count`: every shortfall above is an error instead.

    Raises:
        VideoError: no frame decodes; a decode error before `min_frames` frames (or any, with
            `strict`); a declared-count shortfall with `strict`; a constant-rate grid over
            `MAX_GRID_RATIO` times the frames that exist (a bogus timestamp).
    """
    n, declared = pr.num_decoded, pr.declared
    span = float(pr.times.max() - pr.times.min()) if pr.times is not None else None
    warning = frame_count_warning(n, declared, pr.decode_error, min_frames, strict, span, pr.src_rate)
    out_fps = output_rate(fps, pr.src_rate)
    if pr.times is None or n == 1:
        return FramePlan(np.arange(n), out_fps, False, warning)
    t = pr.times
    order = np.argsort(t, kind="stable")
    span = float(t[order[-1]] - t[order[0]])
    grid = int(round(span * float(out_fps))) + 1
    limit = grid_limit(n, declared, out_fps, pr.src_rate)
    if grid > limit:
        raise VideoError(f"timestamps span {span:.6g} s over {n} decoded frames: a constant {float(out_fps):g} "
                         f"fps grid would be {grid} frames (over {int(limit)}); a bogus timestamp?")
    idx = order[cfr_indices(t[order], out_fps)]
    vfr = not (len(idx) == n and np.array_equal(idx, np.arange(n)))
    return FramePlan(idx if vfr else np.arange(n), out_fps, vfr, warning)


class NeedTwoPasses(Exception):
    """`OnePassFrames` cannot map this input as it decodes (timestamps that do not increase, or a
    grid that may be bogus): use `probe` -> `plan_frames` -> `resized_frames`, which decide on all
    timestamps at once (the same frames wherever both apply)."""


class _LazyPlanes:
    """One decoded frame, resized to yuv420p planes the first time they are asked for (a frame the
    constant-rate grid drops is never resized; one it repeats is resized once)."""

    def __init__(self, frame, width: int, height: int):
        self.frame, self.width, self.height, self._planes = frame, width, height, None

    def planes(self) -> np.ndarray:
        if self._planes is None:
            self._planes = self.frame.reformat(width=self.width, height=self.height, format="yuv420p",
                                               interpolation="AREA").to_ndarray()
            self.frame = None
        return self._planes


class OnePassFrames:
    """Decode -> resize -> constant-rate grid in one pass, for whole-video samples (eval, ivf).

    Iterating yields the output frames of `plan_frames` + `resized_frames` without a timestamps
    pass: grid tick g = t0 + k/fps takes the decoded frame nearest to it, which is known as soon
    as the first frame at or after g has decoded, so at most two decoded frames are held (each
    resized only if the grid takes it). After the iteration, the attributes say what was decoded
    (`probe`'s fields), `num_out` and `vfr`.

    Raises (while iterating):
        VideoError: as `probe` (file, container, stream).
        NeedTwoPasses: timestamps that do not increase, a stamped stream with an unstamped frame,
            or a grid past `grid_limit` so far (the two passes decide it on all frames).
    """

    def __init__(self, path: str, short_side: int, fps: float | None = None):
        self.path, self.short_side, self.fps_arg = path, short_side, fps
        self.num_decoded = self.num_out = self.declared = 0
        self.src_width = self.src_height = self.width = self.height = 0
        self.src_rate: Fraction | None = None
        self.fps = Fraction(25)
        self.decode_error: str | None = None
        self.vfr = False
        self.span: float | None = None  # last - first decoded frame time (s), when stamped

    def __iter__(self) -> Iterator[np.ndarray]:
        container, stream = _open(self.path)
        with container:
            self.src_rate, self.declared = _rate(stream), int(stream.frames or 0)
            self.src_width, self.src_height = stream.codec_context.width, stream.codec_context.height
            self.fps = output_rate(self.fps_arg, self.src_rate)
            step = float(self.fps)
            frames = container.decode(stream)
            stamped, identity, k = False, True, 0
            prev = t0 = t_prev = None
            while True:
                try:
                    frame = next(frames)
                except StopIteration:
                    break
                except Exception as e:  # a decode error part-way: the policy decides (plan_frames)
                    self.decode_error = str(e) or type(e).__name__
                    break
                i, t = self.num_decoded, frame.time
                self.num_decoded += 1
                if i == 0:
                    self.src_width, self.src_height = frame.width, frame.height
                    self.width, self.height = output_size(frame.width, frame.height, self.short_side)
                    stamped = t is not None
                cur = _LazyPlanes(frame, self.width, self.height)  # resized only if the grid takes it
                if not stamped:  # no timestamps: every frame as it comes (plan_frames does the same)
                    self.num_out += 1
                    yield cur.planes()
                    continue
                if t is None or (i > 0 and t <= t_prev):
                    raise NeedTwoPasses(f"frame {i} has time {t} after {t_prev}")
                if i == 0:
                    prev, t0, t_prev = cur, t, t
                    continue
                # ticks in (t_prev, t] (and tick 0 = t0): the nearer of frames i-1 and i; ties: i-1
                while (g := t0 + k / step) <= t:
                    if k + 1 > grid_limit(i + 1, self.declared, self.fps, self.src_rate):
                        raise NeedTwoPasses(f"grid of {k + 1} frames for {i + 1} decoded so far")
                    take_new = (t - g) < (g - t_prev)
                    identity &= k == (i if take_new else i - 1)
                    k += 1
                    self.num_out += 1
                    yield (cur if take_new else prev).planes()
                prev, t_prev = cur, t
            if stamped:  # ticks past the last frame's time (round up) show the last frame
                self.span = t_prev - t0
                n = int(round((t_prev - t0) * step)) + 1
                if n > grid_limit(self.num_decoded, self.declared, self.fps, self.src_rate):
                    raise NeedTwoPasses(f"grid of {n} frames for {self.num_decoded} decoded")
                while k < n:
                    identity &= k == self.num_decoded - 1
                    k += 1
                    self.num_out += 1
                    yield prev.planes()
            self.vfr = stamped and not (identity and self.num_out == self.num_decoded)


def resized_frames(path: str, pr: Probe, plan: FramePlan, short_side: int) -> Iterator[np.ndarray]:
    """Pass 2: yield the planned output frames in order, as (H*3/2, W) yuv420p arrays at
    `output_size(pr.src_width, pr.src_height, short_side)`, decoding the input once more.

    A decoded frame is held only while a later output frame still needs it: one frame for any input
    whose timestamps increase, so memory does not grow with the video's length.

    Raises:
        VideoError: the input decodes to fewer frames than in `probe` (it changed in between).
    """
    out_w, out_h = output_size(pr.src_width, pr.src_height, short_side)
    idx = plan.indices
    last_use = np.full(pr.num_decoded, -1, np.int64)
    np.maximum.at(last_use, idx, np.arange(len(idx)))
    held: dict[int, np.ndarray] = {}
    j = 0
    container, stream = _open(path)
    with container:
        frames = container.decode(stream)
        for i in range(int(idx.max()) + 1):
            try:
                frame = next(frames)
            except (StopIteration, Exception) as e:
                raise VideoError(f"decoded {i} frames on the second pass, {pr.num_decoded} on the first "
                                 f"({e or 'end of stream'}); did the file change?") from None
            if last_use[i] < j:
                continue  # dropped by the constant-rate grid
            held[i] = frame.reformat(width=out_w, height=out_h, format="yuv420p",
                                     interpolation="AREA").to_ndarray()
            while j < len(idx) and int(idx[j]) in held:
                k = int(idx[j])
                yield held[k]
                j += 1
                if last_use[k] < j:
                    del held[k]
    if j != len(idx):
        raise VideoError(f"only {j} of {len(idx)} planned frames were produced")


def decode(path: str, short_side: int = 128, fps: float | None = None,
           strict_frame_count: bool = True) -> DecodedVideo:
    """Decode all frames of `path` into memory, resized, at a constant frame rate (short inputs
    and one-off uses; the builder streams: `OnePassFrames`, or `probe` -> `plan_frames` -> `resized_frames`).

    Args:
        path: the input video file.
        short_side: the output's shorter side in pixels (even; 128 is the GPU VP9 decoder's minimum).
        fps: output frame rate; None keeps the input's average rate.
        strict_frame_count: reject an input that decodes fewer frames than it declares or stops at
            a decode error (False: keep what decodes, `plan_frames`).

    Raises:
        VideoError: as `probe` and `plan_frames`.
    """
    pr = probe(path)
    plan = plan_frames(pr, fps, 1, strict_frame_count)
    frames = list(resized_frames(path, pr, plan, short_side))
    w, h = output_size(pr.src_width, pr.src_height, short_side)
    return DecodedVideo(frames, w, h, plan.fps, pr.src_width, pr.src_height,
                        float(pr.src_rate) if pr.src_rate else float("nan"), plan.vfr)


def encoder_options(codec: str, container: str, crf: int, speed: int, gop: int) -> dict[str, str]:
    """The encoder's options (besides one thread and `gop_size = gop`): VP9 constant quality without
    lag or alt-ref frames (packets in frame order), keyframes exactly every `gop` frames in ivf;
    H.264 without B-frames."""
    if codec == "vp9":
        opts = {"crf": str(crf), "b:v": "0", "deadline": "good", "cpu-used": str(speed),
                "lag-in-frames": "0", "auto-alt-ref": "0"}
        return {**opts, "keyint_min": str(gop)} if container == "ivf" else opts
    return {"crf": str(crf), "preset": "veryfast", "bf": "0"}


class JpegFramesEncoder:
    """Encode yuv420p frames one at a time as baseline 4:2:0 JPEGs (Pillow's libjpeg-turbo),
    concatenated: the `jpeg_frames` format (sharding.formats). The frame goes to RGB with swscale's
    default (BT.601) conversion and back to YCbCr 4:2:0 in the JPEG encoder. Same interface as
    `StreamEncoder`."""

    def __init__(self, width: int, height: int, quality: int = 90):
        self.quality = quality  # (the frames carry their size)
        self.parts: list[bytes] = []

    def add(self, planes: np.ndarray) -> None:
        from PIL import Image

        rgb = av.VideoFrame.from_ndarray(planes, format="yuv420p").to_ndarray(format="rgb24")
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "JPEG", quality=self.quality, subsampling=2, optimize=False,
                                  progressive=False)  # 2 = 4:2:0, the decoders' fast path
        self.parts.append(buf.getvalue())

    def finish(self) -> bytes:
        if not self.parts:
            raise VideoError("no frame was encoded")
        return b"".join(self.parts)


class StreamEncoder:
    """Encode yuv420p frames one at a time into one in-memory container (webm or ivf for VP9, mp4
    for H.264); `finish()` returns the bytes. Only the compressed output is kept.

    The stream starts with a keyframe, so every stored sample decodes on its own. One encoder thread:
    the builder runs one process per core, and a single thread keeps the bytes reproducible. In an
    ivf container the keyframes are forced to every `gop`-th frame exactly (minimum = maximum
    keyframe distance), so a window's decode never starts more than gop - 1 frames early.
    """

    def __init__(self, width: int, height: int, fps: Fraction, codec: str = "vp9", crf: int = 32,
                 speed: int = 5, gop: int = 64, container: str | None = None):
        enc_name, container_fmt, _ = CODECS[codec]
        container_fmt = container or container_fmt
        if container_fmt not in CONTAINERS[codec]:
            raise ValueError(f"{codec} cannot be stored in {container_fmt} (choose from {CONTAINERS[codec]})")
        self.buf = io.BytesIO()
        # bitexact: no random segment UID or muxer version string, so the same frames give the same bytes
        self.out = av.open(self.buf, "w", format=container_fmt, options={"fflags": "+bitexact"})
        stream = self.out.add_stream(enc_name, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.thread_count = 1
        stream.codec_context.gop_size = gop
        stream.options = encoder_options(codec, container_fmt, crf, speed, gop)
        self.stream, self.frames, self.packets = stream, 0, 0

    def add(self, planes: np.ndarray) -> None:
        vf = av.VideoFrame.from_ndarray(planes, format="yuv420p")
        vf.pts = self.frames
        self.frames += 1
        for p in self.stream.encode(vf):
            self.out.mux(p)
            self.packets += 1

    def finish(self) -> bytes:
        """Flush and close; the container's bytes.

        Raises:
            VideoError: if the muxed packet count differs from the frame count (a frame was lost).
        """
        for p in self.stream.encode():
            self.out.mux(p)
            self.packets += 1
        self.out.close()
        if self.packets != self.frames:
            raise VideoError(f"encoder produced {self.packets} packets for {self.frames} frames")
        return self.buf.getvalue()


def encode(frames: list[np.ndarray], width: int, height: int, fps: Fraction, codec: str = "vp9",
           crf: int = 32, speed: int = 5, gop: int = 64, container: str | None = None) -> bytes:
    """Encode a list of yuv420p frames (`StreamEncoder` in one call; same bytes).

    Raises:
        VideoError: if the muxed packet count differs from the frame count (a frame was lost).
    """
    enc = StreamEncoder(width, height, fps, codec, crf, speed, gop, container)
    for planes in frames:
        enc.add(planes)
    return enc.finish()
