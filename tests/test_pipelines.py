"""DALI graphs on real shards (built by sharding.build from tiny VP9 videos), CPU backend.

Exactness is checked against an independent PyAV decode of the same stored bytes: PyAV's swscale
with `bilinear+full_chroma_int+accurate_rnd` converts yuv420p to RGB exactly as DALI's CPU decoder
does (docs/DESIGN.md, Numerics), and the recorded window / crop / flip are redone in numpy.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from av.video.reformatter import Interpolation

from dali_pipelines import dump as dump_cli
from dali_pipelines.config import EvalDataConfig, TrainDataConfig
from dali_pipelines.standardize import KINETICS_MEAN, KINETICS_STD
from dali_pipelines.loader import make_eval_loader, make_train_loader
from sharding.reader import ShardError, load_shards
from sharding import build

sys.path.insert(0, str(Path(__file__).parent))
from videos import write_video  # noqa: E402

# class -> frame counts: several segments (120, 200), short (10), around one window (16, 17).
VIDEOS = {"red_ball": [120, 40, 10], "blue_box": [70, 200], "green_cone": [16, 17]}
PORTRAIT = ("green_cone", 30)  # a 128x170 (portrait) video besides the 172x128 ones
SWS_FLAGS = Interpolation.BILINEAR | Interpolation.FULL_CHR_H_INT | Interpolation.ACCURATE_RND


@pytest.fixture(scope="module")
def shard_sets(tmp_path_factory) -> dict[str, Path]:
    """Built with the real builder from VP9 inputs: 'train' (the default: keyframe-indexed ivf,
    keyframes every 16 frames), 'train_segments' (webm, 64-frame segments), 'eval' (whole webm) and
    'train_jpeg' / 'eval_jpeg' (`--codec jpeg`: every frame a JPEG)."""
    root = tmp_path_factory.mktemp("pipelines")
    for cls, counts in VIDEOS.items():
        for i, n in enumerate(counts):
            write_video(root / "in" / cls / f"{cls}_{i}.webm", num_frames=n, codec="libvpx-vp9")
    write_video(root / "in" / PORTRAIT[0] / "portrait.webm", num_frames=PORTRAIT[1], width=128,
                height=170, codec="libvpx-vp9")
    out = {}
    for name, split, extra in (("train", "train", []), ("train_segments", "train", ["--container", "webm"]),
                               ("eval", "eval", []), ("train_jpeg", "train", ["--codec", "jpeg"]),
                               ("eval_jpeg", "eval", ["--codec", "jpeg"])):
        out[name] = root / name
        rc = build.main(["--input", str(root / "in"), "--layout", "folders", "--split", split,
                         "--out", str(out[name]), "--workers", "0", "--videos-per-shard", "3",
                         "--quiet", *extra])
        assert rc == 0
    return out


def reference_frames(table, row: int) -> np.ndarray:
    """(F, H, W, 3) uint8: PyAV decode of one stored sample with DALI's conversion flags."""
    data = table.read(row)
    with av.open(io.BytesIO(data)) as c:
        return np.stack([f.reformat(format="rgb24", interpolation=SWS_FLAGS).to_ndarray()
                         for f in c.decode(video=0)])


def standardize(x: np.ndarray, how: str) -> np.ndarray:
    """(T, H, W, C) uint8 -> float64 as the model input is defined (before the transpose)."""
    x = x.astype(np.float64) / 255.0
    if how == "per_frame":  # tf.image.per_image_standardization per frame
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        std = x.std(axis=(1, 2, 3), keepdims=True)
        return (x - mean) / np.maximum(std, 1.0 / np.sqrt(x[0].size))
    return (x - np.array(KINETICS_MEAN)) / np.array(KINETICS_STD)


def assert_train_clip(d: dict, b: int, ref: np.ndarray, clip_len: int, stride: int, standardization: str) -> None:
    """Clip b of a train dump equals the reference frames' window (edge-padded), crop, flip and
    standardization, restated in numpy."""
    idx = np.minimum(d["start"][b] + np.arange(clip_len) * stride, len(ref) - 1)  # edge padding
    x, y = int(d["crop_x"][b]), int(d["crop_y"][b])
    clip = ref[idx, y:y + 112, x:x + 112]
    if d["flip"][b]:
        clip = clip[:, :, ::-1]
    expected = standardize(clip, standardization).transpose(3, 0, 1, 2)  # (T,H,W,C) -> (C,T,H,W)
    np.testing.assert_array_less(np.abs(d["clips"][b] - expected).max(), 1e-4)


