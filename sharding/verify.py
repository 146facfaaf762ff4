"""`python -m sharding.verify OUT`: re-check a build against its manifest and decode every sample.

Checks, per shard: everything `load_shards` checks (the files exist, the tar's size, the table's
columns and row count, byte ranges inside the tar; `sharding.reader.read_shard_table`), then the
sha256 against the manifest, that the tar holds exactly the table's samples with all members in
FORMAT.md's order, that each member agrees with the table, that the DALI index points at the same
bytes, and that every video decodes (PyAV) to the recorded frame count and size, with the keyframes
the table lists (ivf). Last, the whole set through `load_shards` (totals, window ownership), and the
manifest's `warnings` against what is stored. Prints one line per problem and exits 1 if there is any.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
from pathlib import Path

import av
import numpy as np

from sharding.formats import ARRAY_PREFIXES, FormatError, StorageFormat, format_named, format_of
from sharding.reader import SampleReader, ShardError, ShardTable, load_shards, read_shard_table
from sharding.shardio import MEMBER_ORDER, sha256_file


def count_frames(data: bytes) -> tuple[int, int, int]:
    """Decode an in-memory video fully; returns (frames, width, height)."""
    with av.open(io.BytesIO(data)) as c:
        n, w, h = 0, 0, 0
        for frame in c.decode(video=0):
            n, w, h = n + 1, frame.width, frame.height
    return n, w, h


def decode_error(data: bytes) -> str | None:
    """Why an in-memory video does not decode with PyAV (None: every frame decodes)."""
    try:
        count_frames(data)
    except Exception as e:  # FFmpeg's error classes, or a container PyAV cannot open
        return f"{type(e).__name__}: {e}"
    return None


def _tar_members(tar_path: Path) -> dict[str, list[tarfile.TarInfo]]:
    """The tar's members grouped by sample key, in tar order."""
    members: dict[str, list[tarfile.TarInfo]] = {}
    with tarfile.open(tar_path) as tar:
        for m in tar:
            members.setdefault(m.name.partition(".")[0], []).append(m)
    return members


def verify_shard(root: Path, entry: dict, ext: str, decode: bool = True, info: dict | None = None) -> list[str]:
    """All problems found in one shard (empty list: the shard is sound).

    Args:
        root: the folder of the manifest that lists the shard.
        entry: the shard's manifest entry.
        ext: the video member's extension (`encoding.ext`).
        decode: also decode every video (slow); False checks hashes, tables and members only.
        info: the manifest (for the one-shard table); None builds a minimal one.
    """
    try:
        fmt = format_of(info) if info else format_named(ext)
        tar, columns = read_shard_table(root, entry, fmt)
    except (ShardError, FormatError) as e:
        return [str(e)]
    tar_path = Path(tar)
    problems = []
    if sha256_file(tar_path) != entry["sha256"]:
        problems.append(f"{tar_path}: sha256 differs from the manifest (corrupted or replaced); "
                        "re-run the build command with --verify-existing to rebuild it")
    lists = {k: columns.pop(k) for k in list(columns) if k.startswith(ARRAY_PREFIXES)}  # the format's CSR arrays
    table = ShardTable.from_columns(columns, info or {"encoding": {"ext": ext}}, root, [tar])
    keys = table.columns["keys"].tolist()
    try:
        members = _tar_members(tar_path)
    except tarfile.TarError as e:
        return problems + [f"{tar_path}: unreadable tar: {e}"]
    if list(members) != keys:
        problems.append(f"{tar_path}: sample keys differ from {entry['table']}")
    index_lines = (root / entry["index"]).read_text().splitlines()
    if index_lines[0] != f"v1.2 {len(keys)}":
        problems.append(f"{root / entry['index']}: header {index_lines[0]!r}, expected 'v1.2 {len(keys)}'")
    cols = table.columns
    order = (ext,) + MEMBER_ORDER
    with SampleReader(table, max_open=1) as reader:
        for i, key in enumerate(keys):
            got = {m.name.partition(".")[2]: m for m in members.get(key, [])}
            missing = set(order) - set(got)
            if missing:
                problems.append(f"{tar_path}: sample {key} lacks {sorted(missing)}")
                continue
            if tuple(m.name.partition(".")[2] for m in members[key]) != order:
                problems.append(f"{tar_path}: sample {key}'s members are not in the order {list(order)}")
            offset, size = int(cols["offset"][i]), int(cols["size"][i])
            if got[ext].offset_data != offset or got[ext].size != size:
                problems.append(f"{tar_path}: {key}.{ext} is not where the table says")
                continue
            if i + 1 >= len(index_lines) or f"{ext} {offset} {size} {key}.{ext}" not in index_lines[i + 1]:
                problems.append(f"{root / entry['index']}: line {i + 2} does not locate {key}.{ext}")
            meta, label, ints = (reader.read_range(0, got[m].offset_data, got[m].size)
                                 for m in ("json", "label", "frames"))
            meta = json.loads(meta)
            label, ints = np.frombuffer(label, "<i4"), np.frombuffer(ints, "<i4")
            expect = [int(cols[c][i]) for c in ("num_frames", "first_frame", "own_start", "own_count")]
            if meta["label"] != cols["labels"][i] or label.tolist() != [cols["labels"][i]] \
                    or ints.tolist() != expect:
                problems.append(f"{tar_path}: {key}: json/label/frames members disagree with the table")
            if decode:
                problems += _check_decode(reader, i, f"{tar_path}: {key}.{ext}", cols, fmt, lists)
    return problems


