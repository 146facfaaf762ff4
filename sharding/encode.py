"""Decode one input video with PyAV and re-encode it for training: short side S, constant frame rate,
yuv420p, VP9 (decodable by DALI's CPU and GPU backends) or H.264 (GPU only).

Every failure raises `VideoError` with a reason a person can act on; the builder records it in the
manifest's `errors` and goes on with the next video.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np


# codec -> (PyAV encoder, default container format, its member extension)
CODECS = {
    "vp9": ("libvpx-vp9", "webm", "webm"),
    "h264": ("libx264", "mp4", "mp4"),
}
# codec -> the containers it can be stored in (the container's name is the member's extension).
# IVF (VP8/VP9 only) is a 32-byte file header plus one 12-byte record header per frame, so a reader
# can cut out a valid stream that starts at any keyframe (FORMAT.md "keyframe-indexed samples").
CONTAINERS = {"vp9": ("webm", "ivf"), "h264": ("mp4",)}


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


def decode(path: str, short_side: int = 128, fps: float | None = None) -> DecodedVideo:
    """Decode all frames of `path`, resize them and convert to a constant frame rate.

    Args:
        path: the input video file.
        short_side: the output's shorter side in pixels (even; 128 is the GPU VP9 decoder's minimum).
        fps: output frame rate; None keeps the input's average rate.

    Raises:
        VideoError: missing/empty/unreadable file, no video stream, a decode error part-way (a
            truncated file: its frames are not stored, since a silently shortened video is a lie),
            or no frames at all.
    """
    if not os.path.exists(path):
        raise VideoError("file not found")
    if os.path.getsize(path) == 0:
        raise VideoError("empty file (0 bytes)")
    try:
        container = av.open(path)
    except Exception as e:  # PyAV raises several FFmpeg error classes
        raise VideoError(f"cannot open as a video container: {e}") from None
    with container:
        if not container.streams.video:
            raise VideoError("no video stream in the file")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        src_rate = _rate(stream)
        declared = stream.frames  # 0 when the container does not say (webm, some AVIs)
        src_w, src_h = stream.codec_context.width, stream.codec_context.height
        out_w = out_h = None
        frames: list[np.ndarray] = []
        times: list[float | None] = []
        try:
            for frame in container.decode(stream):
                if out_w is None:
                    src_w, src_h = frame.width, frame.height
                    out_w, out_h = output_size(src_w, src_h, short_side)
                small = frame.reformat(width=out_w, height=out_h, format="yuv420p", interpolation="AREA")
                frames.append(small.to_ndarray())
                times.append(frame.time)
        except Exception as e:
            raise VideoError(f"decode error after {len(frames)} frames (truncated or corrupt): {e}") from None
    if not frames:
        raise VideoError("no frames could be decoded (zero-frame or undecodable video)")
    if declared and len(frames) + max(2, declared // 50) < declared:
        # a cut-off AVI/MP4 often decodes "cleanly" up to where it ends; its header still knows better
        raise VideoError(f"only {len(frames)} of the {declared} frames the container declares could be "
                         "decoded (truncated file?)")
    out_fps = Fraction(fps).limit_denominator(1001) if fps else (src_rate or Fraction(25))
    vfr = False
    if all(t is not None for t in times) and len(frames) > 1:
        t = np.asarray(times, dtype=np.float64)
        order = np.argsort(t, kind="stable")
        idx = order[cfr_indices(t[order], out_fps)]
        vfr = not (len(idx) == len(frames) and np.array_equal(idx, np.arange(len(frames))))
        if vfr:
            frames = [frames[i] for i in idx]
    return DecodedVideo(frames, out_w, out_h, out_fps, src_w, src_h,
                        float(src_rate) if src_rate else float("nan"), vfr)


def encode(frames: list[np.ndarray], width: int, height: int, fps: Fraction, codec: str = "vp9",
           crf: int = 32, speed: int = 5, gop: int = 64, container: str | None = None) -> bytes:
    """Encode yuv420p frames into one in-memory container (webm or ivf for VP9, mp4 for H.264).

    The stream starts with a keyframe, so every stored sample decodes on its own. One encoder thread:
    the builder runs one process per core, and a single thread keeps the bytes reproducible. In an
    ivf container the keyframes are forced to every `gop`-th frame exactly (minimum = maximum
    keyframe distance), so a window's decode never starts more than gop - 1 frames early.

    Raises:
        VideoError: if the muxed packet count differs from the frame count (a frame was lost).
    """
    enc_name, container_fmt, _ = CODECS[codec]
    container_fmt = container or container_fmt
    if container_fmt not in CONTAINERS[codec]:
        raise ValueError(f"{codec} cannot be stored in {container_fmt} (choose from {CONTAINERS[codec]})")
    buf = io.BytesIO()
    # bitexact: no random segment UID or muxer version string, so the same frames give the same bytes
    out = av.open(buf, "w", format=container_fmt, options={"fflags": "+bitexact"})
    stream = out.add_stream(enc_name, rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.codec_context.thread_count = 1
    stream.codec_context.gop_size = gop
    if codec == "vp9":
        stream.options = {"crf": str(crf), "b:v": "0", "deadline": "good", "cpu-used": str(speed),
                          "lag-in-frames": "0", "auto-alt-ref": "0"}
        if container_fmt == "ivf":
            stream.options = {**stream.options, "keyint_min": str(gop)}
    else:
        stream.options = {"crf": str(crf), "preset": "veryfast", "bf": "0"}
    packets = 0
    for i, planes in enumerate(frames):
        vf = av.VideoFrame.from_ndarray(planes, format="yuv420p")
        vf.pts = i
        for p in stream.encode(vf):
            out.mux(p)
            packets += 1
    for p in stream.encode():
        out.mux(p)
        packets += 1
    out.close()
    if packets != len(frames):
        raise VideoError(f"encoder produced {packets} packets for {len(frames)} frames")
    return buf.getvalue()
