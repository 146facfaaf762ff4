"""Tiny real videos for tests, encoded with PyAV. Frame i is a smooth pattern whose brightness
follows i, so a decode can be checked against the truth (`true_frame`)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def true_frame(i: int, width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint8: a diagonal gradient shifted by 7*i, smooth enough to survive lossy codecs."""
    y, x = np.mgrid[0:height, 0:width]
    base = (x * 255 // max(width - 1, 1) + y * 128 // max(height - 1, 1) + 7 * i) % 256
    return np.stack([base, (base + 85) % 256, np.full_like(base, (40 + 9 * i) % 256)], -1).astype(np.uint8)


def write_video(path: Path, num_frames: int = 40, width: int = 172, height: int = 128, fps: int = 25,
                codec: str = "libx264", container: str | None = None, pts: list[int] | None = None,
                time_base: Fraction | None = None) -> Path:
    """Encode `num_frames` frames of `true_frame`. `pts` (in `time_base` units) makes a
    variable-frame-rate file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if time_base is not None:
            stream.codec_context.time_base = time_base
            stream.time_base = time_base
        stream.codec_context.thread_count = 1  # the same bytes on any machine (threads follow the cores)
        if codec == "libx264":
            stream.options = {"bf": "0"}
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(true_frame(i, width, height), format="rgb24")
            if pts is not None:
                frame.pts = pts[i]
                frame.time_base = time_base
            for p in stream.encode(frame):
                out.mux(p)
        for p in stream.encode():
            out.mux(p)
    return path