def run_dump(tmp_path, shards, split, *extra) -> dict[str, np.ndarray]:
    out = tmp_path / f"{split}.npz"
    assert dump_cli.main(["--shards", str(shards), "--split", split, "--out", str(out), *extra]) == 0
    with np.load(out) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("layout,standardization,clip_len,stride", [
    ("train", "per_frame", 16, 1), ("train", "mean_std", 8, 2), ("train", "per_frame", 24, 1),
    ("train_segments", "per_frame", 16, 1), ("train_segments", "mean_std", 8, 2)])
def test_train_dump_matches_pyav(shard_sets, tmp_path, layout, standardization, clip_len, stride):
    """Clips against an independent PyAV decode of the whole stored sample: on the ivf layout this
    checks the keyframe cut too (a 24-frame clip is longer than the build's 16-frame span: fine on
    whole videos)."""
    d = run_dump(tmp_path, shard_sets[layout], "train", "--batches", "2", "--batch-size", "4",
                 "--standardization", standardization, "--clip-len", str(clip_len),
                 "--stride", str(stride), "--seed", "7", "--png", str(tmp_path / "sheet.png"))
    table = load_shards(shard_sets[layout])
    assert d["clips"].shape == (8, 3, clip_len, 112, 112) and d["clips"].dtype == np.float32
    assert str(d["standardization"]) == standardization
    assert (tmp_path / "sheet.png").stat().st_size > 0
    assert list(d["keys"]) == [str(k) for k in table.columns["keys"][d["index"]]]
    assert np.array_equal(d["labels"], table.columns["labels"][d["index"]])
    for b in range(len(d["clips"])):
        assert_train_clip(d, b, reference_frames(table, int(d["index"][b])), clip_len, stride, standardization)


def jpeg_reference_frames(table, row: int) -> np.ndarray:
    """(F, H, W, 3) uint8: each JPEG of a stored jpeg_frames sample decoded by Pillow, split at the
    frame offsets of the sample's own json member (not the table the loader reads)."""
    from PIL import Image

    data = table.read(row)
    key = str(table.columns["keys"][row])
    with tarfile.open(table.root / table.info["shards"][int(table.columns["shard"][row])]["path"]) as tar:
        offsets = json.loads(tar.extractfile(f"{key}.json").read())["frame_offsets"] + [len(data)]
    return np.stack([np.asarray(Image.open(io.BytesIO(data[a:b])).convert("RGB"))
                     for a, b in zip(offsets, offsets[1:])])


@pytest.mark.parametrize("standardization,clip_len,stride", [
    ("per_frame", 16, 1), ("mean_std", 8, 2), ("per_frame", 24, 1)])
def test_train_dump_on_jpeg_frames_matches_pillow(shard_sets, tmp_path, standardization, clip_len, stride):
    """The exactness test's twin for `--codec jpeg`: DALI's image decoder on the window's frames vs
    Pillow on each stored JPEG + numpy crop/flip/standardize (edge padding past a short video's
    end, a stride, a clip longer than the build's span)."""
    d = run_dump(tmp_path, shard_sets["train_jpeg"], "train", "--batches", "3", "--batch-size", "4",
                 "--standardization", standardization, "--clip-len", str(clip_len),
                 "--stride", str(stride), "--seed", "7")
    table = load_shards(shard_sets["train_jpeg"])
    assert table.format.name == "jpeg_frames" and d["clips"].shape == (12, 3, clip_len, 112, 112)
    assert np.array_equal(d["labels"], table.columns["labels"][d["index"]])
    for b in range(len(d["clips"])):
        ref = jpeg_reference_frames(table, int(d["index"][b]))
        assert len(ref) == table.columns["num_frames"][d["index"][b]]
        assert_train_clip(d, b, ref, clip_len, stride, standardization)


