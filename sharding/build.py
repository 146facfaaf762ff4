"""`python -m sharding.build`: videos -> WebDataset tar shards + manifest, in parallel and resumable.

    python -m sharding.build --input UCF-101 --layout folders --split eval --out shards/ucf101
    python -m sharding.build --input videos/ --annotations train.csv --layout kinetics \
        --split train --out shards/k700 --exclude-classes sharding/data/excluded_kinetics700_paper.txt

What it guarantees (FORMAT.md has the files):
- every input is either stored or listed in the manifest's `errors` with a reason;
- killing it at any moment and re-running the same command finishes the build without redoing
  finished shards (a shard is written to a temp name and renamed, then its state file is written);
- the output does not depend on `--workers`: videos are encoded in parallel but written in a fixed,
  seeded order by this process.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import sys
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from sharding import __version__
from sharding.class_names import class_text, read_class_list
from sharding import ivf
from sharding.encode import CODECS, CONTAINERS, VideoError, decode, default_container, encode
from sharding.images import process_image
from sharding.layouts import LayoutError, VideoItem, list_inputs
from sharding.segments import plan_segments
from sharding.shardio import FORMAT_VERSION, atomic_write_json, write_shard



class BuildError(Exception):
    """A problem with the command line or the output folder, reported before any work starts."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sharding.build", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input", required=True, type=Path, help="dataset root (folders, kinetics) or CSV (list)")
    p.add_argument("--layout", required=True, choices=["folders", "kinetics", "list", "images"],
                   help="images: still images (SUN397), one JPEG sample each (sharding/images.py)")
    p.add_argument("--split", required=True, choices=["train", "eval"],
                   help="train: overlapping segments per video; eval: one whole video per sample")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--annotations", type=Path, help="--layout kinetics: the annotation CSV")
    p.add_argument("--csv-split", help="--layout kinetics: keep only CSV rows with this `split` value")
    p.add_argument("--dataset", help="dataset name in the manifest; also picks the class-name rename "
                   "table (ucf101, hmdb51, kinetics700). Default: the input's name")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="encoding processes (0: in-process)")
    p.add_argument("--codec", choices=sorted(CODECS), default="vp9",
                   help="vp9 decodes on DALI's CPU and GPU backends; h264 only on the GPU")
    p.add_argument("--short-side", type=int, default=128, help="output short side (even; GPU VP9 needs >= 128)")
    p.add_argument("--fps", type=float, help="output frame rate (default: the input's average rate)")
    p.add_argument("--crf", type=int, default=32, help="encoder constant-quality level")
    p.add_argument("--speed", type=int, default=5, help="VP9 cpu-used (0 slowest/best .. 8 fastest)")
    p.add_argument("--container", choices=["auto", "ivf", "webm", "mp4"], default="auto",
                   help="auto: ivf for VP9 training builds (keyframe-indexed whole videos: the loader "
                        "cuts each window's bytes at the keyframe before it), webm for VP9 eval "
                        "builds, mp4 for H.264")
    p.add_argument("--gop", type=int, default=None,
                   help="keyframe interval (default: 16 in ivf, where it bounds a window's extra decode, "
                        "else 64)")
    p.add_argument("--segment-frames", type=int, default=None,
                   help="--split train: frames per stored segment, 0: whole videos (default: 0 in ivf, "
                        "which needs no segments, else 64)")
    p.add_argument("--clip-span", type=int, default=16,
                   help="frames one training window covers ((clip_len-1)*stride+1); segments overlap by span-1")
    p.add_argument("--image-min-side", type=int, default=172, help="--layout images: upscale smaller short sides to this")
    p.add_argument("--image-max-side", type=int, default=512, help="--layout images: downscale larger short sides to this")
    p.add_argument("--jpeg-quality", type=int, default=90, help="--layout images: JPEG quality of the stored images")
    p.add_argument("--videos-per-shard", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="seed of the video order across shards")
    p.add_argument("--exclude-classes", type=Path, help="file of class names to leave out (one per line, # comments)")
    p.add_argument("--include-classes", type=Path, help="file of class names to keep (all others left out)")
    p.add_argument("--max-error-rate", type=float, default=0.01,
                   help="exit non-zero (after writing everything) when more inputs than this fraction fail")
    p.add_argument("--part", type=int, default=0, help="build only shards with index %% num-parts == part")
    p.add_argument("--num-parts", type=int, default=1, help="number of parts (python -m sharding.merge joins them)")
    p.add_argument("--overwrite", action="store_true", help="replace a different build already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    args = p.parse_args(argv)
    if args.container == "auto":
        args.container = default_container(args.codec, args.split)
    if args.container not in CONTAINERS[args.codec]:
        p.error(f"--codec {args.codec} is stored in {' or '.join(CONTAINERS[args.codec])}, not {args.container}")
    if args.gop is None:
        args.gop = 16 if args.container == "ivf" else 64
    if args.segment_frames is None:
        args.segment_frames = 0 if args.container == "ivf" else 64
    if args.gop < 1:
        p.error(f"--gop must be >= 1, got {args.gop}")
    if args.short_side < 2 or args.short_side % 2:
        p.error(f"--short-side must be even and >= 2, got {args.short_side}")
    if args.segment_frames and args.segment_frames < args.clip_span:
        p.error(f"--segment-frames ({args.segment_frames}) must be >= --clip-span ({args.clip_span}) or 0")
    if not 0 <= args.part < args.num_parts:
        p.error(f"--part must be in [0, --num-parts), got {args.part} of {args.num_parts}")
    if not 1 <= args.image_min_side <= args.image_max_side:
        p.error(f"need 1 <= --image-min-side <= --image-max-side, got {args.image_min_side}, {args.image_max_side}")
    if args.videos_per_shard < 1:
        p.error("--videos-per-shard must be >= 1")
    return args


def read_class_file(path: Path) -> list[str]:
    """An allow/deny list (sharding.class_names.read_class_list), with a BuildError when unusable."""
    if not path.is_file():
        raise BuildError(f"class list {path} does not exist")
    try:
        return read_class_list(path)
    except ValueError as e:
        raise BuildError(str(e)) from None


def dataset_name(args: argparse.Namespace) -> str:
    name = args.dataset or (args.input.stem if args.layout == "list" else args.input.resolve().name)
    return "".join(ch for ch in name.lower() if ch.isalnum()) or "dataset"


# ----------------------------------------------------------------------------- one video (worker)

def process_video(item: VideoItem, label: int, opts: dict) -> dict:
    """Decode, resize, segment and encode one video. Runs in a worker process.

    Returns:
        {"video_id", "samples": [(key, ext, bytes, meta)], "bytes_in", "short"} or
        {"video_id", "error": reason, "path"}.
    """
    if opts.get("media") == "image":  # --layout images: one JPEG sample per still image
        return process_image(item, label, opts)
    try:
        bytes_in = os.path.getsize(item.path) if os.path.exists(item.path) else 0
        video = decode(item.path, opts["short_side"], opts["fps"])
        n = len(video.frames)
        if opts["split"] == "train":
            segments = plan_segments(n, opts["clip_span"], opts["segment_frames"] or None)
        else:
            segments = plan_segments(n, opts["clip_span"], None)
        ext = opts["container"]
        samples = []
        for s, seg in enumerate(segments):
            data = encode(video.frames[seg.first_frame: seg.first_frame + seg.num_frames], video.width,
                          video.height, video.fps, opts["codec"], opts["crf"], opts["speed"], opts["gop"],
                          opts["container"])
            key = item.video_id if opts["split"] == "eval" else f"{item.video_id}_s{s:03d}"
            meta = {
                "key": key, "video_id": item.video_id, "class_name": item.class_name, "label": label,
                "source": item.path, "fps": float(video.fps), "num_frames": seg.num_frames,
                "video_num_frames": n, "first_frame": seg.first_frame, "segment": s,
                "num_segments": len(segments), "own_start": seg.own_start, "own_count": seg.own_count,
                "width": video.width, "height": video.height, "short": n < opts["clip_span"],
                "vfr_converted": video.vfr, "src_width": video.src_width, "src_height": video.src_height,
            }
            if ext == "ivf":  # where a reader may cut the stream (FORMAT.md)
                meta["keyframes"], meta["keyframe_offsets"] = ivf.keyframes(data)
            samples.append((key, ext, data, meta))
        return {"video_id": item.video_id, "samples": samples, "bytes_in": bytes_in, "short": n < opts["clip_span"]}
    except (VideoError, ivf.IVFError) as e:
        return {"video_id": item.video_id, "path": item.path, "error": str(e)}
    except Exception as e:  # an unexpected library failure on one file must not stop the build
        return {"video_id": item.video_id, "path": item.path, "error": f"unexpected {type(e).__name__}: {e}"}


# ----------------------------------------------------------------------------- the build

def _identity(args, listing_digest: str, classes: list[str]) -> dict:
    """What makes two builds the same build (resume) or different ones (refuse)."""
    return {
        "format_version": FORMAT_VERSION, "split": args.split, "layout": args.layout,
        "inputs_sha256": listing_digest, "classes": classes, "codec": args.codec, "container": args.container,
        "short_side": args.short_side, "fps": args.fps, "crf": args.crf, "speed": args.speed, "gop": args.gop,
        "segment_frames": args.segment_frames if args.split == "train" else None,
        "clip_span": args.clip_span, "videos_per_shard": args.videos_per_shard, "seed": args.seed,
        "part": args.part, "num_parts": args.num_parts,
    }


_OUR_FILES = ("_info.json", "_build.json")


def _prepare_out(out: Path, identity: dict, overwrite: bool) -> None:
    """Create `out`, or check that it holds this same build (resume), or clear it (--overwrite)."""
    build_file = out / "_build.json"
    if out.exists() and not out.is_dir():
        raise BuildError(f"--out {out} is a file")
    if out.is_dir() and any(out.iterdir()):
        old = json.loads(build_file.read_text()) if build_file.is_file() else None
        if old is not None and "container" not in old and old.get("codec") in CODECS:
            old = {**old, "container": CODECS[old["codec"]][1]}  # written before --container existed
        if old == identity:
            return  # same build: resume
        if not overwrite:
            if old is None:
                what = "files that are not a shard build"
            else:  # say what differs: e.g. a run of an older version's command with today's defaults
                diff = [f"{k} {old.get(k)!r} there vs {identity.get(k)!r} now"
                        for k in sorted(set(old) | set(identity)) if old.get(k) != identity.get(k)]
                what = f"a different build ({'; '.join(diff)})"
            raise BuildError(f"--out {out} holds {what}; use another --out, the options of that build to "
                             "resume it, or --overwrite to replace it")
        if old is None:
            raise BuildError(f"--out {out} holds files that are not a shard build; refusing to delete them "
                             "even with --overwrite: choose an empty or new folder")
        for p in out.iterdir():  # only what a build writes
            if p.name in _OUR_FILES or p.name == "_parts" or p.suffix in (".tar", ".idx", ".tmp") \
                    or p.name.endswith(".samples.json"):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / "_parts").mkdir(exist_ok=True)
    atomic_write_json(build_file, identity)


