"""Input layouts: turn a dataset's on-disk layout into a list of (video path, class name) items.

Four layouts, chosen with `--layout`:

- `folders`:  ROOT/<class_dir>/<video>   (UCF101: `ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi`,
  HMDB51: `brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi`)
- `kinetics`: the official annotation CSV (`label,youtube_id,time_start,time_end,split`) plus a video
  folder with files named `<youtube_id>_<start:06d>_<end:06d>.<ext>`, flat or one folder per class.
- `list`:     a CSV with a `path,label` header; relative paths are relative to the CSV's folder.
- `images`:   still images, ROOT/<class>/<image> or SUN397's ROOT/<letter>/<class>/<image>
  (`list_images`; sharding/images.py stores them).

Nothing here opens a video: a listed file that is missing or broken is reported by the builder in
the manifest's `errors`, never dropped here.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

VIDEO_EXTENSIONS = frozenset(
    ".avi .mp4 .m4v .mkv .webm .mov .mpg .mpeg .flv .3gp .ogv .wmv .ts .mts .vob".split()
)
IMAGE_EXTENSIONS = frozenset(".jpg .jpeg .png .bmp .gif .webp .tif .tiff".split())


class LayoutError(ValueError):
    """The input does not have the layout it was said to have (raised before any work starts)."""


@dataclass(frozen=True)
class VideoItem:
    """One input video.

    Attributes:
        path: absolute path of the file (it may not exist: Kinetics rows whose download failed).
        class_name: the raw class name (folder name, CSV label).
        video_id: a stable id, unique within the build, usable as a tar key (no dots, no slashes).
    """

    path: str
    class_name: str
    video_id: str


@dataclass
class Listing:
    """What a layout found: the videos, and files skipped because they are not videos."""

    items: list[VideoItem]
    ignored: list[str]


_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")


def _digest(text: str, n: int = 8) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:n]


def safe_key(text: str) -> str:
    """Make `text` usable as a WebDataset key: webdataset splits a member name at its first dot.

    Keys are ASCII letters, digits, `_` and `-`. A name with other characters gets a short hash of
    its NFC form appended, so names that differ only outside ASCII stay apart (`ü`, `ö`); ASCII
    names keep the keys they always had.

    >>> safe_key("v_Foo_g01.c01")
    'v_Foo_g01_c01'
    >>> safe_key("über") != safe_key("öber")
    True
    """
    text = unicodedata.normalize("NFC", text)
    key = _KEY_UNSAFE.sub("_", text)
    return key if text.isascii() else f"{key}_{_digest(text)}"


def _short(vid: str, limit: int = 80) -> str:
    """Keep tar member names under USTAR's 100 characters (KEY + `_s000.frames`)."""
    if len(vid) <= limit:
        return vid
    return vid[: limit - 13] + "_" + hashlib.sha1(vid.encode()).hexdigest()[:12]


def _with_unique_ids(raw: list[tuple[str, str, str]]) -> list[VideoItem]:
    """raw: (path, class_name, relative path). Ids are file stems, or the whole relative path for
    stems that occur more than once (two `clip1.mp4` in different class folders), plus a short hash
    of the relative path where even those meet (`a.b.mp4` and `a_b.mp4`). Class names are NFC."""
    stems = [_short(safe_key(Path(rel).stem)) for _, _, rel in raw]
    counts = Counter(stems)
    vids = [stem if counts[stem] == 1 else _short(safe_key(str(Path(rel).with_suffix("")).replace(os.sep, "__")))
            for (_, _, rel), stem in zip(raw, stems)]
    counts = Counter(vids)
    vids = [v if counts[v] == 1 else _short(f"{v}_{_digest(rel)}") for v, (_, _, rel) in zip(vids, raw)]
    items = [VideoItem(path=path, class_name=unicodedata.normalize("NFC", cls), video_id=vid)
             for (path, cls, _), vid in zip(raw, vids)]
    seen: dict[str, str] = {}
    for it in items:
        if it.video_id in seen:
            raise LayoutError(f"{seen[it.video_id]} and {it.path} are listed as two inputs with the same "
                              f"name (video id {it.video_id!r}); list each file once")
        seen[it.video_id] = it.path
    return items


def list_folders(root: Path) -> Listing:
    """ROOT/<class_dir>/<video>: every file under a class folder (any depth) is an input."""
    raw, ignored = [], []
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise LayoutError(f"--layout folders: {root} has no class folders (expected ROOT/<class>/<video>)")
    for cdir in class_dirs:
        for dirpath, dirnames, filenames in os.walk(cdir):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                rel = str(path.relative_to(root))
                if name.startswith("."):
                    continue
                if path.suffix.lower() not in VIDEO_EXTENSIONS:
                    ignored.append(rel)
                    continue
                raw.append((str(path.resolve()), cdir.name, rel))
    return Listing(_with_unique_ids(raw), ignored)


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's BOM is not part of the header
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise LayoutError(
                f"{path}: the CSV header {header} lacks {missing}; expected columns {list(required)}"
            )
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]


