"""`python -m benchmarks.loader`: training-clip loaders against each other on the same shards.

    python -m benchmarks.loader                               # synthetic 172x128 VP9 shards, all loaders
    python -m benchmarks.loader --shards shards/k700_train --seconds 30 --json out.json
    python -m benchmarks.loader --loaders dali,dataloader_pyav --cores 2 --batch-size 8

Every loader does the same work per clip: one random 16-frame window of a random video, a random
112x112 crop, a clip-wide horizontal flip with p=0.5, per-frame standardization, float32
(C, T, H, W), batched. All draw their clips from `dali_pipelines.sampler.TrainSampler`, so they
decode the same windows of the same shards; only the machinery differs:

- `dali`: our training graph (`dali_pipelines.loader.make_train_loader`), CPU backend here, GPU
  (mixed decoder) with `--device gpu`;
- the peers (`benchmarks/baselines.py`): torch DataLoaders whose workers pread the sample's bytes
  from the tar (the shard table's offset/size) and decode the window from memory with decord
  (`dataloader_decord`), PyAV (`dataloader_pyav`: seek to the keyframe before the window, decode
  forward, convert only the window's frames) or torchcodec (`dataloader_torchcodec`, `--torchcodec`
  picks its seek mode and frame call), and SPDL's own thread-pool pipeline (`spdl`). A peer whose
  library is missing is skipped with what to install;
- `dali_whole_video`: our graph on a whole-video webm build of the same videos (no segments, no
  keyframe index), to show what the ivf cut buys (DALI decodes from frame 0 in memory: docs/DESIGN.md);
- the JPEG frames format, side by side: `dali_jpeg` is our graph on a `--codec jpeg` build of the
  same videos (DALI's image decoder on exactly the window's frames), against the JPEG peers of
  `benchmarks/baselines.py` (`dataloader_tv_jpeg`, `dataloader_pil_jpeg`, `spdl_jpeg`) on the same
  shards.

On the default (ivf, keyframe-indexed) shards, the peers read a webm build of the same videos with
the same keyframes (decord cannot open IVF), where they seek to the keyframe before the window:
every loader then decodes the same frames per clip.

Each loader runs in its own subprocess pinned to the same `--cores` CPUs (sched_setaffinity), so
its CPU time and memory are its own. Per loader: clips/s = median of `--windows` timed windows after
`--warmup` seconds; CPU cores used = CPU time of the process and its live descendants over the timed
part / wall time; peak RSS = the largest sum of RSS over the process and its descendants (sampled
every 0.1 s; the sum counts pages shared between forked processes once per process);
decoded/delivered = frames the decoder has to produce per delivered frame, modelled from the
delivered windows and the samples' keyframes (DALI: from the cut's keyframe on ivf shards, else from
frame 0 of the stored sample, to the window's end; the peers: from the keyframe at or before the
window).

The ceiling: DALI CPU full-decode frames/s of the same samples (all frames, RGB, `--threads`
threads, bytes preloaded) and PyAV full-decode frames/s (`--cores` processes, rgb24), the larger
one divided by the clip length: no loader decoding on these cores can beat it. Each format has its
own (on the JPEG frames: DALI's image decoder on batches of frames, and PyAV). Besides the speed,
each row gives the bytes a clip reads (the cut, the window's JPEGs, or a whole member) and each
shard set the bytes it stores per second of video.
"""


from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.baselines import (CLIP_LEN, CROP, JPEG_PEERS, PEERS, TORCHCODEC_DEFAULT, batches_peer, keep,
                                  peer_unavailable, window_jpegs)
from benchmarks.measure import ResourceMonitor, exit_now, machine_info  # exit_now: benchmarks.train uses it

LOADERS = ("dali", "dataloader_decord", "dataloader_pyav", "dataloader_torchcodec", "spdl", "dali_whole_video",
           "dali_jpeg", "dataloader_tv_jpeg", "dataloader_pil_jpeg", "spdl_jpeg")
JPEG_LOADERS = ("dali_jpeg",) + JPEG_PEERS  # they read the jpeg_frames build of the same videos
SEEKING_PEERS = frozenset(PEERS)  # they seek to the keyframe at or before the window


# ============================================================================ measurement (child side)

