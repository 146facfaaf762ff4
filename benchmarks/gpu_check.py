"""`python -m benchmarks.gpu_check --out DIR`: the GPU path proved in one short run.

    python -m benchmarks.gpu_check --out gpu_run                    # a GPU node: <= 8 minutes
    python -m benchmarks.gpu_check --out /tmp/gc --device cpu --quick   # the dry run (the test suite's)

Steps, in order of value; each runs in its own process group with its own time box (cut to what is
left of `--budget-s`), and DIR/gpu_check.json and DIR/gpu_check.md are rewritten after every step,
so a run stopped half way leaves what it measured. A step that cannot run says why and the next
one starts. The first two need only torch and torchvision, so an image without DALI, PyAV or
pydantic still gives figures:

1. `env`: Python, torch, torchvision, CUDA, the GPUs and driver (nvidia-smi), whether
   `libnvcuvid` (NVDEC) loads, the versions of DALI, PyAV and pydantic where importable.
2. `model`: R(2+1)D-18 forward + backward at the author's per-GPU batch (22x3x16x112x112), bf16
   autocast, NCDHW vs channels_last_3d x cudnn.benchmark off/on: clips/s, step time, peak memory.
3. `data`: tiny shard sets of 172x128 VP9 videos (keyframe-indexed ivf, webm segments, eval) and,
   without --quick, the loader benchmark's synthetic set (benchmarks.synthetic), under DIR/data.
4. `decode`: does the mixed (NVDEC) decoder take our shards: one batch of an ivf cut, of webm
   segments and of eval videos on the CPU graph, the NVDEC graph and the CPU-decode + GPU-ops
   graph (`decode_device: cpu`); max / mean abs difference to the CPU graph, or the decoder's error
   (e.g. NVDEC's "video too small").
5. `pytest_gpu`: `pytest -m gpu` (the suite's GPU tests).
6. `loader`: the DALI training loader at batch 22 and 88 (per GPU), NVDEC decode vs CPU decode +
   GPU ops, clips/s with SM and NVDEC utilisation sampled by nvidia-smi; and the DataLoader peer
   (`benchmarks.loader --loaders dataloader_decord`) moving batches to CUDA.
7. `train`: `benchmarks.train configs/author.yaml` on the synthetic set: clips/s, step time,
   data-wait %, with bf16 on, channels_last on/off and torch.compile on/off.

With `--device cpu --quick` every step that can runs on the CPU backend at toy sizes (about a
minute): the figures mean nothing, the run proves the kit still works (tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.metadata
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

from sharding.faults import fault_point

REPO = Path(__file__).resolve().parent.parent

# (name, time box in seconds at full size, at --quick); the boxes add up to about 480 s.
STEPS = (("env", 30, 30), ("model", 90, 120), ("data", 60, 60), ("decode", 45, 45),
         ("pytest_gpu", 90, 30), ("loader", 100, 45), ("train", 120, 60))
# NVDEC's minimum frame for VP9 is 128 pixels (DALI 2.4): the shards here are 172x128 on purpose.
WIDTH, HEIGHT = 172, 128


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _importable(module: str) -> str | None:
    """None if `module` imports, else why not (one line)."""
    try:
        __import__(module)
        return None
    except Exception as e:  # noqa: BLE001 - any import failure is a reason to report
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _needs(*modules: str) -> list[str]:
    return [f"{m} is not importable ({why})" for m in modules if (why := _importable(m))]


def _cuda(args) -> bool:
    return args.device == "cuda"


def _save(args, figures: dict) -> None:
    """Write the step's figures so far: a step stopped at its time box keeps its finished runs."""
    path = args.out / "work" / f"{args.step}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(figures, indent=1, default=str))
    os.replace(tmp, path)


# --- steps (each returns a dict of figures plus "could_not": [reasons]) ---------------------------