@pytest.mark.parametrize("standardization", ["per_frame", "mean_std"])
def test_eval_dump_matches_pyav_centre_crop_uniform_clips(shard_sets, tmp_path, standardization):
    n_clips = 3
    d = run_dump(tmp_path, shard_sets["eval"], "eval", "--batches", "3", "--batch-size", "3",
                 "--num-clips", str(n_clips), "--standardization", standardization)
    table = load_shards(shard_sets["eval"])
    assert d["clips"].shape == (9, n_clips, 3, 16, 112, 112)
    assert sorted(d["video"][d["video"] >= 0].tolist()) == list(range(table.num_videos))
    for b in np.flatnonzero(d["video"] >= 0):
        ref = reference_frames(table, int(d["index"][b]))
        f, h, w = ref.shape[:3]
        assert f == table.columns["num_frames"][d["index"][b]]
        for k in range(n_clips):
            # Independent restatement: clip k starts at floor(k * (F - 16) / (N - 1)), clamped.
            start = (k * max(f - 16, 0)) // (n_clips - 1)
            idx = np.minimum(start + np.arange(16), f - 1)
            y, x = (h - 112) // 2, (w - 112) // 2
            expected = standardize(ref[idx, y:y + 112, x:x + 112], standardization).transpose(3, 0, 1, 2)
            np.testing.assert_array_less(np.abs(d["clips"][b, k] - expected).max(), 1e-4)


@pytest.mark.parametrize("standardization,ranks", [("per_frame", 1), ("mean_std", 2)])
def test_eval_on_jpeg_frames_matches_pillow(shard_sets, standardization, ranks):
    """The evaluation's twin for `--codec jpeg`: each needed frame decoded once by DALI's image
    decoder, clips assembled per video, against Pillow + numpy (centre crop, uniform clips); every
    video once over the ranks, padding marked -1, the same batches on a second pass."""
    table = load_shards(shard_sets["eval_jpeg"])
    n_clips, seen = 3, []
    for rank in range(ranks):
        cfg = EvalDataConfig(shards=str(shard_sets["eval_jpeg"]), batch_size=2, num_clips=n_clips,
                             standardization=standardization, py_workers=0)
        loader = make_eval_loader(cfg, rank, ranks, 0, "cpu")
        passes = [list(loader) for _ in range(2)]
        assert len(passes[0]) == len(loader) and all(torch.equal(a["clips"], b["clips"]) for a, b in zip(*passes))
        for batch in passes[0]:
            assert batch["clips"].shape == (2, n_clips, 3, 16, 112, 112)
            for b in np.flatnonzero(batch["video"].numpy() >= 0):
                seen.append(int(batch["video"][b]))
                row = int(batch["index"][b])
                ref = jpeg_reference_frames(table, row)
                f, h, w = ref.shape[:3]
                assert int(batch["labels"][b]) == table.columns["labels"][row]
                for k in range(n_clips):
                    start = (k * max(f - 16, 0)) // (n_clips - 1)
                    idx = np.minimum(start + np.arange(16), f - 1)
                    y, x = (h - 112) // 2, (w - 112) // 2
                    expected = standardize(ref[idx, y:y + 112, x:x + 112], standardization).transpose(3, 0, 1, 2)
                    np.testing.assert_array_less(np.abs(batch["clips"][b, k].numpy() - expected).max(), 1e-4)
    assert sorted(seen) == list(range(table.num_videos))


def test_eval_every_video_once_over_two_ranks(shard_sets):
    table = load_shards(shard_sets["eval"])
    cfg = EvalDataConfig(shards=str(shard_sets["eval"]), batch_size=3, num_clips=2, py_workers=0)
    seen, lengths = [], []
    for rank in range(2):
        loader = make_eval_loader(cfg, rank, 2, 0, "cpu")
        batches = list(loader)
        lengths.append(len(batches))
        for batch in batches:
            assert batch["clips"].shape == (3, 2, 3, 16, 112, 112)
            videos = batch["video"].tolist()
            seen += [v for v in videos if v >= 0]
            keep = batch["video"] >= 0
            assert torch.equal(batch["labels"][keep],
                               torch.as_tensor(table.columns["labels"][batch["index"][keep].numpy()]))
        again = [b["video"].tolist() for b in loader]  # a second pass: the same videos again
        assert again == [b["video"].tolist() for b in batches]
        next(iter(loader))  # a pass left early ...
        again = [b["video"].tolist() for b in loader]  # ... does not shift the next one
        assert again == [b["video"].tolist() for b in batches]
    # 8 videos, 2 ranks x 4, batch 3: 2 batches per rank (2 padding entries each).
    assert lengths == [2, 2]
    assert sorted(seen) == list(range(table.num_videos)) == list(range(8))