def batches_dali(cfg: dict):
    """Endless (clips, rows, starts) batches from our training loader."""
    from dali_pipelines.config import TrainDataConfig
    from dali_pipelines.loader import make_train_loader

    dcfg = TrainDataConfig(shards=cfg["shards"], batch_size=cfg["batch_size"], clip_len=CLIP_LEN,
                           crop=CROP, seed=cfg["seed"], num_threads=cfg["threads"],
                           device="gpu" if cfg["device"] == "gpu" else "cpu",
                           **({"py_workers": cfg["py_workers"]} if cfg["py_workers"] is not None else {}),
                           **({"prefetch": cfg["prefetch"]} if cfg["prefetch"] is not None else {}))
    loader = make_train_loader(dcfg, 0, 1, 0, "cuda:0" if cfg["device"] == "gpu" else "cpu")
    while True:
        for b in loader:
            yield b["clips"], keep(b["index"]), keep(b["start"])


def keyframes_of(data: bytes) -> np.ndarray:
    """Indices of the keyframes of an encoded sample (demux only; packets are in frame order: the
    build encodes without B-frames or VP9 alt-ref frames)."""
    import av

    with av.open(io.BytesIO(data)) as c:
        flags = [p.is_keyframe for p in c.demux(video=0) if p.size]
    return np.flatnonzero(flags)


def bytes_per_clip(shards: str, rows: np.ndarray, starts: np.ndarray, seeks: bool) -> float:
    """Bytes read per delivered clip: the window's cut where the format cuts (ivf: plus its 32-byte
    header; jpeg_frames: the window's JPEGs), else the whole member (the seeking peers too)."""
    from sharding.reader import load_shards

    table = load_shards(shards, split="train")
    total = 0
    for row, start in zip(rows.tolist(), starts.tolist()):
        c = None if seeks else table.cut(row, start, CLIP_LEN)
        total += int(table.columns["size"][row]) if c is None else c.end - c.begin + (32 if table.format.name == "ivf" else 0)
    return total / max(len(rows), 1)


def stored_bytes_per_video_second(shards: str) -> float:
    """Bytes of the shard set's tars per second of stored video (at the first sample's frame rate)."""
    import tarfile

    from sharding.reader import load_shards

    table = load_shards(shards, split="train")
    with tarfile.open(table.tar_paths[0]) as tar:
        key = str(table.columns["keys"][0])
        fps = json.loads(tar.extractfile(f"{key}.json").read())["fps"]
    frames = int(table.columns["video_num_frames"][table.video_first_rows()].sum())
    return sum(s["bytes"] for s in table.info["shards"]) / (frames / fps)


def decoded_per_delivered(shards: str, rows: np.ndarray, starts: np.ndarray, seeks: bool) -> float:
    """Frames decoded per delivered frame for the delivered windows (see the module docstring)."""
    from sharding.reader import load_shards

    table = load_shards(shards, split="train")
    cache: dict[int, np.ndarray] = {}
    decoded = 0
    for row, start in zip(rows.tolist(), starts.tolist()):
        first = 0
        if not seeks and table.format.cuts:  # the cut's first frame (ivf: a keyframe; jpeg: the window's)
            first = table.cut(row, start, CLIP_LEN).first_frame
        elif seeks:
            if row not in cache:
                cache[row] = keyframes_of(table.read(row))
            kf = cache[row]
            first = int(kf[np.searchsorted(kf, start, side="right") - 1])
        nf = int(table.columns["num_frames"][row])
        decoded += min(start + CLIP_LEN, nf) - first
    return decoded / (CLIP_LEN * max(len(rows), 1))


