"""Still images of coloured shapes: the demo's stand-in for SUN397 (stage 1 of the two-stage recipe).

    python -m sharding.demo.images --out demo_images --per-class 20
    python -m sharding.build --input demo_images --layout images --split train --out shards/demo_images

Classes are `<colour>_<shape>` (`red_circle`), words of sharding/data/demo_vectors.vec, written in
SUN397's letter layout (`ROOT/r/red_circle/red_circle_000.jpg`) so the same build path is exercised.
Each image: a noisy background, one filled shape of the class's colour at a random place and size,
and a smaller distractor shape of another colour and shape. Deterministic for a given seed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")


def _shape(draw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)


def render(colour: str, shape: str, rng: np.random.Generator, width: int = 240, height: int = 180):
    """One (height, width, 3) uint8 image of `colour` `shape` plus a distractor."""
    from PIL import Image, ImageDraw

    bg = rng.integers(60, 160, 3)
    noise = rng.normal(0, 12, (height, width, 3))
    im = Image.fromarray(np.clip(bg[None, None, :] + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    others = [(c, s) for c in COLOURS for s in SHAPES if c != colour and s != shape]
    oc, os_ = others[int(rng.integers(len(others)))]
    m = min(width, height) / 180  # sizes relative to the default 240x180
    r2 = float(rng.uniform(10, 20) * m)
    _shape(draw, os_, rng.uniform(r2, width - r2), rng.uniform(r2, height - r2), r2, COLOURS[oc])
    r = float(rng.uniform(25, 55) * m)
    _shape(draw, shape, rng.uniform(r, width - r), rng.uniform(r, height - r), r, COLOURS[colour])
    return np.asarray(im)


def write_demo_images(out: Path, per_class: int = 20, seed: int = 0, classes: list[str] | None = None,
                      width: int = 240, height: int = 180) -> list[Path]:
    """Write `per_class` JPEGs per class under `out/<first letter>/<class>/`.

    Args:
        out: the dataset root to create.
        per_class: images per class.
        seed: the images are a function of (seed, class, index).
        classes: `<colour>_<shape>` names (default: all 12).
        width, height: image size (the builder upscales short sides under 172).

    Returns:
        The written paths.
    """
    from PIL import Image

    classes = classes or [f"{c}_{s}" for c in COLOURS for s in SHAPES]
    paths = []
    for k, name in enumerate(classes):
        colour, shape = name.split("_")
        folder = Path(out) / name[0] / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rng = np.random.default_rng([seed, k, i])
            path = folder / f"{name}_{i:03d}.jpg"
            Image.fromarray(render(colour, shape, rng, width, height)).save(path, quality=92)
            paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sharding.demo.images", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    paths = write_demo_images(args.out, args.per_class, args.seed)
    print(f"wrote {len(paths)} images to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
