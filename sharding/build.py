"""`python -m sharding.build`: videos -> WebDataset tar shards + manifest, in parallel and resumable.

    python -m sharding.build --input UCF-101 --layout folders --split eval --out shards/ucf101
    python -m sharding.build --input videos/ --annotations train.csv --layout kinetics \
        --split train --out shards/k700 --exclude-classes sharding/data/excluded_kinetics700_paper.txt

What it guarantees (FORMAT.md has the files, RELIABILITY.md the faults and their tests):
- every input is either stored (listed in `warnings` when it holds fewer frames than it declares)
  or listed in the manifest's `errors` with a reason;
- one input cannot stop the build: a worker that crashes, is killed or exceeds --video-timeout
  costs that input (an error), and the pool goes on with a fresh worker;
- killing it at any moment and re-running the same command finishes the build without redoing
  finished shards (a shard is written to a temp name and renamed, then its state file is written);
  on resume, a finished shard whose files are missing or of another size is rebuilt;
- one builder per --out (a lock naming the holder's PID and host);
- the output does not depend on `--workers`: videos are encoded in parallel but written in a fixed,
  seeded order by this process.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sharding import __version__
from sharding.class_names import class_text, read_class_list
from sharding.encode import CODECS, CONTAINERS, default_container
from sharding.faults import fault_point
from sharding.formats import ARRAY_PREFIXES, StorageFormat, format_named, format_of
from sharding.layouts import LayoutError, Listing, VideoItem, list_inputs
from sharding.media import Media, media_for, process_item
from sharding.outdir import BuildError, check_finished, lock_out, prepare_out, remove_temp_files
from sharding.reader import SampleReader, ShardError, ShardTable, read_shard_table
from sharding.shardio import FORMAT_VERSION, atomic_write_json, write_shard
from sharding.workers import WorkerPool

__all__ = ["BuildError", "build", "main", "parse_args"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sharding.build", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input", required=True, type=Path, help="dataset root (folders, kinetics) or CSV (list)")
    p.add_argument("--layout", required=True, choices=["folders", "kinetics", "list", "images"],
                   help="images: still images (SUN397), one JPEG sample each (sharding/images.py)")
    p.add_argument("--split", required=True, choices=["train", "eval"],
                   help="train: one keyframe-indexed whole video per sample (ivf; overlapping segments "
                        "with --container webm/mp4); eval: one whole video per sample")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--annotations", type=Path, help="--layout kinetics: the annotation CSV")
    p.add_argument("--csv-split", help="--layout kinetics: keep only CSV rows with this `split` value")
    p.add_argument("--dataset", help="dataset name in the manifest; also picks the class-name rename "
                   "table (ucf101, hmdb51, kinetics700). Default: the input's name")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="encoding processes (0: in this process, without crash isolation or --video-timeout)")
    p.add_argument("--codec", choices=sorted(CODECS), default="vp9",
                   help="vp9 decodes on DALI's CPU and GPU backends; h264 only on the GPU; jpeg: every frame "
                        "a JPEG (format jpeg_frames: ~8x the bytes, a third of the decode per frame, no cut)")
    p.add_argument("--short-side", type=int, default=128, help="output short side (even; GPU VP9 needs >= 128)")
    p.add_argument("--fps", type=float, help="output frame rate (default: the input's average rate)")
    p.add_argument("--crf", type=int, default=32, help="encoder constant-quality level")
    p.add_argument("--speed", type=int, default=5, help="VP9 cpu-used (0 slowest/best .. 8 fastest)")
    p.add_argument("--container", choices=["auto", "ivf", "webm", "mp4", "jpeg_frames"], default="auto",
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
    p.add_argument("--jpeg-quality", type=int, default=90,
                   help="JPEG quality of the stored images (--layout images) or frames (--codec jpeg)")
    p.add_argument("--videos-per-shard", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="seed of the video order across shards")
    p.add_argument("--exclude-classes", type=Path, help="file of class names to leave out (one per line, # comments)")
    p.add_argument("--include-classes", type=Path, help="file of class names to keep (all others left out)")
    p.add_argument("--max-error-rate", type=float, default=0.01,
                   help="exit non-zero (after writing everything) when more inputs than this fraction fail")
    p.add_argument("--part", type=int, default=0, help="build only shards with index %% num-parts == part")
    p.add_argument("--num-parts", type=int, default=1, help="number of parts (python -m sharding.merge joins them)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a different build already in --out (deletes only the files its state lists)")
    p.add_argument("--strict-frame-count", action="store_true",
                   help="reject an input that decodes fewer frames than its container declares, or stops "
                        "at a decode error (default: store the frames that decode, listed in `warnings`)")
    p.add_argument("--video-timeout", type=float, default=600.0,
                   help="seconds one input may take in a worker before it is killed and listed in `errors`")
    p.add_argument("--worker-max-videos", type=int, default=200,
                   help="replace each worker process after this many inputs (bounds decoder memory creep)")
    p.add_argument("--lookahead", type=int, default=16,
                   help="inputs in flight per worker: results are written in input order, so this bounds "
                        "memory and what a crash loses; within it the largest input starts first (1: FIFO)")
    p.add_argument("--retry-errors", action="store_true",
                   help="re-try the inputs a finished or resumed build lists in `errors` (e.g. after fixing "
                        "them), re-using every stored sample")
    p.add_argument("--verify-existing", action="store_true",
                   help="on resume, also check each finished shard's sha256 (default: existence and size)")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    args = p.parse_args(argv)
    if args.container == "auto":
        args.container = default_container(args.codec, args.split)
    if args.container not in CONTAINERS[args.codec]:
        p.error(f"--codec {args.codec} is stored in {' or '.join(CONTAINERS[args.codec])}, not {args.container}")
    if args.codec == "jpeg" and args.segment_frames:
        p.error("--codec jpeg stores whole videos (a window reads exactly its frames): drop --segment-frames")
    format_named(args.container).build_defaults(args)  # --gop, --segment-frames
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
    if args.video_timeout <= 0 or args.worker_max_videos < 1 or args.lookahead < 1:
        p.error("--video-timeout must be > 0, --worker-max-videos and --lookahead >= 1")
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


def _failed(job: tuple, reason: str) -> dict:
    item = job[0]
    return {"video_id": item.video_id, "path": item.path, "error": reason}


def _input_bytes(job: tuple) -> float:
    """A job's cost for scheduling: its input's size (a missing file costs nothing; it fails fast)."""
    try:
        return float(os.path.getsize(job[0].path))
    except OSError:
        return 0.0


def _ordered_results(items_with_labels, opts, args):
    """Yield process_item results in input order, keeping at most --lookahead * workers videos in
    flight so memory stays bounded whatever the dataset size (results are encoded at the short side);
    within that window the largest input starts first, so a long video does not run alone at the
    end of the build. --workers 0: in this process, no isolation."""
    if args.workers == 0:
        for item, label in items_with_labels:
            yield process_item(item, label, opts)
        return
    with WorkerPool(process_item, args.workers, _failed, timeout=args.video_timeout,
                    recycle_every=args.worker_max_videos) as pool:
        yield from pool.imap(((item, label, opts) for item, label in items_with_labels),
                             window=args.lookahead * args.workers, cost=_input_bytes)


@dataclass
class Selection:
    """The inputs of a build after the class filters: what `select_inputs` returns."""

    listing: Listing
    classes: list[str]               # kept class names, sorted; label = index
    items: list[VideoItem]           # the kept inputs, in listing order
    num_excluded: int                # inputs of left-out classes
    digest: str                      # sha256 of the kept (path, class, id) lines: the inputs' identity

    def __post_init__(self):
        self._labels = {c: i for i, c in enumerate(self.classes)}

    def label(self, item: VideoItem) -> int:
        return self._labels[item.class_name]


def _warn_unknown(names: set[str], source: Path, what: str) -> None:
    if names:
        names = sorted(names)
        print(f"[build] warning: {len(names)} classes of {source} {what}: "
              f"{names[:5]}{' ...' if len(names) > 5 else ''}", file=sys.stderr)


def select_inputs(args: argparse.Namespace) -> Selection:
    """List the inputs (`--layout`) and keep the classes `--include-classes`/`--exclude-classes` allow."""
    try:
        listing = list_inputs(args.layout, args.input, args.annotations, args.csv_split)
    except LayoutError as e:
        raise BuildError(str(e)) from None
    all_classes = {it.class_name for it in listing.items}
    keep = set(all_classes)
    if args.include_classes:
        wanted = set(read_class_file(args.include_classes))
        _warn_unknown(wanted - keep, args.include_classes, "have no videos")
        keep &= wanted
    if args.exclude_classes:
        drop = set(read_class_file(args.exclude_classes))
        _warn_unknown(drop - all_classes, args.exclude_classes, "are not in the input")
        keep -= drop
    classes = sorted(keep)
    if not classes:
        raise BuildError("no classes left after --include-classes/--exclude-classes")
    items = [it for it in listing.items if it.class_name in keep]
    digest = hashlib.sha256("\n".join(f"{it.path}\t{it.class_name}\t{it.video_id}" for it in items).encode()).hexdigest()
    return Selection(listing, classes, items, len(listing.items) - len(items), digest)


@dataclass
class ShardPlan:
    """Seeded order across shards, then fixed chunks: shard j holds inputs `order[j*S:(j+1)*S]`;
    this part builds the shards `shard_ids` (j % num_parts == part)."""

    order: list[int]
    per_shard: int
    shard_ids: list[int]
    split: str

    def name(self, j: int) -> str:
        return f"{self.split}-{j:06d}"

    def members(self, j: int) -> list[int]:
        return self.order[j * self.per_shard:(j + 1) * self.per_shard]


def plan_shards(args: argparse.Namespace, num_items: int) -> ShardPlan:
    order = list(range(num_items))
    random.Random(args.seed).shuffle(order)
    S = args.videos_per_shard
    shard_ids = [j for j in range((len(order) + S - 1) // S) if j % args.num_parts == args.part]
    return ShardPlan(order, S, shard_ids, args.split)


def _state_path(out: Path, plan: ShardPlan, j: int) -> Path:
    return out / "_parts" / f"{plan.name(j)}.json"


def _read_state(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # unreadable: redo the shard


def _stored_samples(out: Path, state: dict, fmt: StorageFormat) -> dict[str, list]:
    """The samples a finished shard holds, by video id: (key, ext, bytes, meta) as written."""
    tar, columns = read_shard_table(out, state["shard"], fmt)
    columns = {k: v for k, v in columns.items() if not k.startswith(ARRAY_PREFIXES)}
    table = ShardTable.from_columns(columns, {}, out, [tar])
    lines = (out / state["shard"]["index"]).read_text().splitlines()[1:]
    stored: dict[str, list] = {}
    with SampleReader(table, max_open=1) as reader:
        for i, key in enumerate(columns["keys"].tolist()):
            fields = lines[i].split()
            where = {fields[k]: (int(fields[k + 1]), int(fields[k + 2])) for k in range(0, len(fields), 4)}
            ext = fields[0]
            meta = json.loads(reader.read_range(0, *where["json"]))
            stored.setdefault(meta["video_id"], []).append((key, ext, reader.read(i), meta))
    return stored


def _shards_to_do(args: argparse.Namespace, sel: Selection, plan: ShardPlan) -> tuple[list, dict]:
    """Which shards to (re)build: those without a state file, those whose files fail
    `check_finished` (they are rebuilt), and with --retry-errors those that list errors.

    Returns:
        (todo, retry): shard ids to build from scratch, and {shard id: state} to retry in place.
    """
    out, todo, retry, bad = args.out, [], {}, 0
    for j in plan.shard_ids:
        state = _read_state(_state_path(out, plan, j)) if _state_path(out, plan, j).is_file() else None
        problem = None if state is None else check_finished(out, state, args.verify_existing)
        if problem:
            print(f"[build] {plan.name(j)}: {problem}; rebuilding it", file=sys.stderr)
            bad += 1
        if state is None or problem:
            todo.append(j)
        elif args.retry_errors and state["errors"]:
            retry[j] = state
    done = len(plan.shard_ids) - len(todo)
    if done:
        print(f"[build] resuming: {done} of {len(plan.shard_ids)} shards already done"
              + (f", {bad} rebuilt after failing the check" if bad else "")
              + (f"; retrying the errors of {len(retry)}" if retry else ""), file=sys.stderr)
    return todo, retry


def run_shards(args: argparse.Namespace, sel: Selection, plan: ShardPlan, media: Media) -> int:
    """Encode and write every shard `_shards_to_do` names; returns the inputs processed."""
    out = args.out
    todo, retry = _shards_to_do(args, sel, plan)
    failed = {j: {e["path"] for e in state["errors"]} for j, state in retry.items()}
    work = sorted(todo + list(retry))
    jobs = [(sel.items[i], sel.label(sel.items[i])) for j in work for i in plan.members(j)
            if j not in retry or sel.items[i].path in failed[j]]
    progress = Progress(len(jobs), args.quiet)
    results = _ordered_results(jobs, media.worker_options(args), args)
    fmt = format_of({"encoding": media.encoding(args)})
    for j in work:
        old = retry.get(j)
        stored = _stored_samples(out, old, fmt) if old and old["shard"] else {}
        samples, errors, warnings = [], [], list(old.get("warnings", [])) if old else []
        n_short, bytes_in = (old["num_short"], old["bytes_in"]) if old else (0, 0)
        for i in plan.members(j):
            item = sel.items[i]
            if old and item.path not in failed[j]:
                samples.extend(stored.get(item.video_id, []))  # kept as written, in its place
                continue
            r = next(results)
            if "error" in r:
                errors.append({"path": r["path"], "reason": r["error"]})
            else:
                samples.extend(r["samples"])
                n_short += int(r["short"])
                bytes_in += r["bytes_in"]
                if "warning" in r:
                    warnings.append(r["warning"])
            progress.update(error="error" in r)
        entry = write_shard(out / f"{plan.name(j)}.tar", samples, j) if samples else None
        fault_point("table", j)
        atomic_write_json(_state_path(out, plan, j), {"shard": entry, "errors": errors, "warnings": warnings,
                                                     "num_short": n_short, "bytes_in": bytes_in})
        fault_point("state", j)
    progress.close()
    return len(jobs)


def write_manifest(args: argparse.Namespace, sel: Selection, plan: ShardPlan, media: Media) -> tuple[dict, list]:
    """`_info.json` from every shard's state file (also those done by an earlier, killed run)."""
    dataset = dataset_name(args)
    fault_point("manifest", 0)
    states = [json.loads((args.out / "_parts" / f"{plan.name(j)}.json").read_text()) for j in plan.shard_ids]
    shards = [s["shard"] for s in states if s["shard"]]
    info = {
        "format_version": FORMAT_VERSION,
        "dataset": dataset,
        "split": args.split,
        "classes": [{"label": i, "name": c, "text": class_text(c, dataset)} for i, c in enumerate(sel.classes)],
        "num_classes": len(sel.classes),
        "num_videos": sum(s["num_videos"] for s in shards),
        "num_samples": sum(s["num_samples"] for s in shards),
        "num_short_videos": sum(s["num_short"] for s in states),
        "num_inputs": sum(len(plan.members(j)) for j in plan.shard_ids),
        "num_excluded_class_videos": sel.num_excluded,
        "shards": shards,
        "encoding": media.encoding(args),
        "layout": args.layout,
        "part": {"index": args.part, "num_parts": args.num_parts},
        "build": {"command": [Path(sys.executable).name, "-m", "sharding.build"] + sys.argv[1:],
                  "version": __version__, "seed": args.seed, "videos_per_shard": plan.per_shard,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        "errors": [e for s in states for e in s["errors"]],
        "warnings": [w for s in states for w in s.get("warnings", [])],
        "ignored": sel.listing.ignored,
    }
    atomic_write_json(args.out / "_info.json", info)
    return info, states


def summarize(args: argparse.Namespace, info: dict, states: list, num_jobs: int, seconds: float) -> int:
    """Print the build summary; the exit code: 1 when the error rate is over --max-error-rate."""
    out, errors, num_inputs = args.out, info["errors"], info["num_inputs"]
    bytes_out = sum(s["bytes"] for s in info["shards"])
    bytes_in = sum(s["bytes_in"] for s in states)
    warnings = info["warnings"]
    print(f"[build] done: {info['num_videos']} videos, {info['num_samples']} samples in {len(info['shards'])} shards, "
          f"{len(errors)} errors, {len(warnings)} stored with warnings, "
          f"{num_jobs / max(seconds, 1e-9):.1f} videos/s this run ({seconds:.1f}s), "
          f"in {bytes_in / 1e6:.1f} MB -> out {bytes_out / 1e6:.1f} MB  ({out / '_info.json'})", file=sys.stderr)
    if info["ignored"]:
        print(f"[build] note: {len(info['ignored'])} non-video files ignored (listed in _info.json 'ignored')",
              file=sys.stderr)
    for w in warnings[:10]:
        print(f"[build] warning: {w['path']}: {w['reason']} (declared {w['declared_frames']}, "
              f"stored {w['stored_frames']} frames)", file=sys.stderr)
    if len(warnings) > 10:
        print(f"[build] ... {len(warnings) - 10} more in {out / '_info.json'} 'warnings'", file=sys.stderr)
    rate = len(errors) / max(num_inputs, 1)  # warnings are stored videos: not counted here
    for e in errors[:10]:
        print(f"[build] error: {e['path']}: {e['reason']}", file=sys.stderr)
    if len(errors) > 10:
        print(f"[build] ... {len(errors) - 10} more in {out / '_info.json'} 'errors'", file=sys.stderr)
    if rate > args.max_error_rate:
        print(f"[build] FAILED: {len(errors)} of {num_inputs} inputs ({rate:.1%}) could not be stored, over "
              f"--max-error-rate {args.max_error_rate:.1%}. Everything else is written; fix or remove the "
              "inputs listed above (or raise --max-error-rate) and re-run with --retry-errors.", file=sys.stderr)
        return 1
    return 0


def build(args: argparse.Namespace) -> int:
    """Run a build: select classes -> run shards -> write manifest. Returns the exit code (0, or 1
    when the error rate is over --max-error-rate)."""
    t0 = time.time()
    media = media_for(args.layout)
    sel = select_inputs(args)
    identity = {**_identity(args, sel.digest, sel.classes), **media.identity(args)}
    lock_fd, new_lock = lock_out(args.out)
    try:
        try:
            prepare_out(args.out, identity, args.overwrite)
        except BuildError:
            if new_lock:  # leave a refused folder as we found it
                (args.out / "_lock").unlink(missing_ok=True)
            raise
        remove_temp_files(args.out)  # leftovers of killed runs; their shards are redone
        plan = plan_shards(args, len(sel.items))
        num_jobs = run_shards(args, sel, plan, media)
        info, states = write_manifest(args, sel, plan, media)
    finally:
        os.close(lock_fd)
    return summarize(args, info, states, num_jobs, time.time() - t0)

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return build(args)
    except (BuildError, ShardError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"error: {e.strerror} writing {e.filename or args.out}: free space (or quota) and re-run the "
              "same command; it resumes with the shards already written", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