def run_loader(cfg: dict) -> dict:
    """Measure one loader in this (pinned) process; returns its result row."""
    import torch

    torch.set_num_threads(1)  # the main process only collates / receives
    name = cfg["loader"]
    mon = ResourceMonitor()
    t_start = time.perf_counter()
    if name in ("dali", "dali_whole_video", "dali_jpeg"):
        it = batches_dali(cfg)
    else:
        it = batches_peer(cfg)
    clips, rows, starts = next(it)
    shape, dtype = list(clips.shape), str(clips.dtype).replace("torch.", "")
    t_first = time.perf_counter() - t_start
    n_warm = 1
    while time.perf_counter() - t_start < t_first + cfg["warmup"] or n_warm < 2:
        next(it)
        n_warm += 1
    window_s = cfg["seconds"] / cfg["windows"]
    rates, all_rows, all_starts, n_clips = [], [], [], 0
    cpu0, t0 = mon.cpu_seconds(), time.perf_counter()
    t_w, n_w = t0, 0
    while len(rates) < cfg["windows"]:
        clips, rows, starts = next(it)
        if list(clips.shape) != shape:
            raise RuntimeError(f"{name}: batch shape changed from {shape} to {list(clips.shape)}")
        n_w += clips.shape[0]
        all_rows.append(rows)
        all_starts.append(starts)
        now = time.perf_counter()
        if now - t_w >= window_s:
            rates.append(n_w / (now - t_w))
            n_clips += n_w
            t_w, n_w = now, 0
    wall = time.perf_counter() - t0
    cpu = mon.cpu_seconds() - cpu0
    mon.sample()
    mon.stop()
    seeks = name in SEEKING_PEERS
    rows, starts = np.concatenate(all_rows), np.concatenate(all_starts)
    return {"loader": name, "clips_per_s": statistics.median(rates),
            "decoded_per_delivered": decoded_per_delivered(cfg["shards"], rows, starts, seeks),
            "bytes_per_clip": bytes_per_clip(cfg["shards"], rows, starts, seeks),
            "cpu_cores": cpu / wall, "peak_rss_mb": mon.peak_rss / 2 ** 20,
            "clips_per_cpu_s": n_clips / max(cpu, 1e-9),
            "clips": n_clips, "window_clips_per_s": rates, "batch_shape": shape, "dtype": dtype,
            "first_batch_s": t_first, "shards": cfg["shards"], "codec": _codec(cfg["shards"])}


def _ceiling_dali(cfg: dict, datas: list[np.ndarray], mon: ResourceMonitor) -> tuple[float, float]:
    from nvidia.dali import fn, pipeline_def

    bs = cfg["batch_size"]

    @pipeline_def(batch_size=bs, num_threads=cfg["threads"], device_id=None, prefetch_queue_depth=2)
    def full_decode():
        return fn.decoders.video(fn.external_source(source=source, batch=True), device="cpu")

    pos = [0]

    def source():
        out = [datas[(pos[0] + i) % len(datas)] for i in range(bs)]
        pos[0] += bs
        return out

    pipe = full_decode()
    pipe.build()
    for _ in range(2):
        pipe.run()
    cpu0, t0, frames = mon.cpu_seconds(), time.perf_counter(), 0
    while time.perf_counter() - t0 < cfg["seconds"] / 2:
        out = pipe.run()
        frames += sum(shape[0] for shape in out[0].shape())  # (F, H, W, C) per sample
    wall = time.perf_counter() - t0
    return frames / wall, (mon.cpu_seconds() - cpu0) / wall


def _ceiling_dali_jpeg(cfg: dict, frames: list[np.ndarray], mon: ResourceMonitor) -> tuple[float, float]:
    """DALI's CPU image decoder on batches of JPEG frames (what `dali_jpeg` decodes), bytes preloaded."""
    from nvidia.dali import fn, pipeline_def, types

    bs = cfg["batch_size"] * CLIP_LEN
    pos = [0]

    def source():
        out = [frames[(pos[0] + i) % len(frames)] for i in range(bs)]
        pos[0] += bs
        return out

    @pipeline_def(batch_size=bs, num_threads=cfg["threads"], device_id=None, prefetch_queue_depth=2)
    def full_decode():
        return fn.decoders.image(fn.external_source(source=source, batch=True), device="cpu", output_type=types.RGB)

    pipe = full_decode()
    pipe.build()
    for _ in range(2):
        pipe.run()
    cpu0, t0, n = mon.cpu_seconds(), time.perf_counter(), 0
    while time.perf_counter() - t0 < cfg["seconds"] / 2:
        pipe.run()
        n += bs
    wall = time.perf_counter() - t0
    return n / wall, (mon.cpu_seconds() - cpu0) / wall


def _pyav_full_decode(datas: list[bytes]) -> int:
    import av

    n = 0
    for data in datas:
        with av.open(io.BytesIO(data)) as c:
            c.streams.video[0].codec_context.thread_count = 1
            for f in c.decode(video=0):
                f.to_ndarray(format="rgb24")
                n += 1
    return n


def _ceiling_pyav(cfg: dict, datas: list[bytes], mon: ResourceMonitor) -> tuple[float, float]:
    import multiprocessing as mp

    seconds = cfg["seconds"] / 2
    with mp.get_context("fork").Pool(cfg["cores"]) as pool:
        pool.map(_pyav_full_decode, [datas[:2]] * cfg["cores"])  # warm-up
        cpu0, t0, frames = mon.cpu_seconds(), time.perf_counter(), 0
        k = 0
        while time.perf_counter() - t0 < seconds:
            chunks = [[datas[(k + j * 7 + i) % len(datas)] for i in range(4)] for j in range(cfg["cores"] * 2)]
            frames += sum(pool.map(_pyav_full_decode, chunks))
            k += 1
        wall = time.perf_counter() - t0
        return frames / wall, (mon.cpu_seconds() - cpu0) / wall


