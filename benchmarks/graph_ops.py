"""`python -m benchmarks.graph_ops`: where the training graph's CPU time per clip goes, op by op.

    python -m benchmarks.graph_ops                    # the loader benchmark's synthetic ivf shards
    python -m benchmarks.graph_ops --seconds 3 --repeats 5 --json ops.json

The same 256 cut windows (16 frames of a keyframe-indexed ivf sample, `SampleReader.read_window`)
are fed from memory to one-thread CPU pipelines that stop at different points, so the differences
are what each step costs: `decode` (the decoder alone), `augment` (decode + the graph's own
`dali_pipelines.graphs.augment`: crop, flip and layout in one crop_mirror_normalize),
`cmn_dali_stats` (the augment of issues 15-22: the same plus the per-frame statistics as DALI
reductions), `slice_cmn_stats` (the one before: fn.slice, reductions on the (F, H, W, C) slice,
transposes, then crop_mirror_normalize for flip + layout). Variants run interleaved, `--repeats`
times each; CPU-ms per clip is this process's CPU time over the clips. Then the torch side per
clip on one thread: the loaders' `standardize.standardize` (per-frame statistics + the affine pass,
since issue 22), the affine pass alone (what torch did while DALI took the statistics), and
two-pass float32 statistics (mean, then mean of squared deviations) on (C, T, H, W) and on
contiguous (T, H, W, C).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

T, CROP, BATCH = 16, 112, 8
VARIANTS = ("decode", "augment", "cmn_dali_stats", "slice_cmn_stats")


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def windows(shards: str, n: int, seed: int = 0) -> list[tuple]:
    """n random (cut bytes, start in the cut, crop [x, y], flip) of a training shard set."""
    from sharding.reader import SampleReader, load_shards

    table = load_shards(shards, split="train")
    reader, rng = SampleReader(table), np.random.default_rng(seed)
    nf, w, h = (table.columns[k] for k in ("num_frames", "width", "height"))
    out = []
    for _ in range(n):
        row = int(rng.integers(len(table)))
        start = int(rng.integers(0, max(1, int(nf[row]) - T + 1)))
        data, s0 = reader.read_window(row, start, T)
        xy = np.array([rng.integers(0, int(w[row]) - CROP + 1), rng.integers(0, int(h[row]) - CROP + 1)], np.int32)
        out.append((np.frombuffer(data, np.uint8), np.int32(s0), xy, np.int32(rng.integers(2))))
    return out


def _dali_stats_augment(frames, crop_xy, flip):
    """The graph's augment of issues 15-22: crop_mirror_normalize, then per-frame statistics as DALI
    reductions on the (C, F, H, W) crop."""
    import nvidia.dali.math as dmath
    from nvidia.dali import fn, types

    from dali_pipelines.graphs import augment

    clips = augment(frames, crop=CROP, crop_xy=crop_xy, flip=flip)
    mean = fn.reductions.mean(clips, axis_names="CHW", keep_dims=True, dtype=types.FLOAT)  # (1, F, 1, 1)
    std = fn.reductions.std_dev(clips, mean, axis_names="CHW", keep_dims=True)
    scale = 1.0 / dmath.max(std, float(255.0 / np.sqrt(CROP * CROP * 3)))
    return clips, scale, -mean * scale


def _old_augment(frames, crop_xy, flip):
    """The graph's augment before issue 15: slice, statistics on the slice, CMN for flip + layout."""
    import nvidia.dali.math as dmath
    from nvidia.dali import fn, types

    f = fn.slice(frames, start=crop_xy, shape=[CROP, CROP], axis_names="WH")  # (F, crop, crop, C)
    mean = fn.reductions.mean(f, axis_names="HWC", keep_dims=True, dtype=types.FLOAT)
    std = fn.reductions.std_dev(f, mean, axis_names="HWC", keep_dims=True)
    scale = 1.0 / dmath.max(std, float(255.0 / np.sqrt(CROP * CROP * 3)))
    shift = -mean * scale
    scale, shift = (fn.transpose(t, perm=[3, 0, 1, 2]) for t in (scale, shift))  # (F,1,1,1) -> (1,F,1,1)
    clips = fn.crop_mirror_normalize(f, mirror=flip, dtype=types.UINT8, output_layout="CFHW")
    return clips, scale, shift