@pytest.mark.parametrize("layout", ["train", "train_jpeg"])
def test_restored_loader_continues_the_same_stream(shard_sets, layout):
    """(On JPEG frames the batch-of-frames source, in a worker process here.)"""
    cfg = TrainDataConfig(shards=str(shard_sets[layout]), batch_size=2, epoch_clips=6, seed=3,
                          py_workers=1)
    def take(loader, n):
        out = []
        while len(out) < n:
            for batch in loader:
                out.append(batch)
                if len(out) == n:
                    break
        return out

    a = make_train_loader(cfg, 0, 1, 0, "cpu")
    assert a.steps_per_epoch == 3
    first = take(a, 2)
    state = a.state_dict()
    assert state["position"] == 2
    rest = take(a, 3)  # crosses into epoch 1
    b = make_train_loader(cfg, 0, 1, 0, "cpu")
    b.load_state_dict(state)
    assert b.epoch == 0 and len(list(zip(range(5), b))) == 1  # one batch left in epoch 0
    b2 = make_train_loader(cfg, 0, 1, 0, "cpu")
    b2.load_state_dict(state)
    resumed = take(b2, 3)
    for x, y in zip(rest, resumed):
        for k in x:
            assert torch.equal(x[k], y[k]), k
    assert not torch.equal(first[0]["clips"], rest[0]["clips"])
    with pytest.raises(RuntimeError, match="before the loader's first iteration"):
        a.load_state_dict(state)
    with pytest.raises(ValueError, match="seed"):
        make_train_loader(cfg.model_copy(update={"seed": 4}), 0, 1, 0, "cpu").load_state_dict(state)


@pytest.mark.parametrize("layout", ["train", "train_jpeg"])
def test_resize_short_changes_the_frame_before_the_crop(shard_sets, layout):
    """(On JPEG frames the resize path decodes whole frames: the crop comes after the resize.)"""
    cfg = TrainDataConfig(shards=str(shard_sets[layout]), batch_size=4, resize_short=112,
                          epoch_clips=8, py_workers=0, standardization="mean_std")
    batch = next(iter(make_train_loader(cfg, 0, 1, 0, "cpu")))
    assert batch["clips"].shape == (4, 3, 16, 112, 112)
    # A 112 short side leaves no room vertically (landscape) / horizontally (portrait).
    assert (torch.minimum(batch["crop_x"], batch["crop_y"]) == 0).all()
    assert (torch.maximum(batch["crop_x"], batch["crop_y"]) <= 151 - 112).all()


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_broken_shard_sets_fail_naming_the_file(shard_sets, tmp_path):
    d = _copy(shard_sets["train"], tmp_path / "missing_tar")
    (d / "train-000001.tar").unlink()
    with pytest.raises(ShardError, match=r"train-000001\.tar: tar shard .* missing.*sharding\.build"):
        make_train_loader(TrainDataConfig(shards=str(d), batch_size=1), 0, 1, 0, "cpu")

    d = _copy(shard_sets["train"], tmp_path / "missing_index")
    (d / "train-000000.idx").unlink()
    with pytest.raises(ShardError, match=r"train-000000\.idx: DALI index"):
        load_shards(d)

    d = _copy(shard_sets["train"], tmp_path / "truncated")
    with open(d / "train-000000.tar", "r+b") as f:
        f.truncate(1024)
    with pytest.raises(ShardError, match=r"train-000000\.tar: size 1024 bytes"):
        load_shards(d)

    d = _copy(shard_sets["train"], tmp_path / "count")
    info = json.loads((d / "_info.json").read_text())
    info["shards"][0]["num_samples"] += 1
    (d / "_info.json").write_text(json.dumps(info))
    with pytest.raises(ShardError, match=r"train-000000\.samples\.json: \d+ rows, the manifest says"):
        load_shards(d)

    info["shards"] = []
    (d / "_info.json").write_text(json.dumps(info))
    with pytest.raises(ShardError, match="lists no shards"):
        load_shards(d)

    with pytest.raises(ShardError, match=r"_info\.json: missing"):
        load_shards(tmp_path / "nowhere")
    with pytest.raises(ShardError, match="'eval' shards are needed"):
        load_shards(shard_sets["train"], split="eval")


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="batchsize"):
        TrainDataConfig(shards="x", batchsize=3)
    with pytest.raises(ValueError, match="resize_short"):
        EvalDataConfig(shards="x", resize_short=100, crop=112)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["train", "train_segments", "eval"])