def run_ceiling(cfg: dict) -> dict:
    """Full-decode frames/s of the benchmark's samples (DALI CPU and PyAV), bytes preloaded."""
    from sharding.reader import load_shards

    table = load_shards(cfg["shards"], split="train")
    rows = range(min(len(table), 64))
    datas = [table.read(r) for r in rows]
    mon = ResourceMonitor()
    out = {}
    out["pyav_fps"], out["pyav_cpu_cores"] = _ceiling_pyav(cfg, datas, mon)
    try:
        if table.format.name == "jpeg_frames":  # the image decoder, frame by frame
            from sharding.reader import SampleReader

            reader = SampleReader(table)
            frames = [np.frombuffer(j, np.uint8) for r in rows
                      for j in window_jpegs(table, reader, r, 0, int(table.columns["num_frames"][r]))]
            out["dali_cpu_fps"], out["dali_cpu_cpu_cores"] = _ceiling_dali_jpeg(cfg, frames, mon)
        else:
            out["dali_cpu_fps"], out["dali_cpu_cpu_cores"] = _ceiling_dali(
                cfg, [np.frombuffer(d, np.uint8) for d in datas], mon)
    except Exception as e:  # e.g. H.264 shards: DALI's CPU decoder has no H.264
        out["dali_cpu_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    mon.stop()
    best = max((k[: -len("_fps")] for k in out if k.endswith("_fps")), key=lambda k: out[k + "_fps"])
    out["best"], out["fps"], out["cpu_cores"] = best, out[best + "_fps"], out[best + "_cpu_cores"]
    # Frames per CPU-second: comparable with the loaders' clips per CPU-second on a shared machine.
    out["fps_per_cpu_s"] = max(out[k + "_fps"] / max(out[k + "_cpu_cores"], 1e-9)
                               for k in ("pyav", "dali_cpu") if k + "_fps" in out)
    return out


def _codec(shards: str) -> str:
    p = Path(shards)
    info = json.loads(((p / "_info.json") if p.is_dir() else p).read_text())
    return info["encoding"]["codec"]


def child_main(cfg: dict, out_path: str) -> None:
    cores = cfg["core_ids"]
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)  # inherited by workers forked later
    try:
        result = run_ceiling(cfg) if cfg["loader"] == "ceiling" else run_loader(cfg)
    except Exception as e:
        import traceback

        traceback.print_exc()
        result = {"loader": cfg["loader"], "error": f"{type(e).__name__}: {e}"}
    Path(out_path).write_text(json.dumps(result))
    exit_now(0)

# ============================================================================ orchestration (parent side)

def run_child(cfg: dict, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "benchmarks.loader", "--_child", json.dumps(cfg), str(out)]
        try:
            proc = subprocess.run(cmd, timeout=timeout, capture_output=True, text=True)
        except subprocess.TimeoutExpired:
            return {"loader": cfg["loader"], "error": f"timed out after {timeout:.0f} s"}
        if not out.is_file():
            tail = (proc.stderr or proc.stdout or "")[-2000:]
            return {"loader": cfg["loader"], "error": f"exit {proc.returncode}: {tail}"}
        return json.loads(out.read_text())


def plot(results: list[dict], ceiling: float | None, path: Path, title: str,
         ceiling_per_cpu_s: float | None = None) -> None:
    """Bar charts of every loader: clips/s, and clips per CPU-second (the steadier one on a shared
    machine), each with the decode ceiling and half of it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if "clips_per_s" in r]
    names = [r["loader"].replace("dataloader_", "DL ") for r in ok]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=80)
    for ax, key, ceil, label in ((axes[0], "clips_per_s", ceiling, "clips/s (16x112x112)"),
                                 (axes[1], "clips_per_cpu_s", ceiling_per_cpu_s, "clips per CPU-second")):
        vals = [r[key] for r in ok]
        bars = ax.bar(names, vals, color=["#4c72b0" if n.startswith("dali") else "#999999" for n in names])
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.0f}", ha="center", va="bottom", fontsize=8)
        if ceil:
            ax.axhline(ceil, color="#c44e52", ls="--", lw=1.2, label=f"decode ceiling {ceil:.0f}")
            ax.axhline(ceil / 2, color="#c44e52", ls=":", lw=1, label="50% of ceiling")
            ax.legend(loc="upper right", fontsize=7)
        ax.set_ylabel(label)
        ax.tick_params(axis="x", labelsize=7, labelrotation=30)
        ax.set_ylim(0, max(vals + [ceil or 0]) * 1.15 if vals else 1)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _ceiling_of(r: dict, ceilings: dict) -> dict | None:
    """The ceiling that applies to a result row: its own format's."""
    return ceilings.get("jpeg" if r.get("codec") == "jpeg" else "video")


