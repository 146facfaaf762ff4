"""What every benchmark measures the same way: CPU time and peak memory of a process tree, the
machine and library versions a figure was taken on, and a prompt exit that ends our own workers."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import threading
from pathlib import Path

# Modules whose versions go into every benchmark's JSON (None where not installed).
VERSION_MODULES = ("torch", "nvidia.dali", "decord", "av", "torchcodec", "spdl.io", "numpy")


class ResourceMonitor:
    """Peak summed RSS of this process and its descendants (a 0.1 s sampling thread) and their CPU
    time (user + system, live processes only: a descendant that exits takes its time with it)."""

    def __init__(self, interval: float = 0.1):
        import psutil

        self.proc, self.interval = psutil.Process(), interval
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree(self):
        try:
            return [self.proc] + self.proc.children(recursive=True)
        except Exception:
            return [self.proc]

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        total = 0
        for p in self._tree():
            try:
                total += p.memory_info().rss
            except Exception:  # a worker that just exited
                pass
        self.peak_rss = max(self.peak_rss, total)

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self._tree():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except Exception:
                pass
        return total

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def ffmpeg_version() -> str | None:
    """First line of the system `ffmpeg -version` (the libraries torchcodec loads), or None."""
    try:
        out = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, timeout=10)
        return out.stdout.splitlines()[0] if out.returncode == 0 and out.stdout else None
    except (OSError, subprocess.SubprocessError):
        return None


def library_versions(modules=VERSION_MODULES) -> dict:
    """`__version__` of each module, None where it does not import."""
    versions = {}
    for mod in modules:
        try:
            m = __import__(mod, fromlist=["__version__"])
            versions[mod] = getattr(m, "__version__", "?")
        except Exception:
            versions[mod] = None
    versions["ffmpeg"] = ffmpeg_version()
    return versions


def machine_info(core_ids: list[int]) -> dict:
    """The CPU model, core counts, memory, load, Python, library versions and GPU (if any)."""
    import psutil

    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": model, "logical_cpus": os.cpu_count(), "cores_used": len(core_ids),
            "core_ids": core_ids, "memory_gb": round(psutil.virtual_memory().total / 2 ** 30, 1),
            "load_avg_start": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(), "platform": platform.platform(),
            "versions": library_versions()}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        info["gpu"] = out.stdout.strip() or None
    except Exception:
        info["gpu"] = None
    return info


def exit_now(code: int) -> None:
    """Exit without DALI's / the DataLoader's slow teardown, ending our own worker processes first
    (left alone, forked DALI source workers outlive the parent and keep its stdout open)."""
    import psutil

    sys.stdout.flush()
    sys.stderr.flush()
    children = psutil.Process().children(recursive=True)
    for c in children:
        try:
            c.terminate()
        except psutil.Error:
            pass
    psutil.wait_procs(children, timeout=5)
    os._exit(code)