class Progress:
    """A one-line progress report on stderr: videos done, videos/s, ETA."""

    def __init__(self, total: int, quiet: bool):
        self.total, self.quiet, self.done, self.errors = total, quiet, 0, 0
        self.t0 = self.last = time.time()
        self.tty = sys.stderr.isatty()

    def update(self, n_done: int = 1, error: bool = False) -> None:
        self.done += n_done
        self.errors += int(error)
        now = time.time()
        if self.quiet or (now - self.last < (0.5 if self.tty else 10.0) and self.done < self.total):
            return
        self.last = now
        rate = self.done / max(now - self.t0, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        line = (f"[build] {self.done}/{self.total} videos  {rate:.1f} videos/s  ETA {eta:.0f}s"
                f"  errors {self.errors}")
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty and not self.quiet:
            print(file=sys.stderr)


def _ordered_results(items_with_labels, opts, workers):
    """Yield process_video results in input order, keeping at most 4*workers videos in flight so
    memory stays bounded whatever the dataset size."""
    if workers == 0:
        for item, label in items_with_labels:
            yield process_video(item, label, opts)
        return
    ctx = multiprocessing.get_context("spawn")  # no inherited FFmpeg state from this process
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        pending: deque = deque()
        it = iter(items_with_labels)
        for item, label in it:
            pending.append(pool.submit(process_video, item, label, opts))
            if len(pending) >= 4 * workers:
                break
        while pending:
            yield pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(process_video, nxt[0], nxt[1], opts))