def format_table(results: list[dict], ceilings: dict) -> str:
    """The console table; `ceilings` maps "video" / "jpeg" to the ceiling child's result."""
    lines = [f"{'loader':<21} {'clips/s':>8} {'% ceil':>7} {'clips/cpu-s':>11} {'% ceil/cpu':>10} "
             f"{'decoded/deliv':>13} {'KB/clip':>8} {'cpu cores':>9} {'peak RSS MB':>11}  shards"]
    for r in results:
        if "error" in r:
            lines.append(f"{r['loader']:<21} ERROR {r['error'][:200]}")
            continue
        ceiling = _ceiling_of(r, ceilings)
        c = ceiling["fps"] / CLIP_LEN if ceiling else None
        c_cpu = ceiling["fps_per_cpu_s"] / CLIP_LEN if ceiling else None
        pct = f"{100 * r['clips_per_s'] / c:.0f}%" if c else "-"
        pct_cpu = f"{100 * r['clips_per_cpu_s'] / c_cpu:.0f}%" if c_cpu else "-"
        lines.append(f"{r['loader']:<21} {r['clips_per_s']:8.1f} {pct:>7} {r['clips_per_cpu_s']:11.1f} "
                     f"{pct_cpu:>10} {r['decoded_per_delivered']:13.2f} {r.get('bytes_per_clip', 0) / 1e3:8.1f} "
                     f"{r['cpu_cores']:9.2f} {r['peak_rss_mb']:11.0f}  {r['codec']} {Path(r['shards']).name}")
    for fmt, ceiling in ceilings.items():
        c, c_cpu = ceiling["fps"] / CLIP_LEN, ceiling["fps_per_cpu_s"] / CLIP_LEN
        lines.append(f"{'ceiling (' + fmt + ')':<21} {c:8.1f} {'':>7} {c_cpu:11.1f} {'':>10} {1.0:13.2f} "
                     f"{'':>8} {ceiling['cpu_cores']:9.2f}")
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.loader", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--shards", help="a --split train shard folder (default: synthetic shards in --cache-dir)")
    p.add_argument("--whole-shards", help="whole-video build (--segment-frames 0) of the same videos for "
                   "dali_whole_video (synthetic: built automatically; with --shards: skipped unless given)")
    p.add_argument("--dataloader-shards", "--decord-shards", dest="dataloader_shards",
                   help="shards for the peers when --shards is keyframe-indexed ivf (decord "
                        "cannot open IVF): a --container webm --segment-frames 0 build of the same "
                        "videos with the same --gop, where they seek to the same keyframes")
    p.add_argument("--jpeg-shards", help="a --codec jpeg build of the same videos for the JPEG loaders "
                   "(synthetic: built automatically; with --shards: skipped unless given)")
    p.add_argument("--loaders", default=",".join(LOADERS), help="comma list of " + ", ".join(LOADERS))
    p.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto",
                   help="DALI backend / where batches are delivered (auto: gpu when CUDA is present)")
    p.add_argument("--cores", type=int, help="CPUs every loader is pinned to (default: all available)")
    p.add_argument("--threads", type=int, help="DALI num_threads (default: --cores)")
    p.add_argument("--py-workers", type=int, help="DALI source worker processes (default: TrainDataConfig's)")
    p.add_argument("--prefetch", type=int, help="DALI prefetch depth (default: TrainDataConfig's)")
    p.add_argument("--workers", type=int, help="DataLoader workers / SPDL threads (default: --cores)")
    p.add_argument("--torchcodec", default=TORCHCODEC_DEFAULT,
                   choices=[f"{m},{c}" for m in ("approximate", "exact") for c in ("at", "range")],
                   help="dataloader_torchcodec's seek_mode and frame call (at: get_frames_at(indices), "
                        "range: get_frames_in_range(start, stop))")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seconds", type=float, default=20.0, help="timed seconds per loader")
    p.add_argument("--windows", type=int, default=5, help="timed windows per loader (clips/s = their median)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds run before timing (after the first batch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-ceiling", action="store_true", help="skip the full-decode ceiling")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--out-dir", type=Path, default=Path("."), help="where the PNG goes (loader_<device>.png)")
    p.add_argument("--no-plot", action="store_true")
    g = p.add_argument_group("synthetic shards (without --shards)")
    g.add_argument("--cache-dir", type=Path, help="default ~/.cache/zsvideo_benchmarks")
    g.add_argument("--videos", type=int, default=32)
    g.add_argument("--frames", type=int, default=250, help="frames per video (25 fps)")
    g.add_argument("--short-side", type=int, default=128)
    g.add_argument("--segment-frames", type=int, default=None, help="(default: the builder's)")
    g.add_argument("--codec", choices=["vp9", "h264"], default="vp9")
    g.add_argument("--container", choices=["auto", "ivf", "webm", "mp4"], default="auto",
                   help="the build's --container (auto: the builder's: ivf for VP9)")
    g.add_argument("--gop", type=int, default=None, help="the build's --gop (default: the builder's)")
    return p.parse_args(argv)


