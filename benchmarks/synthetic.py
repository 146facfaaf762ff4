"""Synthetic benchmark data: textured moving videos encoded with PyAV, then `python -m sharding.build`.

Anyone can run the benchmarks with no dataset: the first run writes

```
CACHE/videos_{W}x{H}_n{N}_f{F}/<class>/<class>_NNN.webm     sources (VP9, 25 fps)
CACHE/shards_{codec}_ss{S}_seg{G}_n{N}_f{F}/                 a `--split train` build of them
```

and later runs reuse them (a build interrupted half-way resumes: sharding.build is resumable).

The content is meant to cost a realistic amount to decode, not to be learnable: a multi-octave noise
texture panning at a per-video velocity, a bright disc moving across it and mild per-frame noise, so
every frame has fresh detail and motion (a static or flat video would decode unrealistically fast).
"""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from sharding.encode import default_container

DEFAULT_CACHE = Path.home() / ".cache" / "zsvideo_benchmarks"
NUM_CLASSES = 4


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(height, width, 3) uint8 noise with detail at several scales (a crude fractal texture)."""
    acc = np.zeros((height, width, 3), np.float32)
    for cell, weight in ((32, 0.45), (8, 0.3), (2, 0.25)):
        small = rng.random((height // cell + 2, width // cell + 2, 3), dtype=np.float32)
        big = np.repeat(np.repeat(small, cell, axis=0), cell, axis=1)[:height, :width]
        acc += weight * big
    return (acc * 255).clip(0, 255).astype(np.uint8)


def video_frames(seed: int, num_frames: int, width: int, height: int):
    """Yield `num_frames` (height, width, 3) uint8 RGB frames of one synthetic video."""
    rng = np.random.default_rng(seed)
    vx, vy = rng.uniform(-2.5, 2.5, size=2)  # pixels per frame of the pan
    pad_x, pad_y = int(abs(vx) * num_frames) + 2, int(abs(vy) * num_frames) + 2
    tex = _texture(rng, height + pad_y, width + pad_x)
    x0, y0 = (0 if vx >= 0 else pad_x - 1), (0 if vy >= 0 else pad_y - 1)
    yy, xx = np.mgrid[0:height, 0:width]
    r = rng.uniform(0.1, 0.25) * height
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    dx, dy = rng.uniform(-3, 3, size=2)
    colour = rng.integers(0, 256, size=3).astype(np.uint8)
    for t in range(num_frames):
        ox, oy = int(x0 + vx * t), int(y0 + vy * t)
        frame = tex[oy: oy + height, ox: ox + width].copy()
        px, py = (cx + dx * t) % width, (cy + dy * t) % height
        frame[(xx - px) ** 2 + (yy - py) ** 2 < r * r] = colour
        noise = rng.integers(-6, 7, size=frame.shape, dtype=np.int16)
        yield (frame.astype(np.int16) + noise).clip(0, 255).astype(np.uint8)


def write_source_video(path: Path, seed: int, num_frames: int, width: int, height: int,
                       fps: int = 25) -> None:
    """Encode one synthetic video as VP9 webm (fast settings: the builder re-encodes anyway)."""
    tmp = path.with_suffix(".tmp.webm")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libvpx-vp9", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "30", "b:v": "0", "deadline": "realtime", "cpu-used": "8"}
        for frame in video_frames(seed, num_frames, width, height):
            for p in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(p)
        for p in stream.encode():
            out.mux(p)
    tmp.rename(path)


def source_videos(cache: Path, num_videos: int, num_frames: int, width: int, height: int) -> Path:
    """A folders-layout tree of synthetic videos (written once, reused); returns its root."""
    root = Path(cache) / f"videos_{width}x{height}_n{num_videos}_f{num_frames}"
    for i in range(num_videos):
        cls = f"class{i % NUM_CLASSES}"
        path = root / cls / f"{cls}_{i:03d}.webm"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_source_video(path, seed=i, num_frames=num_frames, width=width, height=height)
    return root


def synthetic_shards(cache: Path = DEFAULT_CACHE, *, num_videos: int = 32, num_frames: int = 250,
                     short_side: int = 128, segment_frames: int | None = None, codec: str = "vp9",
                     container: str = "auto", gop: int | None = None, workers: int = 2,
                     quiet: bool = True) -> Path:
    """Build (or reuse) training shards of synthetic videos; returns the shard folder.

    Args:
        cache: folder for the sources and the builds.
        num_videos, num_frames: how many videos and frames per video (25 fps).
        short_side: the shards' short side; sources are drawn at 4:3-ish (W = round(1.34 * S)
            to even, 172x128 for 128) at that size, so no build upsamples.
        segment_frames: the build's --segment-frames (0: whole videos, one sample each; None: the
            builder's default for the container).
        codec: 'vp9' or 'h264'.
        container, gop: the build's --container and --gop (None: the builder's default).
        workers: encoding processes of the build.
    """
    cache = Path(cache)
    height = short_side
    width = int(round(short_side * 172 / 128 / 2)) * 2
    src = source_videos(cache, num_videos, num_frames, width, height)
    if container == "auto":
        container = default_container(codec, "train")
    seg = "" if segment_frames is None else f"_seg{segment_frames}"
    g = "" if gop is None else f"_g{gop}"
    out = cache / f"shards_{codec}_{container}{g}_ss{short_side}{seg}_n{num_videos}_f{num_frames}"
    if (out / "_info.json").is_file():
        return out
    cmd = [sys.executable, "-m", "sharding.build", "--input", str(src), "--layout", "folders",
           "--split", "train", "--out", str(out), "--dataset", "synthetic", "--codec", codec,
           "--short-side", str(short_side), "--container", container,
           "--workers", str(workers), "--videos-per-shard", str(max(num_videos // 2, 1))]
    if segment_frames is not None:
        cmd += ["--segment-frames", str(segment_frames)]
    if gop is not None:
        cmd += ["--gop", str(gop)]
    if quiet:
        cmd.append("--quiet")
    subprocess.run(cmd, check=True)
    return out
