"""Fault injection for the shard builder and the shards it writes: nothing lost, nothing duplicated,
no build stopped by one file, no bad shard trusted (RELIABILITY.md lists each fault and its test).

Real faults throughout: cut-off and corrupted files written with PyAV, workers killed by signals,
builders killed with SIGKILL at seeded random moments, a full tmpfs (as root), two live builders.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import unicodedata
import weakref
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import psutil
import pytest

import fault_jobs
from sharding.build import main as build_main
from sharding.encode import (MAX_GRID_RATIO, NeedTwoPasses, OnePassFrames, Probe, VideoError, plan_frames, probe,
                             resized_frames)
from sharding.merge import merge
from sharding.outdir import lock_out
from sharding.reader import ShardError, load_shards
from sharding.shardio import temp_path
from sharding.verify import verify
from sharding.workers import WorkerPool
from videos import true_frame, write_video

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def build(*args) -> int:
    return build_main([str(a) for a in args] + ["--quiet"])


def shas(out: Path) -> list[str]:
    return [s["sha256"] for s in json.loads((out / "_info.json").read_text())["shards"]]


def write_raw(path: Path, num_frames: int, fmt: str | None = None, codec: str = "libx264",
              options: dict | None = None) -> bytes:
    """A test video with container options (e.g. mp4 `+faststart`: the index before the frames)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=fmt, options=options or {}) as out:
        st = out.add_stream(codec, rate=25)
        st.width, st.height, st.pix_fmt = 172, 128, "yuv420p"
        st.codec_context.thread_count = 1  # the same bytes on any machine (threads follow the cores)
        if codec == "libx264":
            st.options = {"bf": "0"}
        for i in range(num_frames):
            for p in st.encode(av.VideoFrame.from_ndarray(true_frame(i, 172, 128), format="rgb24")):
                out.mux(p)
        for p in st.encode():
            out.mux(p)
    return path.read_bytes()


def corrupt_ivf_frame(data: bytes, frame: int) -> bytes:
    """Overwrite one frame record's payload: the VP9 decoder fails there (a decode error mid-stream)."""
    b, pos, k = bytearray(data), 32, 0
    while pos < len(b):
        size = struct.unpack_from("<I", b, pos)[0]
        if k == frame:
            b[pos + 12:pos + 12 + size] = b"\xff" * size
        pos, k = pos + 12 + size, k + 1
    return bytes(b)


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def wait_gone(procs: list[psutil.Process], seconds: float = 15.0) -> list[psutil.Process]:
    _, alive = psutil.wait_procs(procs, timeout=seconds)
    return alive


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory) -> Path:
    """Six short good videos in two classes (a few seconds to build)."""
    root = tmp_path_factory.mktemp("small")
    for i in range(6):
        write_video(root / ("run" if i % 2 else "jump") / f"v{i}.mp4", num_frames=24 + 4 * i)
    return root


def build_cmd(tree: Path, out: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "sharding.build", "--input", str(tree), "--layout", "folders", "--split",
            "train", "--out", str(out), "--videos-per-shard", "1", "--workers", "1", "--quiet", *map(str, extra)]