def _check_decode(reader: SampleReader, i: int, name: str, cols: dict, fmt: StorageFormat,
                  lists: dict) -> list[str]:
    """Row i's video decodes (PyAV) to the table's frame count and size, and passes its format's
    own checks (`StorageFormat.check_sample`: an ivf sample's keyframes, a JPEG frame's bounds)."""
    try:
        data = reader.read(i)
        n, w, h = count_frames(data)
        problems = [f"{name} {p}" for p in fmt.check_sample(data, fmt.row_lists(lists, i))]
    except Exception as e:
        return [f"{name} does not decode: {e}"]
    want = (int(cols["num_frames"][i]), int(cols["width"][i]), int(cols["height"][i]))
    if (n, w, h) != want:
        problems.append(f"{name} decodes to {n} frames {w}x{h}, table says {want[0]} frames {want[1]}x{want[2]}")
    return problems


def verify(root: Path, decode: bool = True) -> list[str]:
    """All problems of the build in `root` (a folder with `_info.json`)."""
    info_path = root / "_info.json"
    if not info_path.is_file():
        return [f"{info_path}: missing: the build is unfinished; re-run its command to finish it"]
    info = json.loads(info_path.read_text())
    problems = []
    for entry in info["shards"]:
        problems += verify_shard(root, entry, info["encoding"]["ext"], decode, info)
    if sum(s["num_samples"] for s in info["shards"]) != info["num_samples"]:
        problems.append(f"{info_path}: num_samples differs from the sum over shards")
    if not problems:  # the set as a loader sees it: totals, ownership, keyframe tables
        try:
            table = load_shards(root)
        except ShardError as e:
            return [str(e)]
        problems += _check_warnings(info, table, info_path)
    return problems


def _check_warnings(info: dict, table: ShardTable, info_path: Path) -> list[str]:
    """Each `warnings` entry names a stored video whose stored frame count is the one it lists."""
    problems = []
    stored = {}
    for r in table.video_first_rows():
        stored[str(table.columns["video_ids"][r])] = int(table.columns["video_num_frames"][r])
    for w in info.get("warnings", []):
        vid = w.get("video_id")
        if vid not in stored:
            problems.append(f"{info_path}: warning for {w.get('path')} names video {vid!r}, which is not stored")
        elif stored[vid] != w.get("stored_frames"):
            problems.append(f"{info_path}: warning for {w.get('path')} says {w.get('stored_frames')} frames "
                            f"stored, the shards hold {stored[vid]}")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sharding.verify", description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path, help="the build's folder (holding _info.json)")
    p.add_argument("--no-decode", action="store_true", help="skip decoding (hashes and tables only)")
    args = p.parse_args(argv)
    problems = verify(args.out, decode=not args.no_decode)
    for line in problems:
        print(line)
    info = json.loads((args.out / "_info.json").read_text()) if (args.out / "_info.json").is_file() else {}
    warned = len(info.get("warnings", []))
    print(f"{'FAILED' if problems else 'OK'}: {len(problems)} problems in {len(info.get('shards', []))} shards, "
          f"{info.get('num_samples', 0)} samples" + (f", {warned} videos stored with warnings" if warned else ""),
          file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