def step_env(args) -> dict:
    import torch

    out = {"python": platform.python_version(), "platform": platform.platform(),
           "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "torchvision": _version("torchvision"), "cuda_devices_nvml": torch.cuda.device_count(),
           "dali": next((v for d in ("nvidia-dali-cuda130", "nvidia-dali-cuda120") if (v := _version(d))), None),
           "pyav": _version("av"), "pydantic": _version("pydantic"), "could_not": []}
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                            "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        out["gpus"] = [line.strip() for line in r.stdout.splitlines() if line.strip()]
    except (OSError, subprocess.TimeoutExpired) as e:
        out["could_not"].append(f"nvidia-smi: {e}")
    try:
        ctypes.CDLL("libnvcuvid.so.1")
        out["libnvcuvid"] = True
    except OSError as e:
        out["libnvcuvid"] = False
        out["could_not"].append(f"libnvcuvid (NVDEC) does not load: {e}")
    if _cuda(args):
        out["gpu_name"] = torch.cuda.get_device_name(0)
        out["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    return out


def step_model(args) -> dict:
    import torch
    from torchvision.models.video import r2plus1d_18

    cuda = _cuda(args)
    device = torch.device("cuda:0" if cuda else "cpu")
    shape = (22, 3, 16, 112, 112) if not (args.quick and not cuda) else (2, 3, 4, 32, 32)
    warmup, iters = ((2, 3) if cuda else (0, 1)) if args.quick else (5, 15)
    could_not = [] if cuda else ["on the CPU: float32 (bf16 autocast is the CUDA setting), toy shape "
                                 f"{shape}, and cudnn.benchmark has nothing to tune"]
    model = r2plus1d_18(num_classes=300).to(device)
    x = torch.randn(shape, device=device)
    runs = []
    for channels_last in (False, True):
        for benchmark in ((False, True) if cuda else (False,)):
            torch.backends.cudnn.benchmark = benchmark
            fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
            m, xb = model.to(memory_format=fmt), x.contiguous(memory_format=fmt)
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)

            def one():
                m.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                    y = m(xb)
                y.float().square().mean().backward()

            for _ in range(warmup):
                one()
            if cuda:
                torch.cuda.synchronize(device)
            t = time.perf_counter()
            for _ in range(iters):
                one()
            if cuda:
                torch.cuda.synchronize(device)
            dt = (time.perf_counter() - t) / iters
            runs.append({"memory_format": "channels_last_3d" if channels_last else "NCDHW",
                         "cudnn_benchmark": benchmark, "step_s": dt, "clips_per_s": shape[0] / dt,
                         "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None})
            _save(args, {"shape": list(shape), "runs": runs, "could_not": could_not})
    best = max(runs, key=lambda r: r["clips_per_s"])
    return {"shape": list(shape), "dtype": "bf16 autocast" if cuda else "float32", "runs": runs,
            "best": f"{best['memory_format']}, cudnn.benchmark={best['cudnn_benchmark']}",
            "could_not": could_not}


def _write_videos(root: Path, n: int, frames: int) -> None:
    from benchmarks.synthetic import write_source_video

    for i in range(n):
        path = root / f"class_{i % 3}" / f"v{i}.webm"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_source_video(path, seed=i, num_frames=frames + 7 * i, width=WIDTH, height=HEIGHT)


def _data_dir(args) -> Path:
    return args.out / "data"


def _tiny_sets(args) -> dict[str, Path]:
    d = _data_dir(args)
    return {"ivf": d / "train_ivf", "segments": d / "train_webm", "eval": d / "eval",
            "jpeg": d / "train_jpeg", "eval_jpeg": d / "eval_jpeg"}


def step_data(args) -> dict:
    could_not = _needs("av", "pydantic")
    if could_not:
        return {"could_not": could_not, "skipped": True}
    from sharding import build

    src = _data_dir(args) / "videos"
    if not src.is_dir():
        _write_videos(src, 6, 40 if args.quick else 90)
    sets = _tiny_sets(args)
    for name, (split, extra) in {"ivf": ("train", []), "segments": ("train", ["--container", "webm"]),
                                 "eval": ("eval", []), "jpeg": ("train", ["--codec", "jpeg"]),
                                 "eval_jpeg": ("eval", ["--codec", "jpeg"])}.items():
        if not (sets[name] / "_info.json").is_file():
            rc = build.main(["--input", str(src), "--layout", "folders", "--split", split, "--out",
                             str(sets[name]), "--workers", "0", "--videos-per-shard", "3", "--quiet", *extra])
            if rc:
                raise RuntimeError(f"sharding.build of {name} exited with {rc}")
    out = {"sets": {k: str(v) for k, v in sets.items()}, "could_not": []}
    if args.quick:
        out["could_not"].append("--quick: no synthetic benchmark set; the loader and train steps use "
                                "the tiny ivf set")
    else:
        from benchmarks.synthetic import synthetic_shards

        out["bench"] = str(synthetic_shards(_data_dir(args) / "cache", num_videos=32, num_frames=250,
                                            workers=max(os.cpu_count() or 2, 2)))
        out["bench_jpeg"] = str(synthetic_shards(_data_dir(args) / "cache", num_videos=32, num_frames=250,
                                                 codec="jpeg", workers=max(os.cpu_count() or 2, 2)))
    return out


def _bench_shards(args, fmt: str = "ivf") -> Path:
    """The loader's shard set of a format: the synthetic benchmark set, or with --quick the tiny one."""
    pattern = "shards_jpeg_*" if fmt == "jpeg" else "shards_vp9_*"
    bench = [p for p in (_data_dir(args) / "cache").glob(pattern) if (p / "_info.json").is_file()]
    return bench[0] if bench and not args.quick else _tiny_sets(args)[fmt]


def step_decode(args) -> dict:
    could_not = _needs("nvidia.dali", "pydantic")
    if could_not:
        return {"could_not": could_not, "skipped": True}
    from dali_pipelines.config import EvalDataConfig, TrainDataConfig
    from dali_pipelines.loader import make_eval_loader, make_train_loader

    graphs = [("cpu", "cpu", "cpu")] + ([("nvdec", "gpu", "gpu"), ("cpu_decode_gpu_ops", "gpu", "cpu")]
                                        if _cuda(args) else [])
    out = {"cases": [], "could_not": [] if _cuda(args) else
           ["no GPU: the CPU graph only (the mixed decoder and the GPU ops need CUDA)"]}
    for layout, path in _tiny_sets(args).items():
        if not (path / "_info.json").is_file():
            out["could_not"].append(f"{layout}: no shards at {path} (the data step did not finish)")
            continue
        ref = None
        for name, device, decode in graphs:
            case = {"layout": layout, "graph": name}
            try:
                if layout.startswith("eval"):
                    cfg = EvalDataConfig(shards=str(path), batch_size=3, num_clips=3, py_workers=0,
                                         device=device, decode_device=decode)
                    batch = next(iter(make_eval_loader(cfg, 0, 1, 0, "cuda:0" if device == "gpu" else "cpu")))
                else:
                    cfg = TrainDataConfig(shards=str(path), batch_size=4, epoch_clips=8, seed=1, py_workers=0,
                                          device=device, decode_device=decode)
                    batch = next(iter(make_train_loader(cfg, 0, 1, 0, "cuda:0" if device == "gpu" else "cpu")))
                clips = batch["clips"].float().cpu()
                case["shape"] = list(clips.shape)
                if ref is None:
                    ref = clips
                else:
                    diff = (clips - ref).abs()
                    case.update(max_abs=float(diff.max()), mean_abs=float(diff.mean()))
            except Exception as e:  # noqa: BLE001 - the decoder's refusal is the finding
                case["error"] = f"{type(e).__name__}: {str(e)[-500:]}"
            out["cases"].append(case)
            _save(args, out)
    return out


def step_pytest_gpu(args) -> dict:
    if not _cuda(args):
        return {"skipped": True, "could_not": ["no GPU: the gpu tests skip themselves without CUDA"]}
    if not (REPO / "tests").is_dir():
        return {"skipped": True, "could_not": [f"no tests folder under {REPO}"]}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                        str(REPO / "tests")], capture_output=True, text=True, cwd=REPO)
    lines = (r.stdout + r.stderr).strip().splitlines()
    return {"returncode": r.returncode, "summary": lines[-1] if lines else "", "tail": lines[-30:],
            "could_not": [] if r.returncode == 0 else ["some gpu tests failed: see tail"]}