@pytest.fixture(scope="module")
def clean_build(small_tree, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "out"
    assert subprocess.run(build_cmd(small_tree, out, "--workers", "0")).returncode == 0
    return out


# ----------------------------------------------------------------------------- inputs that play but are short

@pytest.fixture(scope="module")
def cut_off_tree(tmp_path_factory) -> Path:
    """Real cut-off files next to a good one: what a stopped recording or download leaves."""
    root = tmp_path_factory.mktemp("cut")
    write_video(root / "a" / "good.mp4", num_frames=30)
    full = write_video(root / "tmp.avi", num_frames=60, codec="mpeg4").read_bytes()
    (root / "a" / "cut_avi.avi").write_bytes(full[: len(full) // 2])      # header says 60, ~11 play
    (root / "tmp.avi").unlink()
    mp4 = write_raw(root / "tmp.mp4", 60, options={"movflags": "+faststart"})
    (root / "a" / "cut_download.mp4").write_bytes(mp4[: len(mp4) // 2])  # index says 60, ~26 play
    (root / "tmp.mp4").unlink()
    ivf = write_raw(root / "tmp.ivf", 60, fmt="ivf", codec="libvpx-vp9")
    (root / "b").mkdir()
    # IVF bytes (FFmpeg probes the content; .ivf is not a listed video extension)
    (root / "b" / "late_error.mkv").write_bytes(corrupt_ivf_frame(ivf, 30))   # decode error after 30 frames
    (root / "b" / "early_error.mkv").write_bytes(corrupt_ivf_frame(ivf, 8))   # ... after 8 (< a clip)
    (root / "tmp.ivf").unlink()
    return root


def test_playable_but_short_inputs_are_stored_with_warnings(cut_off_tree, tmp_path, capsys):
    out = tmp_path / "out"
    # --max-error-rate 0.3: the one unusable input (early_error) is 1 of 5; warnings do not count
    assert build("--input", cut_off_tree, "--layout", "folders", "--split", "eval", "--out", out,
                 "--workers", "0", "--max-error-rate", "0.3") == 0
    err = capsys.readouterr().err
    info = json.loads((out / "_info.json").read_text())
    warned = {Path(w["path"]).name: w for w in info["warnings"]}
    assert set(warned) == {"cut_avi.avi", "cut_download.mp4", "late_error.mkv"}
    for name, w in warned.items():
        assert w["declared_frames"] == 60 and 0 < w["stored_frames"] < 60 and w["reason"], w
        assert f"[build] warning: {w['path']}" in err
    assert warned["late_error.mkv"]["stored_frames"] == 30 and "decode error after 30" in warned["late_error.mkv"]["reason"]
    assert [Path(e["path"]).name for e in info["errors"]] == ["early_error.mkv"]
    assert "decode error after 8 frames" in info["errors"][0]["reason"]
    assert info["num_videos"] == 4 and "1 errors, 3 stored with warnings" in err
    table = load_shards(out)
    stored = dict(zip(table.columns["video_ids"].tolist(), table.columns["num_frames"].tolist()))
    assert all(stored[w["video_id"]] == w["stored_frames"] for w in info["warnings"])
    assert verify(out) == []  # the frames that decode are what is stored, and verify agrees

    strict = tmp_path / "strict"
    assert build("--input", cut_off_tree, "--layout", "folders", "--split", "eval", "--out", strict,
                 "--workers", "0", "--max-error-rate", "0.9", "--strict-frame-count") == 0
    info = json.loads((strict / "_info.json").read_text())
    reasons = {Path(e["path"]).name: e["reason"] for e in info["errors"]}
    assert set(reasons) == {"cut_avi.avi", "cut_download.mp4", "late_error.mkv", "early_error.mkv"}
    # the same reasons on any machine (one decoder thread: FFmpeg's thread count follows the cores)
    assert reasons["cut_download.mp4"].startswith("decode error after 25 frames of the 60 the container declares")
    assert reasons["cut_avi.avi"].startswith("only 10 of the 60 frames the container declares could be decoded "
                                             "(they end at 0.40 s of the 2.40 s it declares: the file is cut off")
    assert info["warnings"] == [] and info["num_videos"] == 1


def test_an_avi_whose_empty_repeat_chunks_span_its_length_is_complete(tmp_path):
    """An AVI declaring 46 frames of which 10 hold a picture (the others empty "repeat the previous
    frame" chunks, as FFmpeg's AVI muxer writes for gaps, and Cinepak files have), spanning the
    whole 3 s: it plays completely, so it is stored whole (46 frames) with no warning, also with
    --strict-frame-count; a file that is cut off is not (test above)."""
    path = write_video(tmp_path / "in" / "a" / "gaps.avi", num_frames=10, codec="mpeg4", fps=15,
                       pts=list(range(0, 50, 5)), time_base=Fraction(1, 15))
    with av.open(str(path)) as c:
        assert c.streams.video[0].frames == 46
    for strict in ([], ["--strict-frame-count"]):
        out = tmp_path / f"out{len(strict)}"
        assert build("--input", tmp_path / "in", "--layout", "folders", "--split", "eval", "--out", out,
                     "--workers", "0", *strict) == 0
        info = json.loads((out / "_info.json").read_text())
        assert info["warnings"] == [] and info["errors"] == [] and info["num_videos"] == 1
        assert load_shards(out).columns["num_frames"].tolist() == [46]


def test_verify_catches_a_warning_that_disagrees_with_the_shards(cut_off_tree, tmp_path):
    out = tmp_path / "out"
    assert build("--input", cut_off_tree, "--layout", "folders", "--split", "eval", "--out", out,
                 "--workers", "0", "--max-error-rate", "0.3") == 0
    info = json.loads((out / "_info.json").read_text())
    info["warnings"][0]["stored_frames"] += 1
    (out / "_info.json").write_text(json.dumps(info))
    assert any("frames stored, the shards hold" in p for p in verify(out, decode=False))


def _probe(n, times=None, declared=0, error=None, rate=Fraction(25)):
    return Probe(n, None if times is None else np.asarray(times, float), declared, 172, 128, rate, error)


def test_frame_policy_only_nothing_usable_is_an_error():
    assert plan_frames(_probe(20, error="boom"), min_frames=16).warning.startswith("decode error after 20")
    with pytest.raises(VideoError, match="decode error after 10 frames"):
        plan_frames(_probe(10, error="boom"), min_frames=16)
    with pytest.raises(VideoError, match="decode error after 20 frames"):
        plan_frames(_probe(20, error="boom"), min_frames=16, strict=True)
    with pytest.raises(VideoError, match="no frames could be decoded"):
        plan_frames(_probe(0, declared=50))
    short = plan_frames(_probe(5, declared=50))
    assert "only 5 of the 50 frames" in short.warning and len(short.indices) == 5
    assert plan_frames(_probe(49, declared=50)).warning is None  # within the container's slack
    # a bogus last timestamp (last - first = 10^6 s): an error, not a 2.5e7-frame grid
    times = [i / 25 for i in range(9)] + [1e6]
    with pytest.raises(VideoError, match="a bogus timestamp"):
        plan_frames(_probe(10, times=times))
    # a real gap (a frame missing for 2 s) is still converted
    gap = plan_frames(_probe(10, times=[i / 25 for i in range(9)] + [2.0]))
    assert len(gap.indices) == 51 and gap.vfr and MAX_GRID_RATIO * 10 + 100 > 51


def test_bogus_timestamp_file_is_listed_not_encoded(tmp_path):
    pts = [0, 40, 80, 120, 160, 200, 240, 280, 320, 10**9]  # ms: the last frame 10^6 s later
    # matroska keeps 64-bit millisecond timestamps (mp4 clamps this one)
    write_video(tmp_path / "in" / "c" / "bogus.mkv", num_frames=len(pts), pts=pts, time_base=Fraction(1, 1000))
    write_video(tmp_path / "in" / "c" / "fine.mp4", num_frames=20)
    out = tmp_path / "out"
    assert build("--input", tmp_path / "in", "--layout", "folders", "--split", "eval", "--out", out,
                 "--workers", "0", "--max-error-rate", "0.6") == 0
    info = json.loads((out / "_info.json").read_text())
    assert [Path(e["path"]).name for e in info["errors"]] == ["bogus.mkv"]
    assert "bogus timestamp" in info["errors"][0]["reason"] and info["num_videos"] == 1


def test_decode_is_streamed_one_frame_at_a_time(tmp_path):
    """Memory must not grow with the video: at most one decoded frame is alive while streaming."""
    path = write_video(tmp_path / "v.mp4", num_frames=120)
    pr = probe(str(path))
    plan = plan_frames(pr)
    alive, most = [], 0
    for frame in resized_frames(str(path), pr, plan, 128):
        alive = [r for r in alive if r() is not None] + [weakref.ref(frame)]
        most = max(most, len(alive))
        del frame
    assert len(plan.indices) == 120 and most <= 2  # the one yielded + at most the one held


def test_one_pass_decode_gives_the_two_pass_frames(video_tree, cut_off_tree, tmp_path):
    """Whole-video samples decode once (OnePassFrames); the frames are those of the timestamps pass
    + plan + second decode, for constant-rate, 60 fps, VFR, odd-size and cut-off inputs."""
    checked = 0
    for path in sorted(video_tree.rglob("*.*")) + sorted(cut_off_tree.rglob("*.*")):
        try:
            pr = probe(str(path))
            plan = plan_frames(pr, None, 16)
        except VideoError:
            continue
        two = list(resized_frames(str(path), pr, plan, 128))
        src = OnePassFrames(str(path), 128)
        one = list(src)
        assert len(one) == len(two) == src.num_out, path
        assert all(np.array_equal(a, b) for a, b in zip(one, two)), path
        assert (src.vfr, src.num_decoded, src.declared, src.fps) == (plan.vfr, pr.num_decoded, pr.declared, plan.fps)
        checked += 1
    assert checked >= 9
    pts = [0, 40, 80, 120, 160, 200, 240, 280, 320, 10**9]  # a bogus last timestamp: decided on all frames
    bogus = write_video(tmp_path / "bogus.mkv", num_frames=len(pts), pts=pts, time_base=Fraction(1, 1000))
    with pytest.raises(NeedTwoPasses):
        list(OnePassFrames(str(bogus), 128))


# ----------------------------------------------------------------------------- workers: crash, kill, hang, recycle

def test_pool_survives_a_worker_killed_by_a_signal():
    for sig in (signal.SIGKILL, signal.SIGSEGV):
        with WorkerPool(fault_jobs.crash_on, 2, fault_jobs.failure) as pool:
            got = list(pool.imap([(x, 3, sig) for x in range(8)]))
            assert pool.restarts == 1
        name = signal.Signals(sig).name
        assert got == [x * x if x != 3 else f"failed 3: worker crashed: signal {int(sig)} ({name})" for x in range(8)]


def test_pool_kills_a_hung_task_after_the_timeout():
    with WorkerPool(fault_jobs.hang_on, 2, fault_jobs.failure, timeout=1.0) as pool:
        got = list(pool.imap([(x, 2) for x in range(6)]))
    assert got == [x * x if x != 2 else "failed 2: exceeded --video-timeout (1 s)" for x in range(6)]


def test_pool_starts_the_costliest_queued_job_first():
    costs = [1, 7, 3, 9, 2]
    with WorkerPool(fault_jobs.started_at, 1, fault_jobs.failure) as pool:
        starts = list(pool.imap([(c,) for c in costs], window=len(costs), cost=lambda job: job[0]))
    assert sorted(costs, key=lambda c: starts[costs.index(c)]) == [9, 7, 3, 2, 1]  # results stay in input order


def test_pool_recycles_workers():
    with WorkerPool(fault_jobs.worker_pid, 1, fault_jobs.failure, recycle_every=2) as pool:
        pids = list(pool.imap([(x,) for x in range(6)]))
        assert pool.restarts == 0  # recycling is not a failure
    assert [pids.count(p) for p in dict.fromkeys(pids)] == [2, 2, 2]


def test_workers_exit_when_the_pool_process_is_killed(tmp_path):
    script = ("import sys, time\nfrom sharding.workers import WorkerPool\nimport fault_jobs\n"
              "pool = WorkerPool(fault_jobs.hang_on, 2, fault_jobs.failure)\n"
              "it = pool.imap([(1, 1), (2, 2)])\nprint('ready', flush=True)\nnext(it)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO)])}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "ready"
    deadline = time.time() + 60
    while time.time() < deadline and len([p for p in descendants(proc.pid) if "spawn_main" in " ".join(p.cmdline())]) < 2:
        time.sleep(0.1)
    kids = descendants(proc.pid)
    assert len([p for p in kids if "spawn_main" in " ".join(p.cmdline())]) == 2
    proc.kill()
    proc.wait()
    assert wait_gone(kids) == []


def start_paused(cmd: list[str], fault: str, **kw) -> subprocess.Popen:
    """Start `cmd` with a pause planned (sharding.faults) and return once it is paused there: the
    same point of the build on a fast machine or a slow one."""
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "ZSVIDEO_FAULTS": f"pause:{fault}"}, **kw)
    for line in proc.stderr:
        if line.startswith("fault: paused at"):
            return proc
    proc.wait()
    raise AssertionError(f"{cmd} ended (exit {proc.returncode}) without pausing at {fault}")


def kill_builder(proc: subprocess.Popen) -> None:
    """kill -9 the builder; its workers must exit by themselves."""
    kids = descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert wait_gone(kids) == []


def shard_video_ids(out: Path) -> list[str]:
    """The video of each shard of a build with --videos-per-shard 1, in shard order."""
    info = json.loads((out / "_info.json").read_text())
    return [json.loads((out / s["table"]).read_text())["video_ids"][0] for s in info["shards"]]


def test_builder_killed_leaves_no_worker(small_tree, clean_build, tmp_path):
    last = shard_video_ids(clean_build)[-1]  # both workers are busy or done before it
    proc = start_paused(build_cmd(small_tree, tmp_path / "out", "--workers", "2"), f"video:{last}")
    workers = [p for p in descendants(proc.pid) if "spawn_main" in " ".join(p.cmdline())]
    assert len(workers) == 2
    kill_builder(proc)  # before: ~100 MB workers still alive 40 minutes later


def test_worker_killed_mid_video_costs_that_video_only(small_tree, clean_build, tmp_path):
    out = tmp_path / "out"
    victim = shard_video_ids(clean_build)[2]
    # the worker holding that input dies on it, as a segfaulting decoder or the OOM killer would do
    r = subprocess.run(build_cmd(small_tree, out, "--max-error-rate", "0.5"), capture_output=True, text=True,
                       env={**os.environ, "ZSVIDEO_FAULTS": f"kill:video:{victim}"})
    assert r.returncode == 0, r.stderr
    info = json.loads((out / "_info.json").read_text())
    assert [(Path(e["path"]).stem, e["reason"]) for e in info["errors"]] == [(victim, "worker crashed: signal 9 (SIGKILL)")]
    assert info["num_videos"] == 5
    # --retry-errors re-encodes only the listed inputs: the result is the uninterrupted build
    r = subprocess.run(build_cmd(small_tree, out, "--retry-errors"), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert shas(out) == shas(clean_build) and json.loads((out / "_info.json").read_text())["errors"] == []


# ----------------------------------------------------------------------------- kill -9 the builder, resume

# every point of a build where a kill -9 can land, in the order the build reaches them (per shard:
# its input in a worker, a half-written temp tar, the tar in place, index and table, state file)
SHARD_POINTS = ("video", "tar_member", "tar", "table", "state")


def test_killed_at_random_points_then_resumed_is_byte_identical(small_tree, clean_build, tmp_path):
    videos = shard_video_ids(clean_build)
    points = [f"{p}:{videos[j] if p == 'video' else j}" for j in range(len(videos)) for p in SHARD_POINTS]
    points.append("manifest:0")
    # four seeded points in build order: each run resumes before the next point, so each one is reached
    kills = sorted(random.Random(13).sample(range(len(points)), 4))
    out = tmp_path / "out"
    for k in kills:
        kill_builder(start_paused(build_cmd(small_tree, out), points[k]))
        assert not (out / "_info.json").exists(), points[k]
    r = subprocess.run(build_cmd(small_tree, out), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    print(f"killed at {[points[k] for k in kills]}")
    assert shas(out) == shas(clean_build)
    for s in json.loads((out / "_info.json").read_text())["shards"]:
        assert (out / s["path"]).read_bytes() == (clean_build / s["path"]).read_bytes()
    assert not [p for p in out.rglob("*.tmp")]


# ----------------------------------------------------------------------------- lock, resume checks, retry, overwrite

def test_second_builder_on_one_out_is_refused_with_the_holder(small_tree, tmp_path, capsys):
    out = tmp_path / "out"
    fd, _ = lock_out(out)  # a live builder holds --out
    try:
        assert build("--input", small_tree, "--layout", "folders", "--split", "eval", "--out", out, "--workers", "0") == 2
        err = capsys.readouterr().err
        assert f"PID {os.getpid()} on host {socket.gethostname()}" in err and "being written by another builder" in err
    finally:
        os.close(fd)
    assert build("--input", small_tree, "--layout", "folders", "--split", "eval", "--out", out, "--workers", "0") == 0
    a, b = temp_path(out / "x.tar"), temp_path(out / "x.tar")
    assert a != b and a.name.endswith(".tmp") and str(os.getpid()) in a.name


def test_two_concurrent_builders_lose_nothing(small_tree, clean_build, tmp_path):
    out = tmp_path / "out"
    procs = [subprocess.Popen(build_cmd(small_tree, out), stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes in ([0, 0], [0, 2]), results  # [0, 0]: the second started after the first finished
    for rc, err in results:
        if rc == 2:
            assert "being written by another builder (PID" in err
    assert shas(out) == shas(clean_build) and not list(out.rglob("*.tmp"))


def test_resume_rebuilds_missing_truncated_and_corrupted_shards(small_tree, clean_build, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(clean_build, out)
    info = json.loads((out / "_info.json").read_text())
    first, second = (out / s["path"] for s in info["shards"][:2])
    cmd = build_cmd(small_tree, out, "--workers", "0")

    first.unlink()
    with pytest.raises(ShardError, match="re-run `python -m sharding.build` with the same arguments"):
        load_shards(out)
    r = subprocess.run(cmd, capture_output=True, text=True)  # the advice load_shards printed
    assert r.returncode == 0 and f"{first.stem}: {first.name} is missing; rebuilding it" in r.stderr
    load_shards(out)

    with open(second, "r+b") as f:
        f.truncate(second.stat().st_size - 100)
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0 and "(truncated?); rebuilding it" in r.stderr
    assert shas(out) == shas(clean_build)

    data = bytearray(first.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only a hash sees it
    first.write_bytes(bytes(data))
    load_shards(out)
    with pytest.raises(ShardError, match="sha256 differs"):
        load_shards(out, verify="sha256")
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0 and "rebuilding" not in r.stderr  # size-only check by default
    r = subprocess.run(cmd + ["--verify-existing"], capture_output=True, text=True)
    assert r.returncode == 0 and "different sha256 than when it was written (corrupted); rebuilding it" in r.stderr
    load_shards(out, verify="sha256")
    assert first.read_bytes() == (clean_build / first.name).read_bytes()


def test_sha256_check_is_cached_by_path_size_mtime(clean_build, tmp_path, monkeypatch):
    import sharding.reader as reader

    out = tmp_path / "out"
    shutil.copytree(clean_build, out)
    load_shards(out, verify="sha256")
    cache = json.loads((out / reader.SHA256_CACHE).read_text())
    assert len(cache) == len(json.loads((out / "_info.json").read_text())["shards"])
    monkeypatch.setattr(reader, "sha256_file", lambda p: pytest.fail(f"hashed {p} again"))
    load_shards(out, verify="sha256")  # a second start: stats only
    monkeypatch.undo()
    tar = out / json.loads((out / "_info.json").read_text())["shards"][0]["path"]
    data = bytearray(tar.read_bytes())
    data[-2000] ^= 1
    tar.write_bytes(bytes(data))  # a new mtime: hashed again, and caught
    with pytest.raises(ShardError, match=rf"{tar.name}: sha256 differs"):
        load_shards(out, verify="sha256")
    with pytest.raises(ValueError, match="verify must be"):
        load_shards(out, verify="md5")


def test_retry_errors_stores_fixed_inputs_without_a_rebuild(small_tree, tmp_path):
    vids = sorted(small_tree.rglob("*.mp4"))
    staged = tmp_path / "later.mp4"  # listed, but "not downloaded yet"
    listing = tmp_path / "list.csv"
    listing.write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in vids) + f"{staged},run\n")
    args = ["--input", listing, "--layout", "list", "--split", "eval", "--out", tmp_path / "out",
            "--workers", "0", "--videos-per-shard", "3", "--max-error-rate", "0.5"]
    assert build(*args) == 0
    info = json.loads((tmp_path / "out" / "_info.json").read_text())
    assert [e["reason"] for e in info["errors"]] == ["file not found"]
    shutil.copy(vids[0], staged)
    assert build(*args) == 0  # a plain re-run resumes: the error stays
    assert len(json.loads((tmp_path / "out" / "_info.json").read_text())["errors"]) == 1
    assert build(*args, "--retry-errors") == 0
    fixed = json.loads((tmp_path / "out" / "_info.json").read_text())
    assert fixed["errors"] == [] and fixed["num_videos"] == info["num_videos"] + 1
    clean = tmp_path / "clean"
    assert build(*args[:7], clean, *args[8:]) == 0
    assert shas(tmp_path / "out") == shas(clean)
    assert verify(tmp_path / "out") == []


def test_overwrite_deletes_only_files_the_build_lists(small_tree, tmp_path):
    out = tmp_path / "out"
    args = ["--input", small_tree, "--layout", "folders", "--split", "eval", "--out", out, "--workers", "0",
            "--videos-per-shard", "2"]
    assert build(*args) == 0
    old = [s["path"] for s in json.loads((out / "_info.json").read_text())["shards"]]
    (out / "mine.tar").write_bytes(b"a user's own tar")
    (out / "notes.txt").write_text("keep me")
    assert build(*args, "--videos-per-shard", "6", "--overwrite") == 0
    assert (out / "mine.tar").read_bytes() == b"a user's own tar" and (out / "notes.txt").is_file()
    new = [s["path"] for s in json.loads((out / "_info.json").read_text())["shards"]]
    assert len(new) == 1 and not any((out / p).exists() for p in old if p not in new)
    assert len(list((out / "_parts").glob("*.json"))) == 1


def test_merge_refuses_parts_of_different_builds(small_tree, tmp_path):
    def part(name, i, n=2, *extra):
        out = tmp_path / name
        assert build("--input", small_tree, "--layout", "folders", "--split", "eval", "--out", out,
                     "--workers", "0", "--videos-per-shard", "2", "--part", i, "--num-parts", n, *extra) == 0
        return out

    p0, p1 = part("p0", 0), part("p1", 1)
    assert merge([p0, p1], tmp_path / "m")["num_videos"] == 6
    with pytest.raises(ValueError, match=r"not a part of the same build .*crf 32 .* vs 30"):
        merge([p0, part("p1_crf", 1, 2, "--crf", "30")], tmp_path / "m2")
    with pytest.raises(ValueError, match=r"num_parts 2 .* vs 3"):
        merge([p0, part("p1_of3", 1, 3)], tmp_path / "m3")
    with pytest.raises(ValueError, match=r"missing \[1\]"):
        merge([p0], tmp_path / "m4")
    with pytest.raises(ValueError, match=r"repeated \[0\]"):
        merge([p0, p0], tmp_path / "m5")
    other = tmp_path / "other"
    shutil.copytree(small_tree, other)
    (other / "run" / "v1.mp4").unlink()
    p1_other = tmp_path / "p1_other"
    assert build("--input", other, "--layout", "folders", "--split", "eval", "--out", p1_other, "--workers", "0",
                 "--videos-per-shard", "2", "--part", "1", "--num-parts", "2") == 0
    with pytest.raises(ValueError, match="inputs_sha256"):
        merge([p0, p1_other], tmp_path / "m6")


# ----------------------------------------------------------------------------- names, text, paths

def test_bom_nfc_and_non_ascii_names(tmp_path):
    nfd_cafe, nfc_cafe = unicodedata.normalize("NFD", "café"), "café"
    root = tmp_path / "in"
    write_video(root / nfd_cafe / "c1.mp4", num_frames=20)  # a folder made on macOS: NFD
    write_video(root / "naïve" / "ü.mp4", num_frames=20)
    write_video(root / "naïve" / "ö.mp4", num_frames=20)    # same safe_key before: refused
    excl = tmp_path / "exclude.txt"
    excl.write_bytes(("\ufeff" + nfc_cafe + "\n").encode("utf-8"))  # Excel/Notepad's BOM, NFC
    out = tmp_path / "out"
    assert build("--input", root, "--layout", "folders", "--split", "eval", "--out", out, "--workers", "0",
                 "--exclude-classes", excl) == 0
    info = json.loads((out / "_info.json").read_text())
    assert [c["name"] for c in info["classes"]] == ["naïve"] and info["num_excluded_class_videos"] == 1
    keys = load_shards(out).columns["keys"].tolist()
    assert len(keys) == len(set(keys)) == 2
    assert all(k.isascii() and "." not in k for k in keys)

    listing = tmp_path / "bom.csv"  # a CSV saved with a BOM: its first column is still `path`
    listing.write_bytes(("\ufeffpath,label\n" + f"{root / 'naïve' / 'ü.mp4'},{unicodedata.normalize('NFD', 'naïve')}\n").encode())
    out2 = tmp_path / "out2"
    assert build("--input", listing, "--layout", "list", "--split", "eval", "--out", out2, "--workers", "0") == 0
    assert [c["name"] for c in json.loads((out2 / "_info.json").read_text())["classes"]] == ["naïve"]


# ----------------------------------------------------------------------------- a full disk

def test_full_disk_exits_clearly_and_resumes_identically(small_tree, clean_build, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small_disk"
    mnt.mkdir()
    need = sum(p.stat().st_size for p in clean_build.rglob("*") if p.is_file())
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={need // 2}", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (no CAP_SYS_ADMIN)")
    try:
        out = mnt / "out"
        r = subprocess.run(build_cmd(small_tree, out), capture_output=True, text=True)
        assert r.returncode == 3, r.stderr
        assert "No space left on device" in r.stderr and "free space" in r.stderr and "resumes" in r.stderr
        assert not [p for p in out.rglob("*.tmp")]
        subprocess.run(["mount", "-o", f"remount,size={need * 4}", str(mnt)], check=True)
        r = subprocess.run(build_cmd(small_tree, out), capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert shas(out) == shas(clean_build)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_shard_truncated_after_start_up_is_named_by_the_reader(clean_build, tmp_path):
    from sharding.reader import SampleReader

    out = tmp_path / "out"
    shutil.copytree(clean_build, out)
    table = load_shards(out)
    tar = Path(table.tar_paths[0])
    with open(tar, "r+b") as f:
        f.truncate(int(table.columns["offset"][0]) + 10)
    with SampleReader(table) as reader, pytest.raises(ShardError, match=rf"{tar.name}: short read at byte"):
        reader.read(0)


def test_sample_reader_threads_with_evictions_read_the_right_bytes(clean_build):
    """Many threads over more tars than the fd cache holds: every read returns its own bytes (an fd
    closed at eviction while another thread read through it could be reused for another tar)."""
    from concurrent.futures import ThreadPoolExecutor

    from sharding.reader import SampleReader

    table = load_shards(clean_build)
    assert len(table.tar_paths) >= 2
    expected = []
    for r in range(len(table)):
        with open(table.tar_paths[int(table.columns["shard"][r])], "rb") as f:
            f.seek(int(table.columns["offset"][r]))
            expected.append(f.read(int(table.columns["size"][r])))
    rows = np.random.default_rng(0).integers(0, len(table), 4000)
    with SampleReader(table, max_open=1) as reader, ThreadPoolExecutor(8) as pool:
        got = list(pool.map(reader.read, rows))
        assert len(reader._fds) <= 1 and not reader._busy and not reader._evicted
    assert all(g == expected[r] for g, r in zip(got, rows))


def test_run_config_data_verify_sha256_stops_the_loader_at_start_up(clean_build, tmp_path):
    from dali_pipelines.config import TrainDataConfig
    from dali_pipelines.loader import TrainLoader

    out = tmp_path / "out"
    shutil.copytree(clean_build, out)
    tar = out / json.loads((out / "_info.json").read_text())["shards"][1]["path"]
    data = bytearray(tar.read_bytes())
    data[700] ^= 1
    tar.write_bytes(bytes(data))
    cfg = TrainDataConfig(shards=str(out), batch_size=2, crop=64, verify="sha256")
    with pytest.raises(ShardError, match=rf"{tar.name}: sha256 differs"):
        TrainLoader(cfg, rank=0, world_size=1, local_rank=0, device="cpu")
    with pytest.raises(ValueError, match="verify"):
        TrainDataConfig(shards=str(out), verify="md5")


def test_decode_failure_in_the_loader_names_shard_key_and_bytes(clean_build, tmp_path):
    """Same-size damage inside one video's frames passes the start-up checks; DALI's error names
    no sample, so the loader re-raises it naming the shard, the sample key and its byte range."""
    from dali_pipelines.config import TrainDataConfig
    from dali_pipelines.loader import TrainLoader

    out = tmp_path / "out"
    shutil.copytree(clean_build, out)
    table = load_shards(out)
    row = 2
    tar, offset = Path(table.tar_paths[int(table.columns["shard"][row])]), int(table.columns["offset"][row])
    data = bytearray(tar.read_bytes())
    for k in range(int(table.kf_ptr[row]), int(table.kf_ptr[row + 1])):  # every keyframe's payload
        at = offset + int(table.kf_offsets[k])
        size = struct.unpack_from("<I", data, at)[0]
        data[at + 12:at + 12 + size] = bytes(size)
    tar.write_bytes(bytes(data))
    key = str(table.columns["keys"][row])
    cfg = TrainDataConfig(shards=str(out), batch_size=2, crop=64, num_threads=1, prefetch=1)
    loader = TrainLoader(cfg, rank=0, world_size=1, local_rank=0, device="cpu")
    with pytest.raises(ShardError, match=rf"a sample does not decode .*{key} \({tar} bytes \[\d+, \d+\)\)"):
        for _ in range(3):  # epochs: the damaged video is drawn in every one
            for _ in loader:
                pass


def test_killed_before_or_while_writing_its_identity_resumes(small_tree, tmp_path):
    """What a builder killed in `prepare_out` leaves (the lock, a temp file, an empty _parts, or an
    identity without _parts) is not "files that are not a build": the same command goes on."""
    for case in ("temp", "identity_only"):
        out = tmp_path / case
        if case == "temp":
            (out / "_parts").mkdir(parents=True)
            (out / "_lock").write_text("12345 elsewhere\n")
            (out / "_build.json.12345-0badf00d.tmp").write_text("{")
        else:
            assert build("--input", small_tree, "--layout", "folders", "--split", "eval", "--out", out,
                         "--workers", "0") == 0
            shutil.rmtree(out / "_parts")
            (out / "_info.json").unlink()
        assert build("--input", small_tree, "--layout", "folders", "--split", "eval", "--out", out,
                     "--workers", "0") == 0, case
        assert json.loads((out / "_info.json").read_text())["num_videos"] == 6
        assert not list(out.rglob("*.tmp"))


@pytest.mark.slow
def test_worker_memory_does_not_grow_with_the_video(tmp_path):
    """Peak RSS of one process_video call, each in a fresh process: a 10 s and a 2 min source
    (before streaming, the 2 min one held ~100 MB more: every decoded frame)."""
    script = ("import resource, sys\nfrom sharding.layouts import VideoItem\nfrom sharding.media import process_video\n"
              "opts = dict(media='video', split='train', short_side=128, fps=None, codec='vp9', container='ivf',"
              " crf=32, speed=8, gop=16, clip_span=16, segment_frames=0, strict_frame_count=False)\n"
              "r = process_video(VideoItem(sys.argv[1], 'c', 'v'), 0, opts)\nassert 'samples' in r, r\n"
              "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    peaks = []
    for frames in (250, 3000):
        path = write_video(tmp_path / f"v{frames}.mp4", num_frames=frames)
        r = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, cwd=REPO)
        assert r.returncode == 0, r.stderr
        peaks.append(int(r.stdout.split()[-1]) / 1024)  # MB
    assert peaks[1] - peaks[0] < 30, peaks


def test_build_begun_before_warnings_resumes_with_strict_frame_count(small_tree, clean_build, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(clean_build, out)
    identity = json.loads((out / "_build.json").read_text())
    del identity["strict_frame_count"]  # as written before playable-but-short inputs were kept
    (out / "_build.json").write_text(json.dumps(identity))
    r = subprocess.run(build_cmd(small_tree, out, "--workers", "0"), capture_output=True, text=True)
    assert r.returncode == 2 and "strict_frame_count True there vs False now" in r.stderr
    r = subprocess.run(build_cmd(small_tree, out, "--workers", "0", "--strict-frame-count"), capture_output=True, text=True)
    assert r.returncode == 0 and "resuming: 6 of 6 shards already done" in r.stderr


def test_lookahead_must_be_positive(tmp_path, capsys):
    """--lookahead 0 would leave no input in flight: refused up front, naming the option."""
    from sharding.build import parse_args

    with pytest.raises(SystemExit) as e:
        parse_args(["--input", str(tmp_path), "--layout", "folders", "--split", "train", "--out", str(tmp_path / "o"), "--lookahead", "0"])
    assert e.value.code == 2 and "--lookahead" in capsys.readouterr().err
    assert parse_args(["--input", str(tmp_path), "--layout", "folders", "--split", "train", "--out", str(tmp_path / "o")]).lookahead == 16


def test_decode_failure_in_a_jpeg_frames_set_names_shard_key_and_bytes(small_tree, tmp_path):
    """The same fault in the JPEG frames format: every frame of one video damaged in place (same
    size); DALI's image decoder fails, and the loader names the shard, the key and the bytes."""
    from dali_pipelines.config import TrainDataConfig
    from dali_pipelines.loader import TrainLoader

    out = tmp_path / "out"
    assert build("--input", small_tree, "--layout", "folders", "--split", "train", "--codec", "jpeg",
                 "--out", out, "--workers", "0") == 0
    table = load_shards(out)
    row = 2
    tar, offset = Path(table.tar_paths[int(table.columns["shard"][row])]), int(table.columns["offset"][row])
    data = bytearray(tar.read_bytes())
    bounds = list(table.fo_offsets[table.fo_ptr[row]:table.fo_ptr[row + 1]]) + [int(table.columns["size"][row])]
    for a, b in zip(bounds, bounds[1:]):  # each JPEG: its start marker kept, the rest zeros
        data[offset + a + 2:offset + b] = bytes(b - a - 2)
    tar.write_bytes(bytes(data))
    key = str(table.columns["keys"][row])
    cfg = TrainDataConfig(shards=str(out), batch_size=2, crop=64, num_threads=1, prefetch=1)
    loader = TrainLoader(cfg, rank=0, world_size=1, local_rank=0, device="cpu")
    with pytest.raises(ShardError, match=rf"a sample does not decode .*{key} \({tar} bytes \[\d+, \d+\)\)"):
        for _ in range(3):
            for _ in loader:
                pass
