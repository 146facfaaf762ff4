"""The once-per-node work of a shard set (sharding/nodecache.py): the memory-mapped sample table
and the sha256 check, with processes racing for them and killed while holding them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sharding import build, nodecache
from sharding.reader import ShardError, load_shards, merged_table
from sharding.formats import format_of
from tests.videos import write_video

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    """A keyframe-indexed (ivf) and a jpeg_frames train set of the same 6 videos, 3 shards each."""
    root = tmp_path_factory.mktemp("nodecache")
    for cls in ("a", "b"):
        for i, n in enumerate((40, 25, 33)):
            write_video(root / "in" / cls / f"{cls}_{i}.webm", num_frames=n, codec="libvpx-vp9")
    out = {}
    for name, extra in (("ivf", []), ("jpeg", ["--codec", "jpeg"])):
        out[name] = root / name
        assert build.main(["--input", str(root / "in"), "--layout", "folders", "--split", "train",
                           "--out", str(out[name]), "--workers", "0", "--videos-per-shard", "2",
                           "--quiet", *extra]) == 0
        shutil.rmtree(out[name] / nodecache.TABLE_CACHE, ignore_errors=True)
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(nodecache.TABLE_CACHE, nodecache.SHA256_CACHE))
    return dst


def _fresh(root: Path) -> dict:
    """The merged table parsed from the JSON tables, no cache involved."""
    info = json.loads((root / "_info.json").read_text())
    return merged_table(root, info, format_of(info), root / "_info.json")


@pytest.mark.parametrize("name", ["ivf", "jpeg"])
def test_table_is_built_once_then_mapped_with_the_same_values(sets, tmp_path, name):
    d = _copy(sets[name], tmp_path / name)
    first = load_shards(d, split="train")
    caches = [p for p in (d / nodecache.TABLE_CACHE).iterdir() if p.is_dir()]
    assert len(caches) == 1 and (caches[0] / "meta.json").is_file()
    stamp = {p.name: p.stat().st_mtime_ns for p in caches[0].iterdir()}
    second = load_shards(d, split="train")
    assert {p.name: p.stat().st_mtime_ns for p in caches[0].iterdir()} == stamp  # mapped, not rebuilt
    ref = _fresh(d)
    for t in (first, second):
        assert isinstance(t.columns["num_frames"], np.memmap)
        assert t.columns["num_frames"].dtype == np.int32  # compact where the values fit
        for k, v in ref.items():
            if k in t.columns:
                got = t.columns[k]
            else:
                got = {"video_ptr": t.video_ptr, "video_rows": t.video_rows}.get(k, getattr(t, k, None))
            assert got is not None, k
            assert np.array_equal(np.asarray(got), v), k
        assert t.columns["keys"][0] == str(ref["keys"][0]) and isinstance(t.columns["keys"][0], str)
        assert t.columns["keys"].tolist() == ref["keys"].tolist()
    # a window reads the same bytes through the mapped table as through the parsed one
    c = first.cut(0, 3, 16)
    assert c is not None and first.read(0)[c.begin:c.end] == second.read(0)[c.begin:c.end]


def test_a_changed_table_or_manifest_is_never_read_stale(sets, tmp_path):
    d = _copy(sets["ivf"], tmp_path / "set")
    load_shards(d)
    table = d / json.loads((d / "_info.json").read_text())["shards"][0]["table"]
    t = json.loads(table.read_text())
    t["labels"][0] = 7 if t["labels"][0] != 7 else 6
    table.write_text(json.dumps(t))
    assert int(load_shards(d).columns["labels"][0]) == t["labels"][0]
    # the earlier build's cache is dropped when a new one is written
    assert len([p for p in (d / nodecache.TABLE_CACHE).iterdir() if p.is_dir()]) == 1
    t["keys"] = t["keys"][:-1]  # now broken: the error is the parser's, naming the table
    table.write_text(json.dumps(t))
    with pytest.raises(ShardError, match=rf"{table.name}: columns of unequal length"):
        load_shards(d)


def test_read_only_set_keeps_its_caches_in_the_cache_dir(sets, tmp_path, monkeypatch):
    """A shard folder this process cannot write (a read-only mount; simulated: root writes anywhere,
    so `nodecache.writable` is told so) gets both caches in ZSVIDEO_CACHE_DIR and nothing beside it."""
    d = _copy(sets["ivf"], tmp_path / "ro")
    before = sorted(p.name for p in d.iterdir())
    monkeypatch.setenv(nodecache.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(nodecache, "writable", lambda folder: Path(folder) != d)
    load_shards(d, verify="sha256")
    assert sorted(p.name for p in d.iterdir()) == before
    assert [p for p in (tmp_path / "cache" / "tables").iterdir() if p.is_dir()]
    (sha_cache,) = (tmp_path / "cache" / "sha256").glob("*.json")
    assert len(json.loads(sha_cache.read_text())) == len(json.loads((d / "_info.json").read_text())["shards"])
    import sharding.reader as reader
    monkeypatch.setattr(reader, "sha256_file", lambda p: pytest.fail(f"hashed {p} again"))
    load_shards(d, verify="sha256")  # second start: the cache dir's entries, no hashing


# ------------------------------------------------------------------------- racing processes

LOAD = ("import sys; from sharding.reader import load_shards; "
        "t = load_shards(sys.argv[1], verify=sys.argv[2]); print('loaded', len(t), flush=True)")


def _start(d: Path, verify: str, faults: str = "", wait: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "ZSVIDEO_FAULTS": faults, "PYTHONPATH": str(REPO)}
    if wait is not None:
        env[nodecache.WAIT_ENV] = wait
    return subprocess.Popen([sys.executable, "-c", LOAD, str(d), verify], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_pause(p: subprocess.Popen) -> None:
    """Block until `p` prints its fault pause line (failsafe: 120 s)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = p.stderr.readline()
        if "fault: paused at" in line:
            return
        if not line and p.poll() is not None:
            break
    p.kill()
    pytest.fail(f"no pause: rc {p.poll()} {p.stderr.read()[-2000:]}")


