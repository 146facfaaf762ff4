"""`python -m sharding.merge PART_DIR ... --out DIR`: join the manifests of a build made in parts.

A cluster builds a large dataset as N independent parts (`sharding.build ... --part i --num-parts N
--out parts/i`, e.g. one SLURM array task each). Every part lists the same inputs and classes and
numbers its shards globally, so merging is bookkeeping: check the parts belong together, then write
one `_info.json` whose shard paths point into the part folders (relative to DIR). No tar is copied.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from sharding.shardio import atomic_write_json

_SAME = ("format_version", "dataset", "split", "classes", "encoding")


def merge(part_dirs: list[Path], out: Path) -> dict:
    """Merge part manifests into `out/_info.json`; returns the merged manifest.

    Raises:
        ValueError: a part is unfinished, duplicated or missing, or the parts come from different builds.
    """
    infos = []
    for d in part_dirs:
        path = d / "_info.json"
        if not path.is_file():
            raise ValueError(f"{path} is missing: part {d} is unfinished; re-run its build command")
        infos.append((d, json.loads(path.read_text())))
    first = infos[0][1]
    for d, info in infos[1:]:
        for key in _SAME:
            if info[key] != first[key]:
                raise ValueError(f"{d}: '{key}' differs from {part_dirs[0]}: the parts are not one build")
        if info["build"]["seed"] != first["build"]["seed"] or \
                info["build"]["videos_per_shard"] != first["build"]["videos_per_shard"]:
            raise ValueError(f"{d}: seed or videos_per_shard differs from {part_dirs[0]}")
    num_parts = first["part"]["num_parts"]
    got = sorted(info["part"]["index"] for _, info in infos)
    if got != list(range(num_parts)) or any(i["part"]["num_parts"] != num_parts for _, i in infos):
        raise ValueError(f"expected parts 0..{num_parts - 1} once each, got {got}")
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for d, info in infos:
        for s in info["shards"]:
            shards.append({**s, **{k: os.path.relpath(d / s[k], out) for k in ("path", "index", "table")}})
    shards.sort(key=lambda s: Path(s["path"]).name)
    merged = {
        **{k: first[k] for k in _SAME},
        "num_classes": first["num_classes"],
        "num_videos": sum(i["num_videos"] for _, i in infos),
        "num_samples": sum(i["num_samples"] for _, i in infos),
        "num_short_videos": sum(i["num_short_videos"] for _, i in infos),
        "num_inputs": sum(i["num_inputs"] for _, i in infos),
        "num_excluded_class_videos": first["num_excluded_class_videos"],
        "shards": shards,
        "part": {"index": 0, "num_parts": 1, "merged_from": [os.path.relpath(d, out) for d, _ in infos]},
        "build": {**first["build"], "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        "errors": [e for _, i in infos for e in i["errors"]],
        "ignored": first["ignored"],
    }
    atomic_write_json(out / "_info.json", merged)
    return merged


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sharding.merge", description=__doc__.split("\n")[0])
    p.add_argument("parts", nargs="+", type=Path, help="the part folders (each with its _info.json)")
    p.add_argument("--out", required=True, type=Path, help="folder for the merged _info.json")
    args = p.parse_args(argv)
    try:
        info = merge(args.parts, args.out)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"merged {len(args.parts)} parts: {info['num_videos']} videos, {info['num_samples']} samples, "
          f"{len(info['shards'])} shards -> {args.out / '_info.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