def list_kinetics(video_root: Path, annotations: Path, csv_split: str | None = None) -> Listing:
    """The Kinetics CSV (`label,youtube_id,time_start,time_end,split`) + its downloaded videos.

    A row whose file is absent stays in the listing with the expected path, so the builder lists it
    in `errors` ("file not found") instead of losing it silently.

    Args:
        video_root: folder with `<youtube_id>_<start:06d>_<end:06d>.<ext>` files, flat or per class.
        annotations: the CSV.
        csv_split: keep only rows whose `split` column equals this (e.g. `train`); None keeps all.
    """
    rows = _read_csv(annotations, ("label", "youtube_id", "time_start", "time_end"))
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(video_root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if p.suffix.lower() in VIDEO_EXTENSIONS:
                found.setdefault(p.stem, str(p.resolve()))
    raw = []
    for row in rows:
        if csv_split is not None and row.get("split", "") != csv_split:
            continue
        stem = f"{row['youtube_id']}_{int(float(row['time_start'])):06d}_{int(float(row['time_end'])):06d}"
        path = found.get(stem, str((video_root / f"{stem}.mp4").resolve()))
        raw.append((path, row["label"], stem))
    if not raw:
        raise LayoutError(f"--layout kinetics: {annotations} has no rows" + (f" with split={csv_split!r}" if csv_split else ""))
    return Listing(_with_unique_ids(raw), [])


def list_csv(csv_path: Path) -> Listing:
    """A `path,label` CSV; relative paths are taken relative to the CSV's folder."""
    rows = _read_csv(csv_path, ("path", "label"))
    raw = []
    for row in rows:
        p = Path(row["path"])
        full = p if p.is_absolute() else csv_path.parent / p
        raw.append((str(full.resolve()), row["label"], row["path"]))
    if not raw:
        raise LayoutError(f"--layout list: {csv_path} has no rows")
    return Listing(_with_unique_ids(raw), [])


def is_letter_layout(root: Path) -> bool:
    """True for SUN397's `ROOT/<letter>/<class>/...`: every top-level folder is one lower-case letter.

    >>> import tempfile; d = Path(tempfile.mkdtemp()); (d / "a").mkdir(); is_letter_layout(d)
    True
    """
    dirs = [d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    return bool(dirs) and all(len(n) == 1 and n.isalpha() and n.islower() for n in dirs)


def list_images(root: Path) -> Listing:
    """Every image under ROOT, its class being its folder's path under ROOT (minus SUN's letter).

    Layouts (`--layout images`):
    - `ROOT/<class>/<image>`: every file under a class folder; the class is the folder path under ROOT,
      so nested folders give nested names.
    - SUN397, `ROOT/<letter>/<class>[/<subclass>]/<image>` (`SUN397/a/abbey/sun_a.jpg`,
      `SUN397/b/bakery/shop/sun_b.jpg`): recognised when every top-level folder is a single lower-case
      letter; the letter is dropped, the rest of the folder path is the class (`abbey`, `bakery/shop`),
      exactly as the paper's code names them (ClassName.txt lines minus `/x/`).

    A class is the folder that directly holds the image: `ROOT/b/bakery/shop/x.jpg` is `bakery/shop`,
    never `bakery`.

    Files directly in ROOT (or directly in a letter folder) have no class and are listed in
    `ignored`, as are files with a non-image extension.

    Args:
        root: the dataset folder.

    Returns:
        The listing; video ids are file stems (whole relative paths where stems repeat).
    """
    if not root.is_dir():
        raise LayoutError(f"--layout images needs a folder, got {root}")
    letters = is_letter_layout(root)
    raw, ignored = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(root)
        parts = rel_dir.parts[1:] if letters else rel_dir.parts
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            rel = str(rel_dir / name)
            if not parts or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                ignored.append(rel)
                continue
            raw.append((str((Path(dirpath) / name).resolve()), "/".join(parts), rel))
    if not raw:
        raise LayoutError(f"--layout images: no images under {root} (expected ROOT/<class>/<image> or "
                          f"SUN397's ROOT/<letter>/<class>/<image>; extensions {' '.join(sorted(IMAGE_EXTENSIONS))})")
    return Listing(_with_unique_ids(raw), ignored)


def list_inputs(layout: str, input_path: Path, annotations: Path | None = None,
                csv_split: str | None = None) -> Listing:
    """Dispatch on `--layout`, with clear errors for a missing or empty input."""
    if not input_path.exists():
        raise LayoutError(f"--input {input_path} does not exist")
    if layout == "folders":
        if not input_path.is_dir():
            raise LayoutError(f"--layout folders needs a folder, got the file {input_path}")
        listing = list_folders(input_path)
    elif layout == "kinetics":
        if annotations is None:
            raise LayoutError("--layout kinetics needs --annotations CSV (label,youtube_id,time_start,time_end,split)")
        if not annotations.is_file():
            raise LayoutError(f"--annotations {annotations} does not exist")
        listing = list_kinetics(input_path, annotations, csv_split)
    elif layout == "list":
        if not input_path.is_file():
            raise LayoutError(f"--layout list needs a CSV file (path,label), got {input_path}")
        listing = list_csv(input_path)
    elif layout == "images":
        return list_images(input_path)
    else:
        raise LayoutError(f"unknown --layout {layout!r}; use folders, kinetics, list or images")
    if not listing.items:
        raise LayoutError(f"--input {input_path}: no video files found (extensions: {' '.join(sorted(VIDEO_EXTENSIONS))})")
    return listing