class _Smi:
    """nvidia-smi sampling SM and NVDEC utilisation every 200 ms while a measurement runs."""

    def __init__(self, on: bool):
        self.proc = None
        if on:
            try:
                self.proc = subprocess.Popen(
                    ["nvidia-smi", "--query-gpu=utilization.gpu,utilization.decoder",
                     "--format=csv,noheader,nounits", "-lms", "200", "-i", "0"],
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            except OSError:
                self.proc = None

    def stop(self) -> dict:
        if self.proc is None:
            return {}
        self.proc.terminate()
        text, _ = self.proc.communicate(timeout=10)
        rows = [[float(v) for v in line.split(",")] for line in text.splitlines()
                if line.count(",") == 1 and "N/A" not in line]
        if not rows:
            return {}
        return {"sm_util_pct": sum(r[0] for r in rows) / len(rows),
                "nvdec_util_pct": sum(r[1] for r in rows) / len(rows)}


def step_loader(args) -> dict:
    could_not = _needs("nvidia.dali", "pydantic")
    if could_not:
        return {"could_not": could_not, "skipped": True}
    from dali_pipelines.config import TrainDataConfig
    from dali_pipelines.loader import make_train_loader

    cuda = _cuda(args)
    shards = _bench_shards(args)
    seconds = 2.0 if args.quick else 8.0
    batches = (22, 88) if not args.quick else ((22,) if cuda else (2,))
    threads = max((os.cpu_count() or 2) - 1, 1)
    # (name, graph device, decode device, hardware JPEG decoder's share: None = DALI's default)
    variants = ([("nvdec", "gpu", "gpu", None), ("cpu_decode_gpu_ops", "gpu", "cpu", None)] if cuda
                else [("cpu", "cpu", "cpu", None)])
    jpeg_variants = ([("nvjpeg_hw_default", "gpu", "gpu", None), ("nvjpeg_no_hw", "gpu", "gpu", 0.0),
                      ("cpu_decode_gpu_ops", "gpu", "cpu", None)] if cuda else variants)
    out = {"shards": str(shards), "shards_jpeg": str(_bench_shards(args, "jpeg")), "num_threads": threads,
           "runs": [], "could_not": []}
    if not cuda:
        out["could_not"].append("no GPU: the CPU graph only; no utilisation sampling, no DataLoader peer")

    def cpu_s() -> float:  # this process and its threads (the graph's CPU work runs here: py_workers 0)
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    # both storage formats: VP9 (NVDEC, or CPU decode + GPU ops) and JPEG frames (nvJPEG / the
    # hardware JPEG decoder where the GPU has one, or CPU decode + GPU ops)
    for batch, (fmt, set_path), (name, device, decode, hw_load) in [
            (b, f, v) for b in batches for f in (("vp9", shards), ("jpeg", _bench_shards(args, "jpeg")))
            for v in (jpeg_variants if f[0] == "jpeg" else variants)]:
        if not (set_path / "_info.json").is_file():
            out["could_not"].append(f"{fmt}: no shards at {set_path}")
            continue
        cfg = TrainDataConfig(shards=str(set_path), batch_size=batch, num_threads=threads, py_workers=0,
                              device=device, decode_device=decode, epoch_clips=batch * 1000,
                              hw_decoder_load=hw_load)
        loader = make_train_loader(cfg, 0, 1, 0, "cuda:0" if cuda else "cpu")
        it = iter(loader)
        next(it)  # builds the pipeline
        smi = _Smi(cuda)
        n, t, c = 0, time.perf_counter(), cpu_s()
        while time.perf_counter() - t < seconds:
            b = next(it)
            n += b["clips"].shape[0]
        if cuda:
            import torch
            torch.cuda.synchronize()
        dt, dc = time.perf_counter() - t, cpu_s() - c
        out["runs"].append({"format": fmt, "loader": name, "batch": batch, "clips_per_s": n / dt,
                            "cpu_s_per_clip": dc / max(n, 1), **smi.stop()})
        _save(args, out)
        del it, loader
    if cuda:
        for batch in batches:
            res = args.out / "work" / f"dataloader_b{batch}.json"
            # benchmarks.loader's own synthetic set (the data step's, reused from the cache) and its
            # webm twin: decord cannot open the ivf layout
            r = subprocess.run([sys.executable, "-m", "benchmarks.loader", "--cache-dir",
                                str(_data_dir(args) / "cache"), "--videos", "32", "--frames", "250",
                                "--loaders", "dataloader_decord", "--device", "gpu", "--batch-size", str(batch),
                                "--seconds", str(seconds), "--windows", "2", "--no-ceiling", "--no-plot",
                                "--json", str(res)], capture_output=True, text=True, cwd=REPO)
            if r.returncode == 0 and res.is_file():
                for row in json.loads(res.read_text()).get("results", []):
                    out["runs"].append({"loader": row.get("loader"), "batch": batch,
                                        "clips_per_s": row.get("clips_per_s")})
            else:
                out["could_not"].append(f"DataLoader peer at batch {batch}: benchmarks.loader exited "
                                        f"{r.returncode}: {(r.stderr or r.stdout)[-300:]}")
    return out


def step_train(args) -> dict:
    could_not = _needs("nvidia.dali", "pydantic")
    if could_not:
        return {"could_not": could_not, "skipped": True}
    cuda = _cuda(args)
    shards = _bench_shards(args)
    if cuda:
        # the author's per-GPU batch (4 GPUs x 22): benchmarks.train runs one process
        base = [str(REPO / "configs" / "author.yaml"), f"data.train.shards={shards}", "optim.amp=bf16",
                "data.global_batch=22",
                "--steps", "5" if args.quick else "20", "--warmup-steps", "3"]
        combos = [(cl, comp) for comp in (False, True) for cl in (True, False)]
        if args.quick:
            combos = combos[:2]
    else:  # the built-in small CPU model at toy sizes
        base = [f"data.train.shards={shards}", "data.train.clip_len=4", "data.train.crop=32",
                "data.global_batch=2", "--steps", "1", "--warmup-steps", "1"]
        combos = [(False, False)]
    out = {"runs": [], "could_not": [] if cuda else
           ["no GPU: the small built-in model at toy sizes, float32, channels_last and compile off"]}
    if cuda and args.quick:
        out["could_not"].append("--quick: torch.compile not measured")
    for channels_last, compiled in combos:
        res = args.out / "work" / f"train_cl{int(channels_last)}_c{int(compiled)}.json"
        cmd = [sys.executable, "-m", "benchmarks.train", *base, f"model.channels_last={str(channels_last).lower()}",
               f"model.compile={str(compiled).lower()}", "--device", "cuda" if cuda else "cpu",
               "--json", str(res)]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if r.returncode != 0 or not res.is_file():
            out["could_not"].append(f"channels_last={channels_last} compile={compiled}: benchmarks.train "
                                    f"exited {r.returncode}: {(r.stderr or r.stdout)[-400:]}")
            continue
        j = json.loads(res.read_text())
        out["runs"].append({"channels_last": channels_last, "compile": compiled,
                            **{k: j.get(k) for k in ("loop_clips_per_s", "step_time_s", "data_wait_fraction",
                                                      "compute_clips_per_s", "loader_clips_per_s",
                                                      "peak_gpu_mem_gib")}})
        _save(args, out)
    if cuda and not any(r.get("peak_gpu_mem_gib") is not None for r in out["runs"]):
        out["could_not"].append("peak GPU memory: benchmarks.train does not report it (the model step does)")
    return out


STEP_FUNCS = {"env": step_env, "model": step_model, "data": step_data, "decode": step_decode,
              "pytest_gpu": step_pytest_gpu, "loader": step_loader, "train": step_train}


# --- the runner --------------------------------------------------------------------------------

def _run_step(args, name: str, box: float) -> dict:
    """One step in a child process group, killed (with its DALI workers, pytest, ...) at `box`."""
    res = args.out / "work" / f"{name}.json"
    res.unlink(missing_ok=True)
    log = args.out / "work" / f"{name}.log"
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--out", str(args.out), "--device", args.device,
           "--step", name] + (["--quick"] if args.quick else [])
    t = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        try:
            rc = proc.wait(timeout=box)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    out = {"step": name, "seconds": round(time.perf_counter() - t, 1), "box_s": round(box, 1)}
    tail = log.read_text(errors="replace")[-1500:]
    if rc is None:
        partial = json.loads(res.read_text()) if res.is_file() else {}
        why = partial.pop("could_not", [])
        partial.pop("skipped", None)
        return {**out, "status": "timeout", **partial,
                "could_not": [f"stopped at its {box:.0f} s time box (figures: the runs it finished); "
                              f"log: {log}"] + why, "log_tail": tail}
    if rc != 0 or not res.is_file():
        return {**out, "status": "failed", "could_not": [f"exited with {rc}; log: {log}"], "log_tail": tail}
    figures = json.loads(res.read_text())
    status = "skipped" if figures.pop("skipped", False) else "ok"
    return {**out, "status": status, **figures}


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def write_markdown(path: Path, report: dict) -> None:
    """The readable twin of gpu_check.json: one section per step, tables for lists of runs."""
    lines = [f"# gpu_check: {report['device']}{' (quick)' if report['quick'] else ''}", "",
             f"Started {report['started']}; budget {report['budget_s']} s; "
             f"{len(report['steps'])} of {len(STEPS)} steps done.", ""]
    for s in report["steps"]:
        lines += [f"## {s['step']}: {s['status']} ({s['seconds']} s of {s['box_s']})", ""]
        for k, v in s.items():
            if k in ("step", "status", "seconds", "box_s", "could_not", "log_tail"):
                continue
            if isinstance(v, list) and v and isinstance(v[0], dict):
                keys = list(dict.fromkeys(k2 for row in v for k2 in row))
                lines += ["", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
                lines += ["| " + " | ".join(_fmt(row.get(c, "")) for c in keys) + " |" for row in v]
                lines.append("")
            else:
                lines.append(f"- {k}: {_fmt(v)}")
        for why in s.get("could_not", []):
            lines.append(f"- could not: {why}")
        lines.append("")
    path.write_text("\n".join(lines))


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json / .md and the data")
    p.add_argument("--budget-s", type=float, default=480.0, help="the whole run's time limit")
    p.add_argument("--quick", action="store_true", help="toy sizes and shorter timings")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto",
                   help="auto = cuda when NVML sees a GPU")
    p.add_argument("--only", help="comma list of steps to run (default: all)")
    p.add_argument("--box", action="append", default=[], metavar="STEP=SECONDS",
                   help="override a step's time box (repeatable)")
    p.add_argument("--step", choices=list(STEP_FUNCS), help=argparse.SUPPRESS)  # the child's entry
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out = args.out.resolve()
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.device_count() > 0 else "cpu"  # NVML: no CUDA init here
    if args.step:  # child: run one step, write its figures
        fault_point("step", args.step)  # the tests' planned hang (sharding.faults): a step past its box
        figures = STEP_FUNCS[args.step](args)
        (args.out / "work" / f"{args.step}.json").write_text(json.dumps(figures, indent=1, default=str))
        return 0
    boxes = {name: quick if args.quick else full for name, full, quick in STEPS}
    for spec in args.box:
        name, _, sec = spec.partition("=")
        if name not in boxes or not sec:
            print(f"error: --box {spec!r}: expected STEP=SECONDS with STEP in {', '.join(boxes)}", file=sys.stderr)
            return 2
        boxes[name] = float(sec)
    only = args.only.split(",") if args.only else list(boxes)
    unknown = sorted(set(only) - set(boxes))
    if unknown:
        print(f"error: --only: unknown steps {unknown}; choose from {', '.join(boxes)}", file=sys.stderr)
        return 2
    (args.out / "work").mkdir(parents=True, exist_ok=True)
    report = {"device": args.device, "quick": args.quick, "budget_s": args.budget_s,
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "steps": []}
    t0 = time.perf_counter()
    for name in (n for n, _, _ in STEPS if n in only):
        left = args.budget_s - (time.perf_counter() - t0)
        if left < 5:
            step = {"step": name, "status": "not run", "seconds": 0, "box_s": 0,
                    "could_not": [f"the {args.budget_s:.0f} s budget was spent"]}
        else:
            step = _run_step(args, name, min(boxes[name], left))
        report["steps"].append(step)
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
        write_markdown(args.out / "gpu_check.md", report)
        print(f"{name}: {step['status']} ({step['seconds']} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
