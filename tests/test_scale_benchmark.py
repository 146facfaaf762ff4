"""Smoke test of `python -m benchmarks.scale` at a tiny size: the generated set is one `load_shards`
accepts, its tar layout is the builder's, and the JSON holds every figure. No speed is asserted."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest

from benchmarks.scale import (clear_loader_cache, disk_usage, generate_set, set_dir, shard_files,
                              tar_layout)
from sharding.reader import load_shards
from sharding.shardio import write_shard

REPO = Path(__file__).resolve().parents[1]
VIDEOS, PER_SHARD, RANKS = 200, 50, 2


@pytest.fixture(autouse=True)
def _loader_cache_in_tmp(tmp_path, monkeypatch):
    """Whatever table cache a loader keeps goes under tmp_path (the benchmark's own runs point
    ZSVIDEO_CACHE_DIR at a temp folder of their own and delete it)."""
    monkeypatch.setenv("ZSVIDEO_CACHE_DIR", str(tmp_path / "loader_cache"))


@pytest.fixture(scope="module")
def scale_run(tmp_path_factory):
    """One benchmark run: 200 videos in 4 shards, 2 ranks at once (about 8 s, most of it imports)."""
    tmp = tmp_path_factory.mktemp("scale")
    out = tmp / "result.json"
    cmd = [sys.executable, "-m", "benchmarks.scale", "--sizes", str(VIDEOS), "--videos-per-shard", str(PER_SHARD),
           "--ranks", str(RANKS), "--out", str(tmp / "sets"), "--json", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    yield json.loads(out.read_text()), tmp, proc.stdout
    shutil.rmtree(tmp)  # the sparse tars' apparent size is 100 MB


def test_generated_set_loads(scale_run):
    res, tmp, _ = scale_run
    path = set_dir(tmp / "sets", "ivf", VIDEOS)
    assert res["sizes"][0]["set"]["path"] == str(path)
    table = load_shards(path, split="train")
    # one whole-video sample per video: rows = samples = videos
    assert len(table) == table.num_videos == VIDEOS == table.info["num_samples"]
    assert len(table.tar_paths) == VIDEOS // PER_SHARD and table.info["num_classes"] == 664
    kf_counts = np.diff(table.kf_ptr)
    assert kf_counts.min() >= 16 and kf_counts.max() <= 19
    assert set(np.unique(table.columns["height"].clip(max=128))) == {128}  # short side 128
    row = 7
    cut = table.cut(row, 100, 16)  # a window's bytes lie inside the member
    assert 32 <= cut.begin < cut.end <= table.columns["size"][row] and cut.first_frame <= 100
    # sparse tars: the manifest's size, (nearly) nothing on disk
    usage = disk_usage(path)
    assert usage["tar_apparent_bytes"] == sum(s["bytes"] for s in table.info["shards"])
    assert usage["disk_bytes"] < usage["tar_apparent_bytes"] / 100
    # the .idx locates the same video bytes as the table
    first = (path / "train-000000.idx").read_text().splitlines()
    assert first[0] == f"v1.2 {PER_SHARD}" and len(first) == PER_SHARD + 1
    ext, offset, size, name = first[1].split()[:4]
    assert (ext, int(offset), int(size)) == ("ivf", table.columns["offset"][0], table.columns["size"][0])
    assert name == table.columns["keys"][0] + ".ivf"


def test_json_has_every_figure(scale_run):
    res, _, stdout = scale_run
    assert res["git"]["commit"] and res["machine"]["logical_cpus"] >= 1
    entry = res["sizes"][0]
    assert entry["videos"] == VIDEOS and not entry["errors"]
    for phase in ("first", "warm"):
        r = entry[phase]
        assert r["rows"] == r["videos"] == VIDEOS and r["world_size"] == 8
        assert r["load_s"] > 0 and r["sampler_s"] > 0 and r["peak_rss"] > 0 and r["table_array_bytes"] > 0
        for mem in ("base", "loaded", "after"):
            assert r[mem]["rss"] > 0 and r[mem]["uss"] > 0 and r[mem]["anon"] > 0
    for phase in ("ranks_warm", "ranks_cold"):
        assert sorted(r["rank"] for r in entry[phase]) == list(range(RANKS))
        assert all(r["load_s"] > 0 and r["after"]["uss"] > 0 for r in entry[phase])
    s = entry["summary"]
    assert s["first"]["load_s"] > 0 and s["first"]["table_arrays_mib"] > 0
    assert s["ranks_warm"]["ranks"] == RANKS and s["ranks_cold"]["wall_max_s"] > 0
    assert "| | 200 |" in stdout and "load_shards wall s" in stdout


def test_no_process_left(scale_run):
    _, tmp, _ = scale_run
    left = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(str(tmp) in a for a in p.info["cmdline"] or []):
                left.append(p.pid)
        except psutil.Error:
            pass
    assert not left


def test_tar_layout_is_the_builders(tmp_path):
    """The offsets and size `tar_layout` computes are those of a tar `write_shard` writes."""
    rng = np.random.default_rng(0)
    samples = []
    for i, n in enumerate([19279, 512, 1, 4000]):
        meta = {"video_id": f"v{i}", "label": [3, 17, 250, 0][i], "num_frames": 40, "video_num_frames": 40,
                "first_frame": 0, "segment": 0, "own_start": 0, "own_count": 25, "width": 172, "height": 128,
                "pad": "x" * int(rng.integers(0, 900))}
        samples.append((f"v{i}_s000", "ivf", bytes(n), meta))
    entry = write_shard(tmp_path / "train-000000.tar", samples)
    real = [line.split() for line in (tmp_path / "train-000000.idx").read_text().splitlines()[1:]]
    sizes = np.array([[int(r[2]), int(r[6]), int(r[10])] for r in real])  # video, json, cls sizes
    *offsets, tar_size = tar_layout(sizes[:, 0], sizes[:, 1], sizes[:, 2])
    assert tar_size == entry["bytes"]
    assert np.stack(offsets, 1).tolist() == [[int(r[k]) for k in (1, 5, 9, 13, 17)] for r in real]


def test_jpeg_frames_set_and_reuse(tmp_path):
    path = tmp_path / "jpeg"
    gen = generate_set(path, 120, 50, "jpeg_frames", log=None)
    assert not gen["reused"] and gen["shards"] == 3
    table = load_shards(path, split="train")
    assert len(table) == 120 and table.info["encoding"]["container"] == "jpeg_frames"
    frames = np.diff(table.fo_ptr)
    assert (frames == table.columns["num_frames"]).all() and frames.min() >= 250 and frames.max() <= 300
    # a loader's cache inside the set is cleared; the set itself is reused, not rewritten
    (path / "_table_cache_v1").mkdir()
    (path / ".cache.lock").write_text("")
    assert {".cache.lock", "_table_cache_v1"} <= set(clear_loader_cache(path))
    assert not [p for p in path.iterdir() if p.name.startswith(("_table_cache", ".cache"))]
    assert generate_set(path, 120, 50, "jpeg_frames", log=None)["reused"]
    assert not generate_set(path, 100, 50, "jpeg_frames", log=None)["reused"]  # other settings: rebuilt
    assert load_shards(path).info["num_videos"] == 100
    shutil.rmtree(path)


def test_shard_files_are_deterministic():
    enc = {"gop": 16, "clip_span": 16}
    a = shard_files("ivf", 3, 3000, 20, 664, enc, seed=0)
    b = shard_files("ivf", 3, 3000, 20, 664, enc, seed=0)
    assert a == b and len(set(a[0]["video_ids"])) == 20