def select_loaders(spec: str) -> list[str]:
    """The --loaders list, in the order given; unknown names stop the run."""
    loaders = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = sorted(set(loaders) - set(LOADERS))
    if unknown:
        raise SystemExit(f"error: unknown loaders {unknown}; choose from {', '.join(LOADERS)}")
    return loaders


def prepare_shards(args, loaders: list[str], cores: int, notes: list[str]) -> dict[str, str]:
    """The shard folder of each loader (building synthetic shards when --shards is not given).
    Removes the loaders that cannot run here from `loaders`, saying why in `notes`."""
    synth = dict(cache=args.cache_dir, num_videos=args.videos, num_frames=args.frames,
                 short_side=args.short_side, workers=cores)
    synth = {k: v for k, v in synth.items() if v is not None}
    if args.shards:
        shards, whole = args.shards, args.whole_shards
    else:
        from benchmarks.synthetic import synthetic_shards

        print(f"synthetic shards: {args.videos} videos x {args.frames} frames, short side "
              f"{args.short_side}, {args.codec} (built once, then cached)", flush=True)
        shards = str(synthetic_shards(segment_frames=args.segment_frames, codec=args.codec,
                                      container=args.container, gop=args.gop, **synth))
        whole = None
        if "dali_whole_video" in loaders:  # no segments, no cutting: DALI decodes from frame 0
            whole = str(synthetic_shards(segment_frames=0, codec=args.codec,
                                         container="webm" if args.codec == "vp9" else "mp4", **synth))
    peer_shards = args.dataloader_shards or shards
    enc = json.loads((Path(shards) / "_info.json").read_text())["encoding"]
    peers = [n for n in loaders if n in PEERS]
    if peers and not args.dataloader_shards and enc.get("container") == "ivf":
        if args.shards:
            notes.append(f"{shards} is an ivf build, which decord cannot open: pass --dataloader-shards "
                         f"(a --container webm --segment-frames 0 --gop {enc['gop']} build of the same "
                         "videos); peers skipped")
            for n in peers:
                loaders.remove(n)
        else:
            from benchmarks.synthetic import synthetic_shards

            # The same videos, whole, in webm with the same keyframes: the peers seek to the
            # keyframe before each window, so every loader decodes the same frames per clip.
            peer_shards = str(synthetic_shards(segment_frames=0, codec=args.codec, container="webm",
                                               gop=enc["gop"], **synth))
            notes.append(f"peers read {Path(peer_shards).name} (decord cannot open IVF): the same "
                         f"videos in webm with the same keyframes (every {enc['gop']} frames)")
    for n in [n for n in loaders if n in PEERS]:
        why = peer_unavailable(n, peer_shards, args.torchcodec)
        if why is not None:
            notes.append(f"{n} skipped: {why}")
            print(f"skipping {n}: {why}", flush=True)
            loaders.remove(n)
    if "dali_whole_video" in loaders and not whole:
        notes.append("dali_whole_video skipped: pass --whole-shards (a --segment-frames 0 build)")
        loaders.remove("dali_whole_video")
    jpeg = args.jpeg_shards
    if any(n in JPEG_LOADERS for n in loaders) and not jpeg:
        if args.shards:
            notes.append("the JPEG loaders skipped: pass --jpeg-shards (a --codec jpeg build of the same videos)")
            for n in [n for n in loaders if n in JPEG_LOADERS]:
                loaders.remove(n)
        else:
            from benchmarks.synthetic import synthetic_shards

            jpeg = str(synthetic_shards(codec="jpeg", **synth))
    for n in [n for n in loaders if n in JPEG_PEERS]:
        why = peer_unavailable(n, jpeg)
        if why is not None:
            notes.append(f"{n} skipped: {why}")
            print(f"skipping {n}: {why}", flush=True)
            loaders.remove(n)
    return {"dali": shards, "dali_whole_video": whole, **{n: peer_shards for n in PEERS},
            **{n: jpeg for n in JPEG_LOADERS}}