def test_mixed_graph_matches_cpu_graph(shard_sets, layout):
    """NVDEC (mixed) vs the CPU decoder: same samples, same augmentation, decoder tolerance; on
    the cut IVF streams of the default layout, on segments, and (eval) whole videos."""
    if layout == "eval":
        base = dict(shards=str(shard_sets["eval"]), batch_size=3, num_clips=3, py_workers=0)
        cpu = next(iter(make_eval_loader(EvalDataConfig(device="cpu", **base), 0, 1, 0, "cpu")))
        gpu = next(iter(make_eval_loader(EvalDataConfig(device="gpu", **base), 0, 1, 0, "cuda:0")))
        assert gpu["clips"].is_cuda and torch.equal(cpu["index"], gpu["index"].cpu())
        diff = (cpu["clips"] - gpu["clips"].cpu()).abs()
        assert diff.mean() < 0.05 and diff.max() < 1.0
        return
    base = dict(shards=str(shard_sets[layout]), batch_size=4, epoch_clips=8, seed=1, py_workers=0)
    cpu = next(iter(make_train_loader(TrainDataConfig(device="cpu", **base), 0, 1, 0, "cpu")))
    gpu = next(iter(make_train_loader(TrainDataConfig(device="gpu", **base), 0, 1, 0, "cuda:0")))
    assert gpu["clips"].is_cuda
    for k in ("index", "start", "crop_x", "crop_y", "flip"):
        assert torch.equal(cpu[k], gpu[k].cpu()), k
    # Standardized units: a few uint8 levels of colour-conversion difference is ~0.05 here.
    diff = (cpu["clips"] - gpu["clips"].cpu()).abs()
    assert diff.mean() < 0.05 and diff.max() < 1.0


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["train", "train_segments", "eval"])
def test_cpu_decode_gpu_ops_matches_cpu_graph(shard_sets, layout):
    """decode_device: cpu on a GPU graph: the same CPU decoder, then resize/crop/flip/layout and the
    statistics on the GPU: equal to the CPU graph up to float rounding."""
    if layout == "eval":
        base = dict(shards=str(shard_sets["eval"]), batch_size=3, num_clips=3, py_workers=0)
        cpu = next(iter(make_eval_loader(EvalDataConfig(device="cpu", **base), 0, 1, 0, "cpu")))
        gpu = next(iter(make_eval_loader(EvalDataConfig(device="gpu", decode_device="cpu", **base),
                                         0, 1, 0, "cuda:0")))
        keys = ("index", "video", "labels")
    else:
        # no resize: every GPU op after the decoder is then exact (slice, uint8 mirror/transpose)
        # or float statistics, so the tolerance can be float rounding, not interpolation
        base = dict(shards=str(shard_sets[layout]), batch_size=4, epoch_clips=8, seed=1, py_workers=0)
        cpu = next(iter(make_train_loader(TrainDataConfig(device="cpu", **base), 0, 1, 0, "cpu")))
        gpu = next(iter(make_train_loader(TrainDataConfig(device="gpu", decode_device="cpu", **base),
                                          0, 1, 0, "cuda:0")))
        keys = ("index", "labels", "start", "crop_x", "crop_y", "flip")
    assert gpu["clips"].is_cuda
    for k in keys:
        assert torch.equal(cpu[k], gpu[k].cpu()), k
    np.testing.assert_array_less((cpu["clips"] - gpu["clips"].cpu()).abs().max().item(), 1e-3)


