"""`python -m benchmarks.colour_conversion`: what DALI's CPU video decoder pays per frame to turn
YUV 4:2:0 into RGB, against the same library with default flags.

    python -m benchmarks.colour_conversion                  # 172x128, the synthetic shards' size
    python -m benchmarks.colour_conversion --size 228x128 --frames 2000

DALI 2.4's CPU decoder converts every delivered frame with the libswscale it bundles
(`nvidia/dali/.libs/libswscale-*.so*`), through a context made per decoded sample with
`SWS_BILINEAR | SWS_FULL_CHR_H_INT | SWS_ACCURATE_RND` (0x42002, read from the call in
`libdali_operators.so`: `FramesDecoderCpu::CopyToOutput`). Those two extra flags take swscale off its
SIMD YUV->RGB path onto per-pixel C code. This script loads that same library through ctypes and
times, on one thread, `sws_scale` of one frame and `sws_getContext` under each flag set, so the
figure is the library's, not a guess: the loader's perf profile (benchmarks/RESULTS.md) puts the
conversion at ~18% of the DALI graph's CPU time. No pixel data leaves this script; the frame is
random.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

AV_PIX_FMT_YUV420P, AV_PIX_FMT_RGB24 = 0, 2
SWS_BILINEAR, SWS_FULL_CHR_H_INT, SWS_ACCURATE_RND = 0x2, 0x2000, 0x40000
DALI_FLAGS, DEFAULT_FLAGS = "dali (bilinear | full_chr_h_int | accurate_rnd)", "bilinear (swscale's SIMD path)"
FLAG_SETS = {
    DALI_FLAGS: SWS_BILINEAR | SWS_FULL_CHR_H_INT | SWS_ACCURATE_RND,
    "bilinear | accurate_rnd": SWS_BILINEAR | SWS_ACCURATE_RND,
    "bilinear | full_chr_h_int": SWS_BILINEAR | SWS_FULL_CHR_H_INT,
    DEFAULT_FLAGS: SWS_BILINEAR,
}


def dali_swscale() -> ctypes.CDLL:
    """The libswscale DALI's wheel bundles (raises FileNotFoundError without DALI)."""
    import nvidia.dali

    libs = sorted(glob.glob(os.path.join(os.path.dirname(nvidia.dali.__file__), ".libs", "libswscale*.so*")))
    if not libs:
        raise FileNotFoundError("no libswscale in nvidia/dali/.libs: is nvidia-dali installed from its wheel?")
    lib = ctypes.CDLL(libs[0])
    lib.sws_getContext.restype = ctypes.c_void_p
    lib.sws_getContext.argtypes = [ctypes.c_int] * 7 + [ctypes.c_void_p] * 3
    lib.sws_scale.restype = ctypes.c_int
    lib.sws_scale.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int),
                              ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p),
                              ctypes.POINTER(ctypes.c_int)]
    lib.sws_freeContext.argtypes = [ctypes.c_void_p]
    lib._path = libs[0]
    return lib


def time_flags(lib, width: int, height: int, flags: int, frames: int, seed: int = 0) -> dict:
    """CPU-ms of one `sws_scale` (mean over `frames`) and of one `sws_getContext` under `flags`."""
    rng = np.random.default_rng(seed)
    pad = 64  # swscale's SIMD code may read and write a little past a plane's last pixel
    y_ls, c_ls = -(-width // pad) * pad, -(-((width + 1) // 2) // pad) * pad
    y = rng.integers(0, 256, (height + 8, y_ls), dtype=np.uint8)
    u = rng.integers(0, 256, ((height + 1) // 2 + 8, c_ls), dtype=np.uint8)
    v = rng.integers(0, 256, ((height + 1) // 2 + 8, c_ls), dtype=np.uint8)
    rgb = np.zeros(height * width * 3 + 4096, np.uint8)
    src = (ctypes.c_void_p * 4)(y.ctypes.data, u.ctypes.data, v.ctypes.data, None)
    src_ls = (ctypes.c_int * 4)(y_ls, c_ls, c_ls, 0)
    dst = (ctypes.c_void_p * 4)(rgb.ctypes.data, None, None, None)
    dst_ls = (ctypes.c_int * 4)(width * 3, 0, 0, 0)  # DALI writes rows of width * 3 bytes

    def make():
        ctx = lib.sws_getContext(width, height, AV_PIX_FMT_YUV420P, width, height, AV_PIX_FMT_RGB24, flags,
                                 None, None, None)
        if not ctx:
            raise RuntimeError(f"sws_getContext failed for flags {flags:#x}")
        return ctx

    ctx = make()
    for _ in range(10):
        lib.sws_scale(ctx, src, src_ls, 0, height, dst, dst_ls)
    c0 = time.process_time()
    for _ in range(frames):
        lib.sws_scale(ctx, src, src_ls, 0, height, dst, dst_ls)
    scale_ms = 1000 * (time.process_time() - c0) / frames
    lib.sws_freeContext(ctx)
    n_ctx = max(20, frames // 10)
    c0 = time.process_time()
    for _ in range(n_ctx):
        lib.sws_freeContext(make())
    return {"flags": hex(flags), "scale_ms": scale_ms, "context_ms": 1000 * (time.process_time() - c0) / n_ctx}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.colour_conversion", description=__doc__.split("\n")[0])
    p.add_argument("--size", default="172x128", help="WIDTHxHEIGHT of the frame (default: the synthetic shards')")
    p.add_argument("--frames", type=int, default=1000, help="conversions timed per flag set")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    try:
        lib = dali_swscale()
    except (ImportError, FileNotFoundError) as e:
        print(f"skipped: {e}")
        return 0
    rows = {name: time_flags(lib, width, height, flags, args.frames) for name, flags in FLAG_SETS.items()}
    fast = rows[DEFAULT_FLAGS]
    print(f"YUV420P -> RGB24 at {width}x{height}, DALI's {os.path.basename(lib._path)}, one thread, CPU-ms:")
    for name, r in rows.items():
        print(f"  {name:<48} sws_scale {r['scale_ms']:7.4f} per frame ({r['scale_ms'] / fast['scale_ms']:5.1f}x)"
              f"  sws_getContext {r['context_ms']:6.3f}")
    dali = rows[DALI_FLAGS]
    print(f"per 16-frame clip: DALI's flags {16 * dali['scale_ms'] + dali['context_ms']:.2f} CPU-ms "
          f"(16 conversions + one context), default flags {16 * fast['scale_ms'] + fast['context_ms']:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"size": [width, height], "library": lib._path, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