def _finish(p: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        pytest.fail(f"still running after {timeout} s: {err[-2000:]}")
    return p.returncode, out, err


def test_table_build_killed_midway_the_waiting_rank_builds_it(sets, tmp_path):
    """Rank A builds the table cache and is killed (-9) with its arrays half written; rank B, which
    waited on the lock meanwhile, builds it itself and loads; no half-written cache is left."""
    d = _copy(sets["jpeg"], tmp_path / "set")
    a = _start(d, "size", "pause:table_cache:write")
    try:
        _wait_for_pause(a)
        rc, _, err = _finish(_start(d, "size", wait="1"))  # a holds the lock: b gives up, naming it
        assert rc != 0 and "building the sample table cache" in err, err
        b = _start(d, "size")  # waits on a's lock until a dies
        a.send_signal(signal.SIGKILL)
        a.wait()
        rc, out, err = _finish(b)
    finally:
        for p in (a,):
            if p.poll() is None:
                p.kill()
                p.wait()
    assert rc == 0 and "loaded" in out, err
    home = d / nodecache.TABLE_CACHE
    assert [p.name for p in home.iterdir() if p.name.endswith(".tmp")] == []
    assert len([p for p in home.iterdir() if p.is_dir()]) == 1
    assert len(load_shards(d)) == len(_fresh(d)["keys"])


def test_sha256_once_per_node_two_ranks_and_a_kill(sets, tmp_path):
    """Rank A hashes the tars holding the lock; it is paused before the second tar. Rank B, told to
    wait 1 s, gives up naming that tar. A is killed (-9): the first tar's hash survives in the
    cache, and rank C hashes only the rest (C would hang if it hashed the first tar again)."""
    d = _copy(sets["ivf"], tmp_path / "set")
    shards = [s["path"] for s in json.loads((d / "_info.json").read_text())["shards"]]
    a = _start(d, "sha256", f"pause:sha256:{shards[1]}")
    try:
        _wait_for_pause(a)
        rc, out, err = _finish(_start(d, "sha256", wait="1"))
        assert rc != 0 and f"hashing {d / shards[1]} (2 of {len(shards)})" in err, err
        assert "ZSVIDEO_CACHE_WAIT" in err
        a.send_signal(signal.SIGKILL)
        a.wait()
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
    cache = json.loads((d / nodecache.SHA256_CACHE).read_text())
    assert list(cache) == [shards[0]]
    rc, out, err = _finish(_start(d, "sha256", f"pause:sha256:{shards[0]}"))
    assert rc == 0 and "loaded" in out, err
    cache = json.loads((d / nodecache.SHA256_CACHE).read_text())
    assert sorted(cache) == sorted(shards)
    info = {s["path"]: s["sha256"] for s in json.loads((d / "_info.json").read_text())["shards"]}
    assert {p: c["sha256"] for p, c in cache.items()} == info


def test_two_ranks_racing_from_cold_agree(sets, tmp_path):
    """Two ranks started together on a cold set (table and sha256): both load the same table, the
    cache holds one entry per tar, and exactly one table cache exists."""
    d = _copy(sets["ivf"], tmp_path / "set")
    procs = [_start(d, "sha256") for _ in range(2)]
    results = [_finish(p) for p in procs]
    assert all(rc == 0 and "loaded" in out for rc, out, _ in results), results
    assert len({out for _, out, _ in results}) == 1
    assert len([p for p in (d / nodecache.TABLE_CACHE).iterdir() if p.is_dir()]) == 1
    cache = json.loads((d / nodecache.SHA256_CACHE).read_text())
    assert len(cache) == len(json.loads((d / "_info.json").read_text())["shards"])