@pytest.mark.gpu
def test_gpu_loader_labels_stay_right_across_many_batches(shard_sets):
    """The host outputs (labels, index) cross to CUDA through torch's pinned memory, never as an
    asynchronous copy of a DALI buffer DALI may refill: every batch's labels match its rows."""
    table = load_shards(shard_sets["train"])
    cfg = TrainDataConfig(shards=str(shard_sets["train"]), batch_size=4, epoch_clips=64, py_workers=1,
                          device="gpu", prefetch=3)
    for batch in make_train_loader(cfg, 0, 1, 0, "cuda:0"):
        assert batch["labels"].is_cuda
        expected = torch.as_tensor(table.columns["labels"][batch["index"].cpu().numpy()])
        assert torch.equal(batch["labels"].cpu(), expected)


def test_dump_takes_a_run_configs_data_settings(shard_sets, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"data:\n  train:\n    shards: {shard_sets['train']}\n    clip_len: 4\n    stride: 2\n"
                   "    crop: 48\n    flip: false\n    standardization: mean_std\n")
    out = tmp_path / "c.npz"
    assert dump_cli.main(["--config", str(cfg), "--split", "train", "--batch-size", "3", "--out", str(out)]) == 0
    d = np.load(out)
    assert d["clips"].shape == (3, 3, 4, 48, 48) and not d["flip"].any()
    assert str(d["standardization"]) == "mean_std"
    # a flag still overrides the config
    assert dump_cli.main(["--config", str(cfg), "--split", "train", "--batch-size", "3", "--crop", "32",
                          "--out", str(out)]) == 0
    assert np.load(out)["clips"].shape == (3, 3, 4, 32, 32)


def test_standardize_matches_float64_on_hard_frames():
    """The loaders' torch standardization (`standardize.standardize`) against the numpy float64
    definition on frames where a one-pass float32 variance fails: near-flat bright frames (values
    249-251), a flat one (std 0: all zeros), a dark one, full-range noise; per channel offsets (so
    the frame variance includes the channels' spread); a permuted (B, T, H, W, C) view gives the
    same result as its contiguous copy."""
    import torch

    from dali_pipelines.standardize import standardize as torch_standardize

    rng = np.random.default_rng(0)
    T, H, W = 6, 112, 112
    thwc = np.stack([
        rng.integers(249, 252, (H, W, 3)),  # near-flat, bright
        np.full((H, W, 3), 250),  # flat
        rng.integers(0, 4, (H, W, 3)),  # dark
        rng.integers(0, 256, (H, W, 3)),  # noise
        np.clip(rng.normal(128, 20, (H, W, 3)) + [60, 0, -60], 0, 255),  # channels apart
        np.clip(np.arange(W)[None, :, None] * 2 + rng.integers(0, 3, (H, W, 3)), 0, 255),  # ramp
    ]).astype(np.uint8)  # (T, H, W, C)
    batch = np.stack([thwc, thwc[::-1]])  # (B, T, H, W, C)
    for how in ("per_frame", "mean_std"):
        want = np.stack([standardize(clip, how).transpose(3, 0, 1, 2) for clip in batch])  # (B, C, T, H, W)
        view = torch.from_numpy(batch).permute(0, 4, 1, 2, 3)
        got = torch_standardize(view, how)
        assert got.is_contiguous() and got.dtype == torch.float32
        np.testing.assert_allclose(got.numpy(), want, atol=2e-5, rtol=0)
        assert torch.equal(got, torch_standardize(view.contiguous(), how))
    assert float(torch_standardize(torch.from_numpy(batch).permute(0, 4, 1, 2, 3), "per_frame")[0, :, 1].abs().max()) == 0


def test_hw_decoder_load_reaches_the_mixed_jpeg_decoder_only(shard_sets):
    """`hw_decoder_load` (the hardware JPEG decoder's share on a GPU) goes from the config to the
    JPEG-frames decode step, which passes it to the mixed decoder and never to the CPU one (the CPU
    decoder has no such argument); a value outside [0, 1] is a config error."""
    cfg = TrainDataConfig(shards=str(shard_sets["train_jpeg"]), batch_size=2, hw_decoder_load=0.0, py_workers=0)
    decode = make_train_loader(cfg, 0, 1, 0, "cpu").source.decode
    assert decode.hw_decoder_load == 0.0
    assert decode._decoder_args("mixed")["hw_decoder_load"] == 0.0
    assert "hw_decoder_load" not in decode._decoder_args("cpu")
    with pytest.raises(ValueError, match="hw_decoder_load"):
        TrainDataConfig(shards="x", hw_decoder_load=1.5)