def measure_all(loaders: list[str], shards_of: dict, base: dict, with_ceiling: bool, notes: list[str]):
    """Each loader, then the ceiling, in its own pinned subprocess: (results, ceiling child's result)."""
    timeout = base["warmup"] + base["seconds"] * 3 + 240
    results = []
    for name in loaders:
        print(f"running {name} ({base['seconds']:g} s) ...", flush=True)
        r = run_child({**base, "loader": name, "shards": shards_of[name]}, timeout)
        results.append(r)
        if "error" in r:
            print(f"  {name} failed: {r['error'][:500]}", flush=True)
        else:
            print(f"  {r['clips_per_s']:.1f} clips/s, {r['cpu_cores']:.2f} cores, "
                  f"{r['peak_rss_mb']:.0f} MB", flush=True)
    ceilings = {}
    if with_ceiling:
        sets = {"video": shards_of["dali"]} if any(n not in JPEG_LOADERS for n in loaders) else {}
        if any(n in JPEG_LOADERS for n in loaders):
            sets["jpeg"] = shards_of["dali_jpeg"]
        for fmt, shards in sets.items():
            print(f"running the full-decode ceiling ({fmt}) ...", flush=True)
            info = run_child({**base, "loader": "ceiling", "shards": shards}, timeout)
            if "fps" in info:
                ceilings[fmt] = info
            else:
                notes.append(f"ceiling ({fmt}) failed: {info.get('error')}")
    return results, ceilings


def ratios(results: list[dict], ceilings: dict) -> dict:
    """Same-run ratios: DALI over the best peer (clips/s and per CPU-s) and DALI's share of the
    ceiling, for the video format (dali) and the JPEG frames format (dali_jpeg, against the JPEG
    peers), and dali_jpeg over dali; None where a term is missing."""
    by = {r["loader"]: r for r in results if "clips_per_s" in r}
    out = {}
    for ours, peer_names, fmt, prefix in (("dali", PEERS, "video", "dali"), ("dali_jpeg", JPEG_PEERS, "jpeg", "dali_jpeg")):
        peers = [r for n, r in by.items() if n in peer_names]
        best = max(peers, key=lambda r: r["clips_per_s"], default=None)
        dali, ceiling = by.get(ours), ceilings.get(fmt)
        out.update({f"{'best_peer' if ours == 'dali' else 'best_jpeg_peer'}": best["loader"] if best else None,
                    f"{prefix}_over_best_peer": None, f"{prefix}_over_best_peer_per_cpu_s": None,
                    f"{prefix}_of_ceiling": None, f"{prefix}_of_ceiling_per_cpu_s": None})
        if dali and best:
            out[f"{prefix}_over_best_peer"] = dali["clips_per_s"] / best["clips_per_s"]
            out[f"{prefix}_over_best_peer_per_cpu_s"] = dali["clips_per_cpu_s"] / max(
                (r["clips_per_cpu_s"] for r in peers), default=float("nan"))
        if dali and ceiling:
            out[f"{prefix}_of_ceiling"] = dali["clips_per_s"] / (ceiling["fps"] / CLIP_LEN)
            out[f"{prefix}_of_ceiling_per_cpu_s"] = dali["clips_per_cpu_s"] / (ceiling["fps_per_cpu_s"] / CLIP_LEN)
    d, j = by.get("dali"), by.get("dali_jpeg")
    out["dali_jpeg_over_dali"] = j["clips_per_s"] / d["clips_per_s"] if d and j else None
    out["dali_jpeg_over_dali_per_cpu_s"] = j["clips_per_cpu_s"] / d["clips_per_cpu_s"] if d and j else None
    return out


