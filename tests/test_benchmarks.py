"""Smoke tests of the throughput benchmarks: they run end to end on tiny synthetic shards and report
well-formed results. No speed is asserted (the figures depend on the machine and its load)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
LOADERS = ["dali", "dataloader_decord", "dataloader_pyav", "dataloader_torchcodec", "spdl", "dali_whole_video",
           "dali_jpeg", "dataloader_tv_jpeg", "dataloader_pil_jpeg", "spdl_jpeg"]
# Peers whose library may be missing on a machine: the benchmark skips them with a note saying why.
OPTIONAL = {"dataloader_torchcodec": "torchcodec", "spdl": "spdl", "spdl_jpeg": "spdl"}
BATCH = 2


@pytest.fixture(scope="module")
def loader_run(tmp_path_factory):
    """One `python -m benchmarks.loader` run over tiny shards (4 videos x 40 frames; the default
    ivf build, keyframes every 16 frames, and its webm twins), about 1.5 s per loader."""
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "result.json"
    cmd = [sys.executable, "-m", "benchmarks.loader", "--cache-dir", str(tmp / "cache"), "--videos", "4",
           "--frames", "40", "--seconds", "1.2", "--windows", "2",
           "--warmup", "0.3", "--batch-size", str(BATCH), "--device", "cpu", "--json", str(out),
           "--out-dir", str(tmp)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), tmp, proc.stdout


def test_loader_json_structure(loader_run):
    res, tmp, stdout = loader_run
    assert set(res) >= {"machine", "shards", "ceiling_clips_per_s", "results"}
    assert isinstance(res["machine"], dict) and res["machine"]["cores_used"] >= 1
    assert Path(res["shards"], "_info.json").is_file()
    assert res["ceiling_clips_per_s"] > 0
    skipped = {n for n in OPTIONAL if any(note.startswith(f"{n} skipped: ") for note in res["notes"])}
    assert [r["loader"] for r in res["results"]] == [n for n in LOADERS if n not in skipped], res["notes"]
    for n in skipped:  # a skip names what to install
        assert any(note.startswith(f"{n} skipped: ") and "pip install" in note for note in res["notes"])
    for r in res["results"]:
        assert "error" not in r, r
        for key in ("clips_per_s", "decoded_per_delivered", "cpu_cores", "peak_rss_mb"):
            assert isinstance(r[key], float) and np.isfinite(r[key]), (r["loader"], key)
        assert r["clips_per_s"] > 0 and r["clips"] > 0 and r["peak_rss_mb"] > 0 and r["cpu_cores"] >= 0
        # Windows never start before the decode point: at least the delivered frames are decoded.
        assert r["decoded_per_delivered"] >= 1.0
    assert (tmp / "loader_cpu.png").stat().st_size > 0
    assert "ceiling" in stdout


def test_every_loader_delivers_training_clips(loader_run):
    res, _, _ = loader_run
    for r in res["results"]:
        assert r["batch_shape"] == [BATCH, 3, 16, 112, 112], r["loader"]  # (B, C, T, H, W)
        assert r["dtype"] == "float32", r["loader"]


def test_ivf_cut_decodes_less_than_whole_webm(loader_run):
    res, _, _ = loader_run
    by = {r["loader"]: r for r in res["results"]}
    whole = json.loads(Path(by["dali_whole_video"]["shards"], "_info.json").read_text())["encoding"]
    ivf = json.loads(Path(by["dali"]["shards"], "_info.json").read_text())["encoding"]
    twin = json.loads(Path(by["dataloader_decord"]["shards"], "_info.json").read_text())["encoding"]
    assert (ivf["container"], ivf["gop"]) == ("ivf", 16) and whole["container"] == "webm"
    assert (twin["container"], twin["gop"]) == ("webm", 16)  # the DataLoaders seek to the same keyframes
    # windows start uniformly in 0..24 of 40 frames: from frame 0 that is 28 frames per 16 on
    # average, from the keyframe before the window 23.5 (keyframes 0, 16, 32)
    assert by["dali"]["decoded_per_delivered"] < by["dali_whole_video"]["decoded_per_delivered"]
    assert by["dali"]["decoded_per_delivered"] <= 1 + 15 / 16


def test_jpeg_frames_side_by_side(loader_run):
    """The JPEG frames format in the same run: our graph and the JPEG peers on a --codec jpeg build
    of the same videos decode exactly the delivered frames and read only the window's JPEGs; both
    formats have their ceiling, their stored bytes per video-second and the same-run ratios."""
    res, _, stdout = loader_run
    by = {r["loader"]: r for r in res["results"]}
    jpeg = [n for n in ("dali_jpeg", "dataloader_tv_jpeg", "dataloader_pil_jpeg", "spdl_jpeg") if n in by]
    assert "dali_jpeg" in jpeg and "dataloader_tv_jpeg" in jpeg
    info = json.loads(Path(by["dali_jpeg"]["shards"], "_info.json").read_text())
    assert info["encoding"]["container"] == "jpeg_frames"
    from sharding.reader import load_shards

    member = load_shards(by["dali_jpeg"]["shards"]).columns["size"].mean()  # 40 frames
    for n in jpeg:
        assert by[n]["codec"] == "jpeg" and by[n]["decoded_per_delivered"] == 1.0, n
        # 16 of the 40 frames' JPEGs: about 40% of a member (frames differ a little in size)
        assert 0.3 * member < by[n]["bytes_per_clip"] < 0.5 * member, n
    assert by["dali"]["bytes_per_clip"] < by["dataloader_decord"]["bytes_per_clip"]  # the ivf cut vs a whole member
    assert res["ceiling_jpeg_clips_per_s"] > 0 and res["ceiling_clips_per_s"] > 0
    stored = res["stored_bytes_per_video_second"]
    assert stored["dali_jpeg"] > stored["dali"] > 0  # JPEG frames cost more bytes than VP9
    assert res["ratios"]["dali_jpeg_over_dali_per_cpu_s"] > 0 and res["ratios"]["best_jpeg_peer"] in jpeg
    assert "dali_jpeg / dali (VP9)" in stdout and "ceiling (jpeg)" in stdout


def test_dataloader_decoders_agree(loader_run):
    """decord and the PyAV keyframe-seek path return the same window of a sample."""
    from benchmarks.baselines import decode_window_decord, decode_window_pyav
    from sharding.reader import load_shards

    res, _, _ = loader_run
    by = {r["loader"]: r for r in res["results"]}
    table = load_shards(by["dali_whole_video"]["shards"], split="train")
    data = table.read(0)
    a = decode_window_decord(data, 10, 16).astype(np.int16)
    b = decode_window_pyav(data, 10, 16).astype(np.int16)
    assert a.shape == b.shape == (16, 128, 172, 3)
    assert np.abs(a - b).mean() < 3
    # the frames differ from their neighbours: the window really is frames 10..25, not a repeat
    c = decode_window_pyav(data, 11, 16).astype(np.int16)
    assert np.abs(a[1:] - c[:-1]).mean() < 3 and np.abs(a - c).mean() > 3


def test_standardize_clip_matches_graph_formula():
    from benchmarks.baselines import standardize_clip

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(16, 128, 172, 3), dtype=np.uint8)
    frames[3] = 77  # a flat frame stays finite (tf's std floor) and becomes zeros
    x = standardize_clip(frames, crop_x=5, crop_y=7, flip=True).numpy()
    assert x.shape == (3, 16, 112, 112) and x.dtype == np.float32
    ref = frames[:, 7:119, 5:117][:, :, ::-1].astype(np.float64) / 255
    mean = ref.mean(axis=(1, 2, 3), keepdims=True)
    std = np.maximum(ref.std(axis=(1, 2, 3), keepdims=True), 1 / np.sqrt(112 * 112 * 3))
    np.testing.assert_allclose(x, ((ref - mean) / std).transpose(3, 0, 1, 2), atol=1e-4)
    assert np.abs(x[:, 3]).max() < 1e-3


@pytest.mark.slow
def test_train_benchmark_runs(loader_run, tmp_path):
    res, _, _ = loader_run
    out = tmp_path / "train.json"
    cmd = [sys.executable, "-m", "benchmarks.train", f"data.train.shards={res['shards']}",
           "data.global_batch=2", "--steps", "2", "--warmup-steps", "1", "--device", "cpu", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["loop_clips_per_s"] > 0 and 0 <= r["data_wait_fraction"] <= 1
    assert r["compute_clips_per_s"] > 0 and r["loader_clips_per_s"] > 0


@pytest.mark.parametrize("decoder,options", [("torchcodec", "approximate,at"), ("torchcodec", "exact,range"),
                                             ("spdl", None)])
def test_peer_decoders_match_pyav(loader_run, decoder, options):
    """torchcodec (both seek modes, both frame calls) and SPDL return PyAV's window of a sample,
    also where the window runs past the video's end (edge padding, like DALI's)."""
    from benchmarks.baselines import decode_window, decode_window_pyav, peer_unavailable
    from sharding.reader import load_shards

    res, _, _ = loader_run
    shards = {r["loader"]: r for r in res["results"]}["dataloader_pyav"]["shards"]
    why = peer_unavailable("dataloader_torchcodec" if decoder == "torchcodec" else decoder, shards)
    if why is not None:
        pytest.skip(why)
    table = load_shards(shards, split="train")
    data, nf = table.read(1), int(table.columns["num_frames"][1])
    for start in (0, 10, nf - 8):
        kw = {"torchcodec": options} if options else {}
        a = decode_window(decoder, data, start, 16, nf, **kw)
        b = decode_window_pyav(data, start, 16)
        assert a.shape == b.shape == (16, 128, 172, 3) and a.dtype == np.uint8
        assert np.array_equal(a, b), (decoder, options, start)


def test_missing_peer_is_skipped_with_install_hint(loader_run, monkeypatch):
    """A peer whose library does not import is reported with what to install (the fault injected:
    its module name points nowhere), and a bad sample is reported with the shard folder."""
    from benchmarks import baselines

    res, tmp, _ = loader_run
    shards = {r["loader"]: r for r in res["results"]}["dataloader_pyav"]["shards"]
    monkeypatch.setitem(baselines.DECODER_MODULES, "torchcodec", "torchcodec_not_installed_here")
    why = baselines.peer_unavailable("dataloader_torchcodec", shards)
    assert why and "torchcodec is not installed" in why and "pip install torchcodec" in why
    # An ivf build: decord cannot open it, and the reason names the folder.
    ivf = {r["loader"]: r for r in res["results"]}["dali"]["shards"]
    why = baselines.peer_unavailable("dataloader_decord", ivf)
    assert why and "cannot decode a sample of" in why and ivf in why


@pytest.mark.slow  # 10-30 s: outside the default run's 10-minute budget; `make test-all` runs it
@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="the ffmpeg command line (apt-get install ffmpeg)")
def test_build_benchmark_runs(tmp_path):
    """`python -m benchmarks.build` on two tiny videos (H.264 and MPEG-4): both sides transcode every
    input, and the report has the same-run ratios."""
    from videos import write_video

    write_video(tmp_path / "a.mp4", num_frames=40, width=176, height=144)
    write_video(tmp_path / "b.avi", num_frames=30, width=200, height=150, codec="mpeg4")
    (tmp_path / "in.csv").write_text("path,label\na.mp4,x\nb.avi,y\n")
    out = tmp_path / "build.json"
    cmd = [sys.executable, "-m", "benchmarks.build", "--input", str(tmp_path / "in.csv"), "--workers", "2",
           "--cache-dir", str(tmp_path / "cache"), "--json", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert set(r["rows"]) == {"ours", "ffmpeg", "ffmpeg_longest_first", "pyav"}
    for row in r["rows"].values():
        assert row["videos"] == 2 and row["errors"] == 0 and row["bytes_out"] > 0, row
        assert row["wall_s"] > 0 and row["cpu_s"] > 0 and row["peak_rss_worker_mb"] > 0, row
    assert r["ratios"]["cpu"] > 0 and r["ratios"]["cpu_vs_pyav"] > 0 and r["core_hours_ours"] > 0
    assert "ours / ffmpeg" in proc.stdout and "ours / PyAV alone" in proc.stdout


def test_pyav_reference_transcode_matches_the_builders_geometry(tmp_path):
    """The build benchmark's PyAV-only side encodes every decoded frame at the builder's output size,
    VP9 in IVF with a keyframe every 16 frames."""
    import av

    from benchmarks.build import pyav_transcode
    from sharding.encode import output_size
    from videos import write_video

    write_video(tmp_path / "a.mp4", num_frames=40, width=200, height=150)
    pyav_transcode(tmp_path / "a.mp4", tmp_path / "a.ivf", 200, 150)
    with av.open(str(tmp_path / "a.ivf")) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "vp9"
        assert (s.codec_context.width, s.codec_context.height) == output_size(200, 150, 128)
        keys = [p.is_keyframe for p in c.demux(s) if p.size]
    assert len(keys) == 40
    assert [i for i, k in enumerate(keys) if k] == [0, 16, 32]


def test_colour_conversion_benchmark_times_every_flag_set(tmp_path):
    """`python -m benchmarks.colour_conversion` times DALI's bundled libswscale under DALI's flags
    and the others, and writes them all."""
    out = tmp_path / "cc.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.colour_conversion", "--frames", "30",
                           "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    from benchmarks.colour_conversion import FLAG_SETS

    rows = json.loads(out.read_text())["rows"]
    assert set(rows) == set(FLAG_SETS)
    assert all(r["scale_ms"] > 0 and r["context_ms"] > 0 for r in rows.values())
    assert rows["dali (bilinear | full_chr_h_int | accurate_rnd)"]["flags"] == "0x42002"
    assert "per 16-frame clip" in proc.stdout


@pytest.mark.slow  # 10-30 s: outside the default run's 10-minute budget; `make test-all` runs it
def test_graph_ops_benchmark_runs(loader_run, tmp_path):
    """`python -m benchmarks.graph_ops` times the decoder alone, the graph's augment and the earlier
    one on the same cut windows, and the torch alternatives."""
    res, _, _ = loader_run
    out = tmp_path / "ops.json"
    cmd = [sys.executable, "-m", "benchmarks.graph_ops", "--shards", res["shards"], "--seconds", "0.3",
           "--repeats", "1", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert set(r["dali_median"]) == {"decode", "augment", "cmn_dali_stats", "slice_cmn_stats"}
    assert all(v > 0 for v in r["dali_median"].values()) and len(r["torch_cpu_ms"]) == 4