def pipeline(variant: str, items: list[tuple]):
    from nvidia.dali import fn, pipeline_def

    from dali_pipelines.graphs import augment

    pos = [0]

    def source():
        batch = [items[(pos[0] + k) % len(items)] for k in range(BATCH)]
        pos[0] += BATCH
        return [[b[0] for b in batch]] + [np.stack([b[j] for b in batch]) for j in (1, 2, 3)]

    @pipeline_def(batch_size=BATCH, num_threads=1, device_id=None, prefetch_queue_depth=2)
    def graph():
        encoded, start, crop_xy, flip = fn.external_source(source=source, num_outputs=4, batch=True)
        frames = fn.decoders.video(encoded, device="cpu", start_frame=start, sequence_length=T,
                                   pad_mode="edge")  # (T, H, W, C)
        if variant == "decode":
            return frames
        if variant == "augment":
            return augment(frames, crop=CROP, crop_xy=crop_xy, flip=flip)
        if variant == "cmn_dali_stats":
            return _dali_stats_augment(frames, crop_xy, flip)
        return _old_augment(frames, crop_xy, flip)

    pipe = graph()
    pipe.build()
    return pipe


def time_pipelines(items, seconds: float, repeats: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(repeats):
        for v in VARIANTS:
            pipe = pipeline(v, items)
            for _ in range(3):
                pipe.run()
            n, c0, t0 = 0, _cpu(), time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                pipe.run()
                n += BATCH
            out[v].append(1000 * (_cpu() - c0) / n)
            del pipe
    return out


def time_torch(seconds: float) -> dict[str, float]:
    import torch

    from dali_pipelines.standardize import standardize

    torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    cthw = torch.from_numpy(rng.integers(0, 256, (BATCH, 3, T, CROP, CROP), dtype=np.uint8))
    thwc = torch.from_numpy(rng.integers(0, 256, (BATCH, T, CROP, CROP, 3), dtype=np.uint8))
    scale, shift = torch.rand(BATCH, 1, T, 1, 1), torch.rand(BATCH, 1, T, 1, 1)
    floor = 255.0 / np.sqrt(CROP * CROP * 3)

    def two_pass_cthw():
        x = cthw.float()  # (B, C, T, H, W)
        x.sub_(x.mean(dim=(1, 3, 4), keepdim=True))
        var = x.square().mean(dim=(1, 3, 4), keepdim=True)
        return x.mul_(1.0 / var.sqrt_().clamp_min_(floor))

    def two_pass_thwc():
        x = thwc.reshape(BATCH * T, -1).float()  # (B*T, H*W*C): each frame contiguous
        x.sub_(x.mean(dim=1, keepdim=True))
        var = x.square().mean(dim=1, keepdim=True)
        x.mul_(1.0 / var.sqrt_().clamp_min_(floor))
        return x.view(BATCH, T, CROP, CROP, 3).permute(0, 4, 1, 2, 3).contiguous()  # -> (B, C, T, H, W)

    fns = {"standardize (the loaders': stats + affine)": lambda: standardize(cthw, "per_frame"),
           "affine pass alone (stats from DALI)": lambda: cthw.float().mul_(scale).add_(shift),
           "two-pass stats on (C, T, H, W)": two_pass_cthw,
           "two-pass stats on (T, H, W, C) + layout": two_pass_thwc}
    out = {}
    for name, f in fns.items():
        for _ in range(3):
            f()
        n, c0, t0 = 0, _cpu(), time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            f()
            n += BATCH
        out[name] = 1000 * (_cpu() - c0) / n
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.graph_ops", description=__doc__.split("\n")[0])
    p.add_argument("--shards", help="an ivf --split train set (default: the loader benchmark's synthetic one)")
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per variant and repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    shards = args.shards
    if shards is None:
        from benchmarks.synthetic import synthetic_shards

        shards = str(synthetic_shards())
    items = windows(shards, 256)
    dali = time_pipelines(items, args.seconds, args.repeats)
    med = {v: statistics.median(x) for v, x in dali.items()}
    print(f"CPU-ms per 16x112x112 clip, one DALI thread, median of {args.repeats} (all runs):")
    for v, x in dali.items():
        extra = "" if v == "decode" else f"  (+{med[v] - med['decode']:.2f} over decode)"
        print(f"  {v:<16} {med[v]:6.2f}  [{' '.join(f'{t:.2f}' for t in x)}]{extra}")
    torch_ms = time_torch(args.seconds / 2)
    print("torch, one thread, CPU-ms per clip:")
    for k, v in torch_ms.items():
        print(f"  {k:<40} {v:6.2f}")
    if args.json:
        args.json.write_text(json.dumps({"shards": shards, "dali_cpu_ms": dali, "dali_median": med,
                                         "torch_cpu_ms": torch_ms}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