def build(args: argparse.Namespace) -> int:
    """Run a build; returns the exit code (0, or 1 when the error rate is over --max-error-rate)."""
    t0 = time.time()
    try:
        listing = list_inputs(args.layout, args.input, args.annotations, args.csv_split)
    except LayoutError as e:
        raise BuildError(str(e)) from None
    dataset = dataset_name(args)
    all_classes = sorted({it.class_name for it in listing.items})
    keep = set(all_classes)
    if args.include_classes:
        wanted = read_class_file(args.include_classes)
        unknown = sorted(set(wanted) - keep)
        if unknown:
            print(f"[build] warning: {len(unknown)} classes of {args.include_classes} have no videos: "
                  f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''}", file=sys.stderr)
        keep &= set(wanted)
    if args.exclude_classes:
        drop = read_class_file(args.exclude_classes)
        unknown = sorted(set(drop) - set(all_classes))
        if unknown:
            print(f"[build] warning: {len(unknown)} classes of {args.exclude_classes} are not in the input: "
                  f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''}", file=sys.stderr)
        keep -= set(drop)
    classes = sorted(keep)
    if not classes:
        raise BuildError("no classes left after --include-classes/--exclude-classes")
    label_of = {c: i for i, c in enumerate(classes)}
    items = [it for it in listing.items if it.class_name in label_of]
    num_excluded = len(listing.items) - len(items)
    digest = hashlib.sha256("\n".join(f"{it.path}\t{it.class_name}\t{it.video_id}" for it in items).encode()).hexdigest()

    out = args.out
    identity = _identity(args, digest, classes)
    if args.layout == "images":  # only for image builds: video builds keep their identity
        identity["image"] = {"min_side": args.image_min_side, "max_side": args.image_max_side,
                             "quality": args.jpeg_quality}
    _prepare_out(out, identity, args.overwrite)
    for tmp in out.glob("*.tmp"):  # leftovers of a killed run; the shard they belonged to is redone
        tmp.unlink()

    # seeded order across shards, then fixed chunks: shard j = order[j*S:(j+1)*S]
    order = list(range(len(items)))
    random.Random(args.seed).shuffle(order)
    S = args.videos_per_shard
    shard_ids = [j for j in range((len(order) + S - 1) // S) if j % args.num_parts == args.part]
    name = lambda j: f"{args.split}-{j:06d}"  # noqa: E731
    todo = [j for j in shard_ids if not (out / "_parts" / f"{name(j)}.json").is_file()]
    if len(todo) < len(shard_ids):
        print(f"[build] resuming: {len(shard_ids) - len(todo)} of {len(shard_ids)} shards already done",
              file=sys.stderr)

    opts = {"split": args.split, "short_side": args.short_side, "fps": args.fps, "codec": args.codec,
            "container": args.container,
            "crf": args.crf, "speed": args.speed, "gop": args.gop, "clip_span": args.clip_span,
            "segment_frames": args.segment_frames, "media": "image" if args.layout == "images" else "video",
            "image_min_side": args.image_min_side, "image_max_side": args.image_max_side,
            "jpeg_quality": args.jpeg_quality}
    jobs = [(items[i], label_of[items[i].class_name]) for j in todo for i in order[j * S:(j + 1) * S]]
    progress = Progress(len(jobs), args.quiet)
    results = _ordered_results(jobs, opts, args.workers)
    for j in todo:
        n = len(order[j * S:(j + 1) * S])
        samples, errors, n_short, bytes_in = [], [], 0, 0
        for _ in range(n):
            r = next(results)
            if "error" in r:
                errors.append({"path": r["path"], "reason": r["error"]})
            else:
                samples.extend(r["samples"])
                n_short += int(r["short"])
                bytes_in += r["bytes_in"]
            progress.update(error="error" in r)
        entry = write_shard(out / f"{name(j)}.tar", samples) if samples else None
        atomic_write_json(out / "_parts" / f"{name(j)}.json",
                          {"shard": entry, "errors": errors, "num_short": n_short, "bytes_in": bytes_in})
    progress.close()

    # the manifest, from every shard's state file (also those done by an earlier, killed run)
    states = [json.loads((out / "_parts" / f"{name(j)}.json").read_text()) for j in shard_ids]
    shards = [s["shard"] for s in states if s["shard"]]
    errors = [e for s in states for e in s["errors"]]
    num_inputs = sum(len(order[j * S:(j + 1) * S]) for j in shard_ids)
    info = {
        "format_version": FORMAT_VERSION,
        "dataset": dataset,
        "split": args.split,
        "classes": [{"label": i, "name": c, "text": class_text(c, dataset)} for i, c in enumerate(classes)],
        "num_classes": len(classes),
        "num_videos": sum(s["num_videos"] for s in shards),
        "num_samples": sum(s["num_samples"] for s in shards),
        "num_short_videos": sum(s["num_short"] for s in states),
        "num_inputs": num_inputs,
        "num_excluded_class_videos": num_excluded,
        "shards": shards,
        "encoding": {"codec": args.codec, "ext": args.container, "container": args.container,
                     "short_side": args.short_side, "fps": args.fps, "pix_fmt": "yuv420p",
                     "segment_frames": (args.segment_frames or None) if args.split == "train" else None,
                     "clip_span": args.clip_span, "crf": args.crf, "speed": args.speed, "gop": args.gop},
        "layout": args.layout,
        "part": {"index": args.part, "num_parts": args.num_parts},
        "build": {"command": [Path(sys.executable).name, "-m", "sharding.build"] + sys.argv[1:],
                  "version": __version__, "seed": args.seed, "videos_per_shard": S,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        "errors": errors,
        "ignored": listing.ignored,
    }
    if args.layout == "images":
        # one-frame "videos": each image owns one window start (clip_span 1); FORMAT.md
        info["encoding"] = {"media": "image", "codec": "jpeg", "ext": "jpg", "container": "jpeg",
                            "min_short_side": args.image_min_side, "max_short_side": args.image_max_side,
                            "quality": args.jpeg_quality, "segment_frames": None, "clip_span": 1}
    atomic_write_json(out / "_info.json", info)

    dt = time.time() - t0
    bytes_out = sum(s["bytes"] for s in shards)
    bytes_in = sum(s["bytes_in"] for s in states)
    print(f"[build] done: {info['num_videos']} videos, {info['num_samples']} samples in {len(shards)} shards, "
          f"{len(errors)} errors, {len(jobs) / max(dt, 1e-9):.1f} videos/s this run ({dt:.1f}s), "
          f"in {bytes_in / 1e6:.1f} MB -> out {bytes_out / 1e6:.1f} MB  ({out / '_info.json'})", file=sys.stderr)
    if listing.ignored:
        print(f"[build] note: {len(listing.ignored)} non-video files ignored (listed in _info.json 'ignored')",
              file=sys.stderr)
    rate = len(errors) / max(num_inputs, 1)
    if errors:
        for e in errors[:10]:
            print(f"[build] error: {e['path']}: {e['reason']}", file=sys.stderr)
        if len(errors) > 10:
            print(f"[build] ... {len(errors) - 10} more in {out / '_info.json'} 'errors'", file=sys.stderr)
    if rate > args.max_error_rate:
        print(f"[build] FAILED: {len(errors)} of {num_inputs} inputs ({rate:.1%}) could not be stored, over "
              f"--max-error-rate {args.max_error_rate:.1%}. Everything else is written; fix or remove the "
              "inputs listed above (or raise --max-error-rate) and re-run.", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return build(args)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
