"""The builder's output folder: one builder at a time, resume or refuse, and what a build may delete.

- `lock_out`: an exclusive `flock` on `OUT/_lock` for the whole build. A second builder on the same
  `--out` (a double launch, a SLURM requeue while the old job still runs) is refused with the
  holder's PID and host; the kernel drops the lock when its holder dies, so a requeue after the
  old job is gone just resumes.
- `prepare_out`: a new folder, the same build (resume), a refused different one, or `--overwrite`,
  which deletes only the files the old build's own state lists.
- `check_finished`: on resume, a shard counts as done only if its files are there with the size
  (and with `--verify-existing` the sha256) its state file recorded.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import socket
from pathlib import Path

from sharding.encode import CODECS
from sharding.nodecache import SHA256_CACHE, TABLE_CACHE
from sharding.shardio import atomic_write_json, sha256_file

LOCK_NAME = "_lock"
# temp names of the files a build writes (shardio.temp_path; a bare `.tmp`: builds before it)
_TEMP = re.compile(r"^(?:\w+-\d{6}\.(?:tar|idx|samples\.json|json)|_info\.json|_build\.json|_sha256_cache\.json)"
                   r"(?:\.\d+-[0-9a-f]{8})?\.tmp$")


class BuildError(Exception):
    """A problem with the command line or the output folder, reported before any work starts."""


def lock_out(out: Path) -> tuple[int, bool]:
    """Take the build lock of `out` (creating the folder); returns (fd, whether the lock file is new).
    Keep the fd open for the whole build.

    Raises:
        BuildError: `out` is a file, or another live builder holds the lock.
    """
    if out.exists() and not out.is_dir():
        raise BuildError(f"--out {out} is a file")
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    created = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = os.pread(fd, 200, 0).decode(errors="replace").split()
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise BuildError(f"cannot lock {path}: {e}") from None
        pid, host = (holder + ["?", "?"])[:2]
        raise BuildError(f"--out {out} is being written by another builder (PID {pid} on host {host}, "
                         f"lock {path}); wait for it to finish or stop it, then re-run (it resumes)") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    return fd, created


def listed_files(out: Path) -> list[Path]:
    """Every file an existing build in `out` wrote, by its own records: the manifest, the identity,
    the per-shard state files and the shards they list, and this builder's temp files."""
    files = [out / "_info.json", out / SHA256_CACHE]
    parts = out / "_parts"
    if parts.is_dir():
        for state_file in sorted(parts.glob("*.json")):
            files.append(state_file)
            try:
                entry = json.loads(state_file.read_text()).get("shard")
            except (OSError, ValueError):
                entry = None
            if entry:
                files += [out / entry[k] for k in ("path", "index", "table")]
        files += [p for p in parts.iterdir() if _TEMP.match(p.name)]
    files += [p for p in out.iterdir() if _TEMP.match(p.name)]
    files.append(out / "_build.json")  # last: while it exists, what is left is known to be ours
    return [p for p in files if p.is_file()]


def _is_fresh(out: Path) -> bool:
    """Nothing in `out` but what a build killed before writing its identity leaves: the lock, our
    temp files, an empty `_parts`."""
    for p in out.iterdir():
        if p.name == LOCK_NAME or _TEMP.match(p.name):
            continue
        if p.name == "_parts" and p.is_dir() and not any(p.iterdir()):
            continue
        return False
    return True


def _read_identity(build_file: Path) -> dict | None:
    if not build_file.is_file():
        return None
    old = json.loads(build_file.read_text())
    if "container" not in old and old.get("codec") in CODECS:
        old = {**old, "container": CODECS[old["codec"]][1]}  # written before --container existed
    if old.get("layout") != "images":  # video builds written before playable-but-short inputs
        old.setdefault("strict_frame_count", True)  # were kept: they rejected them
    return old


def prepare_out(out: Path, identity: dict, overwrite: bool) -> None:
    """Create `out`'s build files, or check that it holds this same build (resume), or clear it
    (--overwrite: only the files `listed_files` names; anything else in the folder stays).

    Raises:
        BuildError: `out` holds a different build (and no --overwrite), or files that are not a build.
    """
    build_file = out / "_build.json"
    if out.is_dir() and not _is_fresh(out):
        old = _read_identity(build_file)
        if old == identity:  # same build: resume
            (out / "_parts").mkdir(exist_ok=True)  # a run killed right after writing the identity
            return
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
        for p in listed_files(out):
            p.unlink()
        # the readers' node caches of the old build (sharding/nodecache.py; keyed, so never read
        # stale, but no longer of use)
        shutil.rmtree(out / TABLE_CACHE, ignore_errors=True)
        (out / f"{SHA256_CACHE}.lock").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(build_file, identity)  # first: from here on the folder is known to be ours
    (out / "_parts").mkdir(exist_ok=True)


def remove_temp_files(out: Path) -> None:
    """Delete temp files of killed runs (safe: we hold the lock, so no live builder owns them)."""
    for d in (out, out / "_parts"):
        for p in d.iterdir():
            if _TEMP.match(p.name) and p.is_file():
                p.unlink()


def check_finished(out: Path, state: dict, verify_sha256: bool = False) -> str | None:
    """Why a shard whose state file says done cannot be trusted (None: it can)."""
    entry = state.get("shard")
    if not entry:
        return None  # every input of it failed: nothing written
    for k in ("path", "index", "table"):
        if not (out / entry[k]).is_file():
            return f"{entry[k]} is missing"
    size = (out / entry["path"]).stat().st_size
    if size != entry["bytes"]:
        return f"{entry['path']} is {size} bytes, {entry['bytes']} when it was written (truncated?)"
    if verify_sha256 and sha256_file(out / entry["path"]) != entry["sha256"]:
        return f"{entry['path']} has a different sha256 than when it was written (corrupted)"
    return None
