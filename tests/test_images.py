"""Still images (SUN397 layout) -> image shards -> camera-motion pseudo-videos -> two-stage training."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from sharding.build import main as build_main
from sharding.class_names import class_text, embedding_words, load_class_list
from sharding.demo.images import write_demo_images
from sharding.images import image_size
from videos import write_video

REPO = Path(__file__).resolve().parents[1]


def _smooth(h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([128 + 100 * np.sin(xx / 23.0), 128 + 100 * np.cos(yy / 17.0),
                     128 + 80 * np.sin((xx + yy) / 31.0)], -1).astype(np.uint8)


@pytest.fixture(scope="module")
def sun_tree(tmp_path_factory):
    """SUN397's layout: letter folders, a nested class, a small and a large image, a PNG with
    alpha, a corrupt file and a stray text file."""
    root = tmp_path_factory.mktemp("sun") / "SUN397"
    (root / "a/abbey").mkdir(parents=True)
    (root / "b/bakery/shop").mkdir(parents=True)
    Image.fromarray(_smooth(100, 150)).save(root / "a/abbey/sun_small.jpg")
    Image.fromarray(_smooth(700, 600)).save(root / "a/abbey/sun_large.jpg")
    Image.fromarray(np.dstack([_smooth(200, 260), np.full((200, 260), 128, np.uint8)])).save(
        root / "b/bakery/shop/sun_alpha.png")
    Image.fromarray(_smooth(180, 240)).save(root / "b/bakery/shop/sun_plain.jpg")
    (root / "b/bakery/shop/sun_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 4)
    (root / "a/abbey/notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def sun_shards(sun_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("sun_shards") / "sun397"
    args = ["--input", str(sun_tree), "--layout", "images", "--split", "train", "--out", str(out),
            "--workers", "0", "--quiet", "--videos-per-shard", "2", "--max-error-rate", "0.5"]
    assert build_main(args) == 0
    return out, args


def test_image_build(sun_shards):
    out, args = sun_shards
    info = json.loads((out / "_info.json").read_text())
    assert info["dataset"] == "sun397" and info["layout"] == "images"
    assert info["encoding"]["media"] == "image" and info["encoding"]["ext"] == "jpg"
    assert [(c["name"], c["text"]) for c in info["classes"]] == [("abbey", "abbey"), ("bakery/shop", "bakery shop")]
    assert info["num_samples"] == 4 and len(info["errors"]) == 1 and "sun_broken" in info["errors"][0]["path"]
    assert info["ignored"] == ["a/abbey/notes.txt"]
    from sharding.reader import load_shards

    table = load_shards(out, split="train")
    sizes = {k: (w, h) for k, w, h in zip(table.columns["keys"], table.columns["width"], table.columns["height"])}
    assert sizes == {"sun_small": (258, 172), "sun_large": (512, 597), "sun_alpha": (260, 200),
                     "sun_plain": (240, 180)}
    assert set(table.columns["num_frames"]) == {1}
    row = list(table.columns["keys"]).index("sun_alpha")
    img = Image.open(io.BytesIO(table.read(row)))
    assert img.format == "JPEG" and img.mode == "RGB" and img.size == (260, 200)
    # resume: the same command again redoes nothing and changes nothing
    before = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    assert build_main(args) == 0
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == before


def test_plain_class_folders(tmp_path):
    write_demo_images(tmp_path / "raw", per_class=2, classes=["red_circle", "blue_square"], width=60, height=50)
    flat = tmp_path / "flat"
    for p in (tmp_path / "raw").glob("*/*/*.jpg"):  # ROOT/<class>/<image>, no letter folders
        (flat / p.parent.name).mkdir(parents=True, exist_ok=True)
        p.rename(flat / p.parent.name / p.name)
    assert build_main(["--input", str(flat), "--layout", "images", "--split", "train", "--out",
                       str(tmp_path / "out"), "--workers", "0", "--quiet"]) == 0
    info = json.loads((tmp_path / "out" / "_info.json").read_text())
    assert [c["name"] for c in info["classes"]] == ["blue_square", "red_circle"] and info["num_samples"] == 4


def test_image_size_rule():
    assert image_size(100, 80) == (215, 172) and image_size(300, 200) == (300, 200)
    assert image_size(1024, 768) == (683, 512) and image_size(512, 2000) == (512, 2000)


def test_sun397_class_texts():
    names = load_class_list("sun397")
    assert len(names) == 397 == len(set(names)) and "bakery/shop" in names and "barndoor" in names
    texts = [class_text(n, "sun397") for n in names]
    assert all(re.fullmatch(r"[a-z0-9]+( [a-z0-9]+)*", t) for t in texts)
    assert len({tuple(embedding_words(t)) for t in texts}) == 397
    assert class_text("car_interior/frontseat", "sun397") == "car interior front seat"
    tests = {class_text(n, d) for d in ("ucf101", "hmdb51") for n in load_class_list(d)}
    assert not set(texts) & tests  # SUN's "wave" is renamed "ocean wave"


def _bilinear(im, x, y):
    """Sample im (H, W, C) at continuous pixel coordinates (pixel centres at integers), edges clamped."""
    x = np.clip(x, 0, im.shape[1] - 1)
    y = np.clip(y, 0, im.shape[0] - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, im.shape[1] - 1), np.minimum(y0 + 1, im.shape[0] - 1)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    return (im[y0, x0] * (1 - fx) * (1 - fy) + im[y0, x1] * fx * (1 - fy)
            + im[y1, x0] * (1 - fx) * fy + im[y1, x1] * fx * fy)


def test_pan_zoom_matches_numpy_reference():
    from nvidia.dali import fn, pipeline_def

    from dali_pipelines.images import pan_zoom, window_matrices, window_path

    buf = io.BytesIO()
    Image.fromarray(_smooth(180, 240)).save(buf, format="JPEG", quality=95)
    data = np.frombuffer(buf.getvalue(), np.uint8)
    decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")).astype(np.float64)
    T, S = 5, 48
    windows = window_path((10, 20, 150), (100, 5, 60), T)  # a zoom-in pan to the right

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe_def():
        enc = fn.external_source(source=lambda: [data], batch=True)
        mat = fn.external_source(source=lambda: [window_matrices(windows, S)], batch=True)
        return pan_zoom(enc, mat, device="cpu", clip_len=T, size=S)

    pipe = pipe_def()
    pipe.build()
    out = np.array(pipe.run()[0].as_tensor())[0].astype(np.float64)  # (T, S, S, C)
    ref = []
    for x, y, side in windows:
        c = (np.arange(S) + 0.5) * side / S - 0.5  # output pixel centre -> image coordinate
        ref.append(_bilinear(decoded, (x + c)[None, :].repeat(S, 0), (y + c)[:, None].repeat(S, 1)))
    diff = np.abs(np.stack(ref) - out)
    # Tolerance: DALI rounds its bilinear result to uint8 (<= 0.5 level); Pillow and DALI's CPU
    # decoder (both libjpeg-turbo) agree here, so one level covers it (measured: mean 0.24, max 0.5).
    assert diff.max() <= 1.0 and diff.mean() < 0.4


def _render(data: np.ndarray, matrix: np.ndarray, size: int, image_size=None) -> np.ndarray:
    from nvidia.dali import fn, pipeline_def

    from dali_pipelines.images import pan_zoom

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe_def():
        enc = fn.external_source(source=lambda: [data], batch=True)
        mat = fn.external_source(source=lambda: [matrix], batch=True)
        wh = None if image_size is None else fn.external_source(
            source=lambda: [np.array(image_size, np.float32)], batch=True)
        return pan_zoom(enc, mat, device="cpu", clip_len=len(matrix), size=size, image_size=wh)

    pipe = pipe_def()
    pipe.build()
    return np.array(pipe.run()[0].as_tensor())[0].astype(np.float64)  # (T, size, size, C)


def test_pan_zoom_prescale_stops_aliasing_when_zooming_out():
    """A 512-pixel window shown at 64 pixels: the bare bilinear warp aliases a 3-pixel stripe
    pattern into bands, the antialiased prescale renders its mean grey; on a smooth image the two
    agree (the prescale changes nothing but the aliasing)."""
    from dali_pipelines.images import prescaled_matrices, window_matrices, window_path

    S = 64
    stripes = np.zeros((512, 512, 3), np.uint8)
    stripes[:, ::3] = 255  # columns 255, 0, 0, 255, ...: mean 85
    windows = window_path((0, 0, 512), (0, 0, 512), 2)
    matrix, size = prescaled_matrices(512, 512, windows, S)
    assert size == (128, 128)
    for image, check in ((stripes, "stripes"), (_smooth(512, 512), "smooth")):
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        data = np.frombuffer(buf.getvalue(), np.uint8)
        bare = _render(data, window_matrices(windows, S), S)
        pre = _render(data, matrix, S, size)
        if check == "stripes":
            assert bare.std() > 30  # bands of 0 .. 127
            assert abs(pre.mean() - 85) < 3 and pre.std() < 6
        else:
            assert np.abs(bare - pre).mean() < 2


def test_image_loader_and_exact_resume(sun_shards):
    from dali_pipelines.config import TrainDataConfig
    from dali_pipelines.loader import make_train_loader

    out, _ = sun_shards
    cfg = TrainDataConfig(shards=str(out), batch_size=2, clip_len=4, crop=32, pan_min_side=40,
                          num_threads=1, py_workers=0, device="cpu", epoch_clips=8)
    a = make_train_loader(cfg, 0, 1, 0, "cpu")
    batches = [b for b in a]
    assert len(batches) == 4
    clips = batches[0]["clips"]
    assert tuple(clips.shape) == (2, 3, 4, 32, 32)
    assert abs(float(clips.mean(dim=(1, 3, 4)).mean())) < 1e-4  # per-frame standardization
    # frames differ along the pan (the camera moves) ...
    assert float((clips[:, :, 0] - clips[:, :, -1]).abs().mean()) > 0.05
    # ... and a loader restored at batch 2 continues exactly
    b = make_train_loader(cfg, 0, 1, 0, "cpu")
    b.load_state_dict({"position": 2, "seed": 0, "global_batch": 2, "epoch_clips": 8})
    again = next(iter(b))
    assert np.array_equal(again["clips"].numpy(), batches[2]["clips"].numpy())
    assert np.array_equal(again["index"].numpy(), batches[2]["index"].numpy())


@pytest.mark.slow  # 10-30 s: outside the default run's 10-minute budget; `make test-all` runs it
def test_two_stage_recipe_end_to_end(tmp_path):
    """Stage 1 on still-image pseudo-videos, stage 2 on videos from stage 1's run folder."""
    write_demo_images(tmp_path / "images", per_class=2, classes=["red_circle", "blue_square", "green_triangle"],
                      width=80, height=64)
    for k, c in enumerate(["red_circle_rising", "blue_square_falling"]):
        for i in range(2):
            write_video(tmp_path / "videos" / c / f"{c}_{i}.mp4", num_frames=12 + k + i, width=64, height=48)
    common = ["--workers", "0", "--quiet"]
    assert build_main(["--input", str(tmp_path / "images"), "--layout", "images", "--split", "train",
                       "--out", str(tmp_path / "img_shards"), "--image-min-side", "40", *common]) == 0
    assert build_main(["--input", str(tmp_path / "videos"), "--layout", "folders", "--split", "train",
                       "--out", str(tmp_path / "vid_shards"), "--short-side", "48", "--clip-span", "4",
                       "--segment-frames", "8", *common]) == 0

    def config(name, shards, **model):
        cfg = {"run": {"out_dir": str(tmp_path / name), "log_every": 1, "threads": 1},
               "data": {"global_batch": 2, "train": {"shards": str(shards), "clip_len": 4, "crop": 32,
                                                     "epoch_clips": 4, "num_threads": 1, "py_workers": 0}},
               "embeddings": {"vectors": str(REPO / "sharding" / "data" / "demo_vectors.vec")},
               "model": {"backbone": "custom", "widths": [4, 4, 8, 8], "layers": [1, 1, 1, 1], **model},
               "optim": {"epochs": 1, "lr": 0.01, "lr_milestones": []},
               "checkpoint": {"every_steps": 100}}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    def run(path):
        r = subprocess.run([sys.executable, str(REPO / "trainer" / "main.py"), str(path)], capture_output=True,
                           text=True, timeout=300, cwd=REPO)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        return r

    run(config("stage1", tmp_path / "img_shards", dropout=0.0))
    assert (tmp_path / "stage1" / "checkpoints" / "ckpt_0000002.pt").is_file()
    r = run(config("stage2", tmp_path / "vid_shards", init=str(tmp_path / "stage1")))
    assert "model.init: backbone weights from" in r.stdout + r.stderr
    assert len((tmp_path / "stage2" / "train_log.jsonl").read_text().splitlines()) == 2


def test_retry_errors_on_an_image_build(tmp_path):
    """--retry-errors re-reads a finished image shard holding samples and errors: its table has the
    still-image format's columns (an image build used to be read as keyframe-indexed ivf: exit 2)."""
    from PIL import Image

    from sharding.build import main as build_main

    folder = tmp_path / "in" / "a" / "abbey"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (200, 260, 3), dtype=np.uint8)).save(folder / f"x{i}.jpg")
    (folder / "bad.jpg").write_bytes(b"not a jpeg")
    args = ["--input", str(tmp_path / "in"), "--layout", "images", "--split", "train", "--out", str(tmp_path / "out"),
            "--workers", "0", "--max-error-rate", "0.5", "--quiet"]
    assert build_main(args) == 0
    Image.fromarray(np.zeros((200, 260, 3), np.uint8)).save(folder / "bad.jpg", "JPEG")  # fixed
    assert build_main(args + ["--retry-errors"]) == 0
    info = json.loads((tmp_path / "out" / "_info.json").read_text())
    assert info["errors"] == [] and info["num_videos"] == 4
