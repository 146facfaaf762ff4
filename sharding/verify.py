"""`python -m sharding.verify OUT`: re-check a build against its manifest and decode every sample.

Checks, per shard: the file exists, its size and sha256 match the manifest, the tar holds exactly the
table's samples with all five members, each member agrees with the table, the DALI index points at
the same bytes, and every video decodes (PyAV) to the recorded frame count and size.
Prints one line per problem and exits 1 if there is any.
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

from sharding import ivf
from sharding.shardio import KEYFRAME_COLUMNS, TABLE_COLUMNS, sha256_file


def count_frames(data: bytes) -> tuple[int, int, int]:
    """Decode an in-memory video fully; returns (frames, width, height)."""
    with av.open(io.BytesIO(data)) as c:
        n, w, h = 0, 0, 0
        for frame in c.decode(video=0):
            n, w, h = n + 1, frame.width, frame.height
    return n, w, h


def read_member(tar_path: Path, offset: int, size: int) -> bytes:  # FIXME(#12): use load_shards + SampleReader
    with open(tar_path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def verify_shard(root: Path, entry: dict, ext: str, decode: bool = True) -> list[str]:
    """All problems found in one shard (empty list: the shard is sound)."""
    problems = []
    tar_path = root / entry["path"]
    for key in ("path", "index", "table"):
        if not (root / entry[key]).is_file():
            return [f"{root / entry[key]}: missing (re-run the build command to recreate it)"]
    if tar_path.stat().st_size != entry["bytes"]:
        problems.append(f"{tar_path}: {tar_path.stat().st_size} bytes, manifest says {entry['bytes']}")
    if sha256_file(tar_path) != entry["sha256"]:
        problems.append(f"{tar_path}: sha256 differs from the manifest (corrupted or replaced)")
    table = json.loads((root / entry["table"]).read_text())
    expected = TABLE_COLUMNS + (KEYFRAME_COLUMNS if ext == "ivf" else ())
    if sorted(table) != sorted(expected) or len({len(v) for v in table.values()}) != 1:
        return problems + [f"{root / entry['table']}: malformed table"]
    if len(table["keys"]) != entry["num_samples"]:
        problems.append(f"{root / entry['table']}: {len(table['keys'])} samples, manifest says {entry['num_samples']}")
    members: dict[str, dict[str, tarfile.TarInfo]] = {}
    try:
        with tarfile.open(tar_path) as tar:
            for m in tar:
                key, _, suffix = m.name.partition(".")
                members.setdefault(key, {})[suffix] = m
    except tarfile.TarError as e:
        return problems + [f"{tar_path}: unreadable tar: {e}"]
    if list(members) != table["keys"]:
        problems.append(f"{tar_path}: sample keys differ from {entry['table']}")
    index_lines = (root / entry["index"]).read_text().splitlines()
    if index_lines[0] != f"v1.2 {len(table['keys'])}":
        problems.append(f"{root / entry['index']}: header {index_lines[0]!r}, expected 'v1.2 {len(table['keys'])}'")
    for i, key in enumerate(table["keys"]):
        got = members.get(key, {})
        missing = {ext, "json", "cls", "label", "frames"} - set(got)
        if missing:
            problems.append(f"{tar_path}: sample {key} lacks {sorted(missing)}")
            continue
        if got[ext].offset_data != table["offset"][i] or got[ext].size != table["size"][i]:
            problems.append(f"{tar_path}: {key}.{ext} is not where the table says")
            continue
        if f"{ext} {table['offset'][i]} {table['size'][i]} {key}.{ext}" not in index_lines[i + 1]:
            problems.append(f"{root / entry['index']}: line {i + 2} does not locate {key}.{ext}")
        meta = json.loads(read_member(tar_path, got["json"].offset_data, got["json"].size))
        label = np.frombuffer(read_member(tar_path, got["label"].offset_data, got["label"].size), "<i4")
        ints = np.frombuffer(read_member(tar_path, got["frames"].offset_data, got["frames"].size), "<i4")
        expect = [table["num_frames"][i], table["first_frame"][i], table["own_start"][i], table["own_count"][i]]
        if meta["label"] != table["labels"][i] or label.tolist() != [table["labels"][i]] or ints.tolist() != expect:
            problems.append(f"{tar_path}: {key}: json/label/frames members disagree with the table")
        if decode:
            try:
                data = read_member(tar_path, table["offset"][i], table["size"][i])
                n, w, h = count_frames(data)
                if ext == "ivf" and list(ivf.keyframes(data)) != [table[c][i] for c in KEYFRAME_COLUMNS]:
                    problems.append(f"{tar_path}: {key}.ivf keyframes differ from the table's")
            except Exception as e:
                problems.append(f"{tar_path}: {key}.{ext} does not decode: {e}")
                continue
            if (n, w, h) != (table["num_frames"][i], table["width"][i], table["height"][i]):
                problems.append(f"{tar_path}: {key}.{ext} decodes to {n} frames {w}x{h}, table says "
                                f"{table['num_frames'][i]} frames {table['width'][i]}x{table['height'][i]}")
    return problems


def verify(root: Path, decode: bool = True) -> list[str]:
    """All problems of the build in `root` (a folder with `_info.json`)."""
    info_path = root / "_info.json"
    if not info_path.is_file():
        return [f"{info_path}: missing: the build is unfinished; re-run its command to finish it"]
    info = json.loads(info_path.read_text())
    problems = []
    for entry in info["shards"]:
        problems += verify_shard(root, entry, info["encoding"]["ext"], decode)
    if sum(s["num_samples"] for s in info["shards"]) != info["num_samples"]:
        problems.append(f"{info_path}: num_samples differs from the sum over shards")
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
    print(f"{'FAILED' if problems else 'OK'}: {len(problems)} problems in {len(info.get('shards', []))} shards, "
          f"{info.get('num_samples', 0)} samples", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
