"""Generate the demo's videos: a compositional world of coloured shapes doing simple motions.

    python -m sharding.demo OUT [--seed S] [--videos-per-class N] [--frames F] [--workers W] ...

writes a folders layout that `python -m sharding.build` reads, plus the class split:

```
OUT/videos/<class_dir>/<class_dir>_NNN.mp4    H.264 yuv420p, 25 fps, 172x128 (default)
OUT/splits.json                               {"seen": [...], "unseen": [...], "vocabulary": [...],
                                               "seen_test": [...], "generator": {...}}
OUT/train.csv, unseen.csv, seen_test.csv      `path,label` lists (`sharding.build --layout list`)
```

A class is `colour x shape x motion`, its folder the underscore-joined phrase (`red_circle_rising`,
embedded as "red circle rising"). The default world has 4 x 3 x 6 = 72 classes, 12 of them unseen.
Every word of an unseen class appears in seen classes, only in other combinations: telling
"blue triangle shrinking" apart from the other unseen classes needs the model to have learned
"blue", "triangle" and "shrinking" separately from seen classes, i.e. zero-shot transfer through
the word vectors.

All motions are invariant under a horizontal flip, because training flips whole clips (p=0.5):
"rising"/"falling" (vertical), "growing"/"shrinking" (size), "blinking" (on/off), "shaking" (fast
horizontal oscillation: its mirror image is still shaking). Four of them are time-reversal pairs,
so a loader that shuffles or reverses frames loses them (rising <-> falling, growing <-> shrinking).

Not trivial on purpose, so that a pipeline bug shows in the numbers: muted textured backgrounds with
static clutter shapes, 0-2 smaller distractor objects drifting sideways (in class colours or class
shapes, never both), camera jitter, per-video colour/brightness changes, Gaussian noise, random sizes, speeds,
positions, rotations and phases. The target is always drawn on top.

Deterministic: video `i` of class `k` is drawn from `numpy.random.default_rng([seed, k, i])`, so the
output does not depend on `--workers`; the class split depends only on `--split-seed`.

`splits.json["seen_test"]` lists the last `--seen-test` videos of every seen class (paths relative to
OUT): a trainer that wants a seen-class accuracy on videos it never trained on holds them out. A
plain folders build of `OUT/videos` ignores the key.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

# RGB of the class colours (each video jitters them).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (210, 40, 35),
    "green": (40, 170, 60),
    "blue": (35, 75, 215),
    "yellow": (235, 205, 35),
}
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("rising", "falling", "growing", "shrinking", "blinking", "shaking")
# Every word a default class name uses; sharding/data/demo_vectors.vec holds exactly these
# (sharding.demo.vectors checks that each has its own row in the pruned spaCy table).
VOCABULARY = tuple(sorted(set(COLOURS) | set(SHAPES) | set(MOTIONS)))

# Distractors also come in colours and shapes that are no class words.
_EXTRA_COLOURS = ((235, 235, 235), (25, 25, 25), (128, 128, 128), (140, 90, 50))
_EXTRA_SHAPES = ("ring", "cross")
MAX_TILT = 0.45  # radians: squares and triangles tilt at most this much (a 45-degree square looks like a diamond)

JITTER = 4  # camera jitter, pixels each way: the scene is drawn on a canvas this much larger
VIDEOS_DIR = "videos"
SPLITS_FILE = "splits.json"
TRAIN_LIST, UNSEEN_LIST, SEEN_TEST_LIST = "train.csv", "unseen.csv", "seen_test.csv"


@dataclass(frozen=True)
class WorldConfig:
    """What `generate` draws (the command line's options).

    Attributes:
        seed: seeds every video's random generator.
        videos_per_class: videos per class.
        frames: frames per video.
        width: frame width (even: libx264 refuses odd sizes).
        height: frame height (keep the short side >= 128, the GPU decoder's minimum).
        fps: frame rate written into the container.
        colours: colour words (keys of `COLOURS`).
        shapes: shape words (from `SHAPES`).
        motions: motion words (from `MOTIONS`).
        num_unseen: unseen classes; None picks one class in six.
        split_seed: seeds the choice of unseen classes.
        seen_test: videos per seen class listed in `splits.json["seen_test"]`.
        crf: libx264 quality (lower is better; the shard builder re-encodes anyway). 23 keeps a
            video near 20 KB; 18 keeps more of the noise at about 90 KB.
        max_distractors: each video has 0..max_distractors moving distractor objects.
        max_clutter: each background has min(3, max_clutter)..max_clutter static clutter shapes.
        max_noise: the Gaussian noise's standard deviation is drawn in [max_noise/3, max_noise].
    """

    seed: int = 0
    videos_per_class: int = 12
    frames: int = 32
    width: int = 172
    height: int = 128
    fps: int = 25
    colours: tuple[str, ...] = tuple(COLOURS)
    shapes: tuple[str, ...] = SHAPES
    motions: tuple[str, ...] = MOTIONS
    num_unseen: int | None = None
    split_seed: int = 0
    seen_test: int = 2
    crf: int = 23
    max_distractors: int = 2
    max_clutter: int = 7
    max_noise: float = 10.0

    def classes(self) -> list[tuple[str, str, str]]:
        """All `(colour, shape, motion)` triples, colour-major (the order of the class index `k`)."""
        return list(itertools.product(self.colours, self.shapes, self.motions))


def class_dir(colour: str, shape: str, motion: str) -> str:
    """The class folder name, e.g. `class_dir("red", "circle", "rising") == "red_circle_rising"`."""
    return f"{colour}_{shape}_{motion}"


def _split_score(classes: list[tuple[str, str, str]], pick: list[int]) -> int:
    """How unevenly `pick` uses each word (max - min count per slot) plus repeated word pairs."""
    score = 0
    for slot in range(3):
        values = sorted({c[slot] for c in classes})
        counts = [sum(classes[i][slot] == v for i in pick) for v in values]
        score += max(counts) - min(counts)
    for a, b in ((0, 1), (0, 2), (1, 2)):
        pairs = [(classes[i][a], classes[i][b]) for i in pick]
        score += len(pairs) - len(set(pairs))
    return score


def choose_unseen(
    classes: list[tuple[str, str, str]], num_unseen: int, split_seed: int = 0, restarts: int = 4, steps: int = 3000
) -> list[int]:
    """Pick the unseen classes: balanced over words, every unseen word also in a seen class.

    A seeded local search over swaps (one unseen class for one seen class) lowers a score that
    counts how unevenly the unseen classes use each colour, shape and motion, plus repeated word
    pairs (two unseen classes sharing "red circle" differ by one word only). With the default
    4 x 3 x 6 world and 12 unseen classes it finds score 0: every colour 3 times, every shape 4
    times, every motion twice, no pair twice.

    Args:
        classes: `(colour, shape, motion)` triples.
        num_unseen: how many to hold out; at least 1 and fewer than the classes.
        split_seed: seeds the search.
        restarts: independent searches; the best result wins.
        steps: swaps tried per search.

    Returns:
        Sorted indices into `classes`.

    Raises:
        ValueError: no split leaves every unseen word in some seen class.
    """
    if not 1 <= num_unseen < len(classes):
        raise ValueError(f"num_unseen={num_unseen} must be in [1, {len(classes) - 1}]")
    rng = np.random.default_rng(split_seed)

    def valid(pick: list[int]) -> bool:
        seen_words = {w for i, c in enumerate(classes) if i not in pick for w in c}
        return all(w in seen_words for i in pick for w in classes[i])

    best, best_score = None, None
    for _ in range(restarts):
        pick = sorted(rng.choice(len(classes), size=num_unseen, replace=False).tolist())
        score = _split_score(classes, pick) if valid(pick) else 10**6
        for _ in range(steps):
            out_i = int(rng.integers(num_unseen))
            rest = [i for i in range(len(classes)) if i not in pick]
            cand = sorted(pick[:out_i] + pick[out_i + 1 :] + [rest[int(rng.integers(len(rest)))]])
            if valid(cand):
                cand_score = _split_score(classes, cand)
                if cand_score <= score:
                    pick, score = cand, cand_score
            if score == 0:
                break
        if score < 10**6 and (best_score is None or score < best_score):
            best, best_score = pick, score
        if best_score == 0:
            break
    if best is None:
        raise ValueError("no split leaves every unseen word in a seen class: fewer unseen classes")
    return best


# ----------------------------------------------------------------------------- drawing


def _sdf(shape: str, dx: np.ndarray, dy: np.ndarray, r: float, angle: float) -> np.ndarray:
    """Signed distance in pixels (positive inside) of a shape of equal area to a circle of radius r.

    Args:
        shape: circle, square, triangle, ring or cross.
        dx: x offsets from the shape's centre, any shape of array.
        dy: y offsets (image rows grow downwards), same shape as dx.
        r: size: the radius of the circle of the same area (cross: its arm's half-length).
        angle: rotation in radians (a triangle at 0 points up).

    Returns:
        Signed distances, same shape as dx.
    """
    if shape == "circle":
        return r - np.sqrt(dx * dx + dy * dy)
    ca, sa = math.cos(angle), math.sin(angle)
    u = dx * ca + dy * sa
    v = -dx * sa + dy * ca
    if shape == "square":
        return 0.886 * r - np.maximum(np.abs(u), np.abs(v))
    if shape == "ring":
        return 0.3 * r - np.abs(np.sqrt(dx * dx + dy * dy) - 0.85 * r)
    if shape == "cross":
        arm = 0.35 * r
        return np.maximum(np.minimum(r - np.abs(u), arm - np.abs(v)), np.minimum(arm - np.abs(u), r - np.abs(v)))
    if shape == "triangle":
        big = 1.555 * r  # circumradius of the equilateral triangle with area pi r^2
        d = None
        for k in range(3):  # edge normals point down, down-left, down-right (for angle 0)
            a = math.pi / 2 + 2 * math.pi * k / 3
            proj = u * math.cos(a) + v * math.sin(a)
            d = proj if d is None else np.maximum(d, proj)
        return big / 2 - d
    raise ValueError(f"unknown shape {shape!r}")


def _draw(
    canvas: np.ndarray, yy: np.ndarray, xx: np.ndarray, shape: str, cx: float, cy: float, r: float,
    angle: float, colour: np.ndarray, light: float,
) -> None:
    """Alpha-blend one anti-aliased, softly lit shape into `canvas` in place (only its bounding box).

    Args:
        canvas: `(H, W, 3)` float32.
        yy: `(H, 1)` row coordinates of the canvas.
        xx: `(1, W)` column coordinates.
        shape: see `_sdf`.
        cx: centre x, canvas pixels.
        cy: centre y.
        r: size (see `_sdf`).
        angle: rotation.
        colour: `(3,)` RGB, 0-255.
        light: direction (radians) of a +-12% brightness gradient across the shape.
    """
    ext = 1.6 * r + 2
    h, w = canvas.shape[:2]
    y0, y1 = max(int(cy - ext), 0), min(int(cy + ext) + 1, h)
    x0, x1 = max(int(cx - ext), 0), min(int(cx + ext) + 1, w)
    if y0 >= y1 or x0 >= x1:
        return
    dy = yy[y0:y1] - cy  # (h, 1)
    dx = xx[:, x0:x1] - cx  # (1, w)
    alpha = np.clip(_sdf(shape, dx, dy, r, angle) + 0.5, 0.0, 1.0)[..., None]  # (h, w, 1)
    shade = 1.0 + 0.12 * (dx * math.cos(light) + dy * math.sin(light)) / max(r, 1.0)  # (h, w)
    region = canvas[y0:y1, x0:x1]
    region += alpha * (colour * shade[..., None] - region)


def _smooth_field(rng: np.random.Generator, h: int, w: int, cells: tuple[int, int]) -> np.ndarray:
    """A smooth random field in [0, 1], `(h, w)`: a random `cells` grid, bilinearly upsampled."""
    grid = rng.random((cells[0] + 1, cells[1] + 1))
    ys = np.linspace(0, cells[0], h)
    xs = np.linspace(0, cells[1], w)
    y0 = np.minimum(ys.astype(int), cells[0] - 1)
    x0 = np.minimum(xs.astype(int), cells[1] - 1)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    g00 = grid[y0][:, x0]
    g01 = grid[y0][:, x0 + 1]
    g10 = grid[y0 + 1][:, x0]
    g11 = grid[y0 + 1][:, x0 + 1]
    return (g00 * (1 - fy) * (1 - fx) + g01 * (1 - fy) * fx + g10 * fy * (1 - fx) + g11 * fy * fx)


def _muted(rng: np.random.Generator, sat: tuple[float, float]) -> np.ndarray:
    """A random RGB colour pulled towards its grey by a random saturation in `sat`."""
    c = rng.uniform(40, 215, 3)
    grey = c.mean()
    return grey + (c - grey) * rng.uniform(*sat)


def _background(
    rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, shapes: tuple[str, ...], max_clutter: int
) -> np.ndarray:
    """A static textured, cluttered background, `(H, W, 3)` float32 on the jitter canvas.

    Two muted colours blended by a smooth field, a luminance texture (stripes, checks or blotches)
    and 3-7 static clutter shapes in muted colours.
    """
    h, w = yy.shape[0], xx.shape[1]
    mix = _smooth_field(rng, h, w, (2, 3))[..., None]
    bg = _muted(rng, (0.15, 0.5)) * (1 - mix) + _muted(rng, (0.15, 0.5)) * mix
    kind = rng.integers(3)
    amp = rng.uniform(8, 28)
    if kind == 0:  # stripes at a random angle and period
        a = rng.uniform(0, math.pi)
        period = rng.uniform(6, 24)
        tex = np.sin(2 * math.pi * (xx * math.cos(a) + yy * math.sin(a)) / period)
    elif kind == 1:  # checks
        cell = rng.integers(6, 20)
        tex = ((yy // cell + xx // cell) % 2) * 2.0 - 1.0
    else:  # blotches
        tex = _smooth_field(rng, h, w, (int(rng.integers(6, 14)), int(rng.integers(8, 18)))) * 2.0 - 1.0
    bg = bg + amp * tex[..., None]
    bg = bg.astype(np.float32)
    all_shapes = tuple(shapes) + _EXTRA_SHAPES
    for _ in range(rng.integers(min(3, max_clutter), max_clutter + 1)):
        _draw(
            bg, yy, xx, all_shapes[rng.integers(len(all_shapes))], rng.uniform(0, w), rng.uniform(0, h),
            rng.uniform(4, 14), rng.uniform(-MAX_TILT, MAX_TILT), _muted(rng, (0.1, 0.45)), rng.uniform(0, 2 * math.pi),
        )
    return bg


def _target_track(rng: np.random.Generator, motion: str, frames: int, w: int, h: int) -> dict[str, np.ndarray]:
    """Per-frame centre, size and visibility of the target for one motion (canvas coordinates).

    Sizes and speeds are drawn so the target stays inside the frame. All targets also drift slowly
    sideways (|vx| <= 0.6 px/frame), which a horizontal flip maps to another drift.

    Returns:
        `{"x", "y", "r", "on"}`, each `(frames,)`.
    """
    t = np.arange(frames, dtype=np.float64)
    span = max(frames - 1, 1)
    r = np.full(frames, rng.uniform(11, 17))
    on = np.ones(frames, dtype=bool)
    if motion in ("growing", "shrinking"):
        small, large = rng.uniform(6, 9), rng.uniform(17, 23)
        r = small * (large / small) ** (t / span)
        if motion == "shrinking":
            r = r[::-1].copy()
    margin = float(r.max()) + JITTER
    shake = rng.uniform(3, 7) if motion == "shaking" else 0.0  # amplitude, pixels
    vx = rng.uniform(-0.6, 0.6)
    x_lo, x_hi = margin + shake + max(-vx * span, 0), w - margin - shake - max(vx * span, 0)
    x = rng.uniform(x_lo, max(x_hi, x_lo)) + vx * t
    y = np.full(frames, rng.uniform(margin, h - margin))
    if motion in ("rising", "falling"):
        speed = min(rng.uniform(0.9, 2.2), (h - 2 * margin) / span)
        travel = speed * span
        y0 = rng.uniform(margin, h - margin - travel)
        y = y0 + speed * t if motion == "falling" else y0 + travel - speed * t
    elif motion == "blinking":
        period = rng.uniform(4, 8)
        on = ((t / period + rng.random()) % 1.0) < 0.5
    elif motion == "shaking":
        period = rng.uniform(3, 6)
        x = x + shake * np.sin(2 * math.pi * t / period + rng.uniform(0, 2 * math.pi))
    elif motion not in ("growing", "shrinking"):
        raise ValueError(f"unknown motion {motion!r}")
    return {"x": x, "y": y, "r": r, "on": on}


def render_video(cfg: WorldConfig, colour: str, shape: str, motion: str, rng: np.random.Generator) -> np.ndarray:
    """Draw one video of class `colour shape motion`.

    Args:
        cfg: the world's settings (size, frames, the words distractors may borrow).
        colour: the target's colour word.
        shape: the target's shape word.
        motion: the target's motion word.
        rng: this video's generator (consumed).

    Returns:
        `(F, H, W, 3)` uint8 RGB frames.
    """
    F, H, W = cfg.frames, cfg.height, cfg.width
    ch, cw = H + 2 * JITTER, W + 2 * JITTER
    yy = np.arange(ch, dtype=np.float32)[:, None]  # (ch, 1)
    xx = np.arange(cw, dtype=np.float32)[None, :]  # (1, cw)
    bg = _background(rng, yy, xx, cfg.shapes, cfg.max_clutter)

    track = _target_track(rng, motion, F, cw, ch)
    base = np.asarray(COLOURS[colour], dtype=np.float64)
    target_colour = np.clip(base * rng.uniform(0.8, 1.1) + rng.uniform(-18, 18, 3), 0, 255)
    angle = rng.uniform(-MAX_TILT, MAX_TILT) if shape != "circle" else 0.0
    light = rng.uniform(0, 2 * math.pi)

    # Distractors: smaller, drifting sideways, in class colours or class shapes but never both
    # (a red circle drifting past a "blue square rising" would make the label ambiguous).
    extra = [np.asarray(c, dtype=np.float64) for c in _EXTRA_COLOURS]
    palette = [np.asarray(COLOURS[c], dtype=np.float64) for c in cfg.colours] + extra
    d_shapes = tuple(cfg.shapes) + _EXTRA_SHAPES
    distractors = []
    for _ in range(rng.integers(0, cfg.max_distractors + 1)):
        r = rng.uniform(0.4, 0.65) * float(track["r"].mean())
        vx = rng.choice([-1, 1]) * rng.uniform(0.5, 2.0)
        d_shape = d_shapes[rng.integers(len(d_shapes))]
        colours = extra if d_shape in cfg.shapes else palette
        distractors.append((
            d_shape, rng.uniform(0, cw) + vx * np.arange(F), rng.uniform(r, ch - r),
            r, rng.uniform(-MAX_TILT, MAX_TILT), rng.uniform(-0.03, 0.03),
            np.clip(colours[rng.integers(len(colours))] + rng.uniform(-18, 18, 3), 0, 255),
        ))

    # Camera: a random walk of the crop window, clipped to +-JITTER pixels.
    steps = rng.integers(-1, 2, size=(F, 2))
    offs = np.clip(np.cumsum(steps, axis=0) + rng.integers(-2, 3, size=2), -JITTER, JITTER)
    gain = rng.uniform(0.8, 1.15) * (1 + rng.normal(0, 0.02, F))  # brightness, with flicker
    sigma = rng.uniform(cfg.max_noise / 3, cfg.max_noise)

    out = np.empty((F, H, W, 3), dtype=np.uint8)
    for f in range(F):
        canvas = bg.copy()
        for d_shape, dxs, dy, dr, dang, dspin, dcol in distractors:
            _draw(canvas, yy, xx, d_shape, dxs[f] % cw, dy, dr, dang + dspin * f, dcol, light)
        if track["on"][f]:
            _draw(canvas, yy, xx, shape, track["x"][f], track["y"][f], track["r"][f], angle, target_colour, light)
        oy, ox = JITTER + offs[f, 0], JITTER + offs[f, 1]
        frame = canvas[oy : oy + H, ox : ox + W] * gain[f]
        frame += rng.standard_normal((H, W, 3), dtype=np.float32) * sigma
        out[f] = np.clip(frame, 0, 255).astype(np.uint8)
    return out


def encode_mp4(path: Path, frames: np.ndarray, fps: int, crf: int = 23) -> None:
    """Encode `(F, H, W, 3)` uint8 RGB frames as H.264 yuv420p in mp4 with PyAV (one thread).

    Args:
        path: the `.mp4` to write (written to a temp name, then renamed).
        frames: the frames; H and W must be even.
        fps: frame rate.
        crf: x264 constant rate factor.
    """
    tmp = path.with_name(path.name + ".tmp")
    with av.open(str(tmp), mode="w", format="mp4") as container:
        # NOTE: tune=zerolatency (no lookahead, no B-frames) for reproducible bytes: with the
        # default lookahead, x264 (PyAV 18 wheel) gave different output for identical input in
        # about half of the runs, even with one thread. The builder re-encodes these files anyway.
        options = {"crf": str(crf), "preset": "veryfast", "tune": "zerolatency"}
        stream = container.add_stream("libx264", rate=fps, options=options)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)


def _make_class_videos(args: tuple[WorldConfig, int, Path]) -> list[str]:
    """Worker: render and encode every video of class `k`; returns their paths relative to OUT."""
    cfg, k, out = args
    colour, shape, motion = cfg.classes()[k]
    name = class_dir(colour, shape, motion)
    folder = out / VIDEOS_DIR / name
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(cfg.videos_per_class):
        rng = np.random.default_rng([cfg.seed, k, i])
        path = folder / f"{name}_{i:03d}.mp4"
        encode_mp4(path, render_video(cfg, colour, shape, motion, rng), cfg.fps, cfg.crf)
        written.append(path.relative_to(out).as_posix())
    return written


def generate(out: Path, cfg: WorldConfig, workers: int = 1) -> dict:
    """Write the demo world under `out` (see the module docstring) and return `splits.json`'s content.

    Args:
        out: the output folder (created; existing class folders are overwritten file by file).
        cfg: what to draw.
        workers: processes; the output does not depend on it.

    Returns:
        The splits dict written to `out/splits.json`.
    """
    unknown = [c for c in cfg.colours if c not in COLOURS] + [s for s in cfg.shapes if s not in SHAPES]
    unknown += [m for m in cfg.motions if m not in MOTIONS]
    if unknown:
        raise ValueError(f"unknown words {unknown}: colours {list(COLOURS)}, shapes {SHAPES}, motions {MOTIONS}")
    if cfg.width % 2 or cfg.height % 2:
        raise ValueError(f"libx264 needs an even size, got {cfg.width}x{cfg.height}")
    classes = cfg.classes()
    num_unseen = cfg.num_unseen if cfg.num_unseen is not None else max(1, round(len(classes) / 6))
    unseen_idx = set(choose_unseen(classes, num_unseen, cfg.split_seed))
    out.mkdir(parents=True, exist_ok=True)

    jobs = [(cfg, k, out) for k in range(len(classes))]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            paths = list(pool.map(_make_class_videos, jobs))
    else:
        paths = [_make_class_videos(j) for j in jobs]

    names = [class_dir(*c) for c in classes]
    splits = {
        "seen": [n for k, n in enumerate(names) if k not in unseen_idx],
        "unseen": [n for k, n in enumerate(names) if k in unseen_idx],
        "vocabulary": sorted({w for c in classes for w in c}),
        "seen_test": [p for k in range(len(classes)) if k not in unseen_idx for p in paths[k][len(paths[k]) - cfg.seen_test :]]
        if cfg.seen_test > 0 else [],
        "generator": {
            "seed": cfg.seed, "split_seed": cfg.split_seed, "videos_per_class": cfg.videos_per_class,
            "frames": cfg.frames, "width": cfg.width, "height": cfg.height, "fps": cfg.fps,
            "codec": "h264", "pix_fmt": "yuv420p", "crf": cfg.crf, "max_distractors": cfg.max_distractors,
            "max_clutter": cfg.max_clutter, "max_noise": cfg.max_noise,
        },
    }
    (out / SPLITS_FILE).write_text(json.dumps(splits, indent=1) + "\n")
    # `--layout list` inputs of the three shard sets: training (seen classes minus the held-out
    # videos), demo_unseen (zero-shot test) and demo_seen (held-out videos of seen classes)
    held_out = set(splits["seen_test"])
    lists = {
        TRAIN_LIST: [(p, names[k]) for k in range(len(classes)) if k not in unseen_idx for p in paths[k]
                     if p not in held_out],
        UNSEEN_LIST: [(p, names[k]) for k in sorted(unseen_idx) for p in paths[k]],
        SEEN_TEST_LIST: [(p, names[k]) for k in range(len(classes)) if k not in unseen_idx for p in paths[k]
                         if p in held_out],
    }
    for name, rows in lists.items():
        (out / name).write_text("path,label\n" + "".join(f"{p},{c}\n" for p, c in rows))
    return splits


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring and `--help`."""
    d = WorldConfig()
    ap = argparse.ArgumentParser(prog="python -m sharding.demo", description="Generate the demo's compositional action videos.")
    ap.add_argument("out", type=Path, help="output folder (videos/ and splits.json go here)")
    ap.add_argument("--seed", type=int, default=d.seed, help="seeds the videos")
    ap.add_argument("--split-seed", type=int, default=d.split_seed, help="seeds the choice of unseen classes")
    ap.add_argument("--videos-per-class", type=int, default=d.videos_per_class)
    ap.add_argument("--frames", type=int, default=d.frames, help="frames per video")
    ap.add_argument("--width", type=int, default=d.width)
    ap.add_argument("--height", type=int, default=d.height)
    ap.add_argument("--fps", type=int, default=d.fps)
    ap.add_argument("--colours", default=",".join(d.colours), help=f"comma list from {list(COLOURS)}")
    ap.add_argument("--shapes", default=",".join(d.shapes), help=f"comma list from {list(SHAPES)}")
    ap.add_argument("--motions", default=",".join(d.motions), help=f"comma list from {list(MOTIONS)}")
    ap.add_argument("--num-unseen", type=int, default=None, help="unseen classes (default: one in six)")
    ap.add_argument("--seen-test", type=int, default=d.seen_test, help="held-out videos per seen class listed in splits.json")
    ap.add_argument("--crf", type=int, default=d.crf)
    ap.add_argument("--max-distractors", type=int, default=d.max_distractors, help="difficulty: moving distractors per video")
    ap.add_argument("--max-clutter", type=int, default=d.max_clutter, help="difficulty: static clutter shapes per background")
    ap.add_argument("--max-noise", type=float, default=d.max_noise, help="difficulty: noise standard deviation (0-255)")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    a = ap.parse_args(argv)
    cfg = WorldConfig(
        seed=a.seed, videos_per_class=a.videos_per_class, frames=a.frames, width=a.width, height=a.height,
        fps=a.fps, colours=tuple(a.colours.split(",")), shapes=tuple(a.shapes.split(",")),
        motions=tuple(a.motions.split(",")), num_unseen=a.num_unseen, split_seed=a.split_seed,
        seen_test=a.seen_test, crf=a.crf, max_distractors=a.max_distractors, max_clutter=a.max_clutter,
        max_noise=a.max_noise,
    )
    t0 = time.time()
    splits = generate(a.out, cfg, workers=a.workers)
    n = len(splits["seen"]) + len(splits["unseen"])
    print(
        f"{n} classes ({len(splits['seen'])} seen, {len(splits['unseen'])} unseen) x {cfg.videos_per_class} videos "
        f"x {cfg.frames} frames -> {a.out} in {time.time() - t0:.1f} s"
    )


if __name__ == "__main__":
    main()
