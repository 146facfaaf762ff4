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


def _identity(part_dir: Path) -> dict:
    """A part's build identity (`_build.json`: inputs and options), less the part's own index."""
    path = part_dir / "_build.json"
    if not path.is_file():
        raise ValueError(f"{path} is missing: {part_dir} is not a sharding.build output")
    identity = json.loads(path.read_text())
    identity.pop("part", None)
    return identity


def merge(part_dirs: list[Path], out: Path) -> dict:
    """Merge part manifests into `out/_info.json`; returns the merged manifest.

    Raises:
        ValueError: a part is unfinished, duplicated or missing, or the parts come from different
            builds (different inputs or options, by their `_build.json`: the message names what differs).
    """
    infos = []
    for d in part_dirs:
        path = d / "_info.json"
        if not path.is_file():
            raise ValueError(f"{path} is missing: part {d} is unfinished; re-run its build command")
        infos.append((d, json.loads(path.read_text())))
    first = infos[0][1]
    identities = [_identity(d) for d in part_dirs]
    for d, identity in zip(part_dirs[1:], identities[1:]):
        diff = [f"{k} {identities[0].get(k)!r} in {part_dirs[0]} vs {identity.get(k)!r}"
                for k in sorted(set(identity) | set(identities[0])) if identity.get(k) != identities[0].get(k)]
        if diff:  # different inputs or options: shards would not fit together
            raise ValueError(f"{d} is not a part of the same build as {part_dirs[0]}: {'; '.join(diff)}")
    for d, info in infos[1:]:
        for key in _SAME:
            if info[key] != first[key]:
                raise ValueError(f"{d}: '{key}' differs from {part_dirs[0]}: the parts are not one build")
        if info["build"]["seed"] != first["build"]["seed"] or \
                info["build"]["videos_per_shard"] != first["build"]["videos_per_shard"]:
            raise ValueError(f"{d}: seed or videos_per_shard differs from {part_dirs[0]}")
    counts = {(d, i["part"]["num_parts"]) for d, i in infos}
    if len({n for _, n in counts}) != 1:
        raise ValueError("the parts say different --num-parts: "
                         + ", ".join(f"{d}: {n}" for d, n in sorted(counts, key=str)))
    num_parts = first["part"]["num_parts"]
    got = sorted(info["part"]["index"] for _, info in infos)
    if got != list(range(num_parts)):
        missing = sorted(set(range(num_parts)) - set(got))
        twice = sorted({i for i in got if got.count(i) > 1})
        raise ValueError(f"expected parts 0..{num_parts - 1} once each, got {got}"
                         + (f" (missing {missing})" if missing else "") + (f" (repeated {twice})" if twice else ""))
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
        "warnings": [w for _, i in infos for w in i.get("warnings", [])],
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