def report(args, results, ceilings, machine, base, shards_of, loaders, notes, device) -> None:
    """Print the table, the same-run ratios and the notes; write the plot and the JSON."""
    shards = shards_of["dali"]
    video = ceilings.get("video")
    ceiling = video["fps"] / CLIP_LEN if video else None
    print()
    print(format_table(results, ceilings))
    for fmt, info in ceilings.items():
        print(f"full decode (all frames to RGB, {fmt}) frames/s: " + ", ".join(
            f"{k[:-4]} {info[k]:.0f} on {info[k[:-4] + '_cpu_cores']:.2f} cores" for k in info if k.endswith("_fps")))
    stored = {}
    for name in ("dali", "dali_jpeg"):
        if name in loaders and shards_of.get(name):
            stored[name] = stored_bytes_per_video_second(shards_of[name])
            print(f"stored: {stored[name] / 1e3:.1f} KB per video-second ({Path(shards_of[name]).name})")
    rat = ratios(results, ceilings)
    for prefix, best in (("dali", "best_peer"), ("dali_jpeg", "best_jpeg_peer")):
        if rat[f"{prefix}_over_best_peer"] is not None:
            print(f"{prefix} / best peer ({rat[best]}): {rat[f'{prefix}_over_best_peer']:.2f}x clips/s, "
                  f"{rat[f'{prefix}_over_best_peer_per_cpu_s']:.2f}x clips per CPU-s")
        if rat[f"{prefix}_of_ceiling"] is not None:
            print(f"{prefix} / its ceiling: {100 * rat[f'{prefix}_of_ceiling']:.0f}% clips/s, "
                  f"{100 * rat[f'{prefix}_of_ceiling_per_cpu_s']:.0f}% clips per CPU-s")
    if rat["dali_jpeg_over_dali"] is not None:
        print(f"dali_jpeg / dali (VP9): {rat['dali_jpeg_over_dali']:.2f}x clips/s, "
              f"{rat['dali_jpeg_over_dali_per_cpu_s']:.2f}x clips per CPU-s")
    print(f"machine: {machine['cpu']}, {base['cores']} of {machine['logical_cpus']} CPUs, load "
          f"{machine['load_avg_start']} -> {machine['load_avg_end']}; batch {args.batch_size}, "
          f"DALI threads {base['threads']}, peer workers {base['workers']}, device {device}")
    for n in notes:
        print("note: " + n)
    if not args.no_plot:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        png = args.out_dir / f"loader_{device}.png"
        plot(results, ceiling, png, f"{Path(shards).name}: {base['cores']} CPU cores, batch "
             f"{args.batch_size}, {device}",
             video["fps_per_cpu_s"] / CLIP_LEN if video else None)
        print(f"plot: {png}")
    if args.json:
        jpeg = ceilings.get("jpeg")
        out = {"machine": machine, "shards": shards, "ceiling_clips_per_s": ceiling,
               "ceiling_clips_per_cpu_s": video["fps_per_cpu_s"] / CLIP_LEN if video else None,
               "ceiling": video, "ceiling_jpeg": jpeg,
               "ceiling_jpeg_clips_per_s": jpeg["fps"] / CLIP_LEN if jpeg else None,
               "ceiling_jpeg_clips_per_cpu_s": jpeg["fps_per_cpu_s"] / CLIP_LEN if jpeg else None,
               "stored_bytes_per_video_second": stored,
               "settings": {k: v for k, v in base.items() if k != "core_ids"},
               "ratios": rat, "notes": notes, "results": results,
               "shards_by_loader": {n: shards_of[n] for n in loaders}}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
        print(f"json: {args.json}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_child"]:
        child_main(json.loads(argv[1]), argv[2])
        return 0
    args = parse_args(argv)
    try:
        loaders = select_loaders(args.loaders)
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 2
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count()))
    cores = args.cores or len(available)
    device = args.device
    if device == "auto":
        import torch  # device_count() counts through NVML: no CUDA driver init in this parent

        device = "gpu" if torch.cuda.device_count() > 0 else "cpu"
    notes: list[str] = []
    shards_of = prepare_shards(args, loaders, cores, notes)
    base = dict(batch_size=args.batch_size, seconds=args.seconds, windows=args.windows, warmup=args.warmup,
                seed=args.seed, device=device, threads=args.threads or cores,
                workers=args.workers if args.workers is not None else cores, cores=cores,
                core_ids=available[:cores], py_workers=args.py_workers, prefetch=args.prefetch,
                torchcodec=args.torchcodec)
    machine = machine_info(base["core_ids"])
    results, ceilings = measure_all(loaders, shards_of, base, not args.no_ceiling, notes)
    machine["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    report(args, results, ceilings, machine, base, shards_of, loaders, notes, device)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
