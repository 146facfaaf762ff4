"""Work a shard set needs once per node, not once per process: its merged sample table and the
sha256 check of its tars.

A DDP job starts 8 ranks per node, each with DALI workers. Parsing every `.samples.json` in every
rank cost a Kinetics-700 set 6 s and ~650 MiB per rank (benchmarks/RESULTS.md, `benchmarks.scale`),
and hashing every tar in every rank read the set 8 times. Here the first process of a node does
the work under a file lock and leaves the result on disk; the others wait for the lock, then read it:

- the table: compact columns (int32 where the values fit, UTF-8 byte strings) as `.npy` files
  that every process memory-maps, so a node's ranks and workers share one copy in the page cache
  and a start costs O(1) parsing (`cached_table`);
- the sha256 check: a cache of (path, size, mtime) -> sha256, merged and written atomically after
  every tar hashed, so a process killed mid-hash loses one tar's work (`verified_sha256`).

Where: beside the shards (`_table_cache/`, `_sha256_cache.json`) when the folder is writable, else
in the cache dir (`ZSVIDEO_CACHE_DIR`, default `~/.cache/zsvideo`), keyed by the manifest's content
(and the tables' size and mtime), so a rebuilt set is never read stale. A lock is an `flock` on a
file: the kernel releases it when its holder dies, so a kill -9 never leaves the others waiting.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from sharding.faults import fault_point

CACHE_ENV = "ZSVIDEO_CACHE_DIR"
TABLE_CACHE = "_table_cache"
SHA256_CACHE = "_sha256_cache.json"
TABLE_CACHE_VERSION = 1  # bump when the cached layout changes: old caches are then never read
WAIT_ENV = "ZSVIDEO_CACHE_WAIT"  # seconds a process waits for another's lock (default below)
DEFAULT_WAIT = 3600.0


class CacheWaitTimeout(Exception):
    """Another process held a node-cache lock for longer than the wait allows."""


def cache_dir() -> Path:
    """The writable cache folder for read-only shard sets."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "zsvideo")


def writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


class NodeLock:
    """An exclusive `flock` on `path`, waited for with a deadline.

    `describe` names what the holder is doing (read from `path`, where the holder writes it with
    `note`), so a waiter that gives up says what it waited for.
    """

    def __init__(self, path: Path, wait: float | None = None):
        self.path = path
        self.wait = float(os.environ.get(WAIT_ENV, DEFAULT_WAIT)) if wait is None else wait
        self.fd = -1

    def __enter__(self) -> "NodeLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    what = self.describe()
                    os.close(self.fd)
                    raise CacheWaitTimeout(
                        f"waited {self.wait:.0f} s for {self.path} ({what or 'no progress note'}); if that "
                        f"process hangs, stop it (the lock is released when it exits), or raise {WAIT_ENV}")
                time.sleep(0.05)

    def note(self, text: str) -> None:
        """What the holder is doing now (one line; waiters quote it)."""
        data = f"pid {os.getpid()}: {text}".encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def describe(self) -> str:
        try:
            return os.pread(self.fd, 4096, 0).decode(errors="replace").strip()
        except OSError:
            return ""

    def __exit__(self, *exc) -> None:
        os.close(self.fd)  # releases the flock


# ---------------------------------------------------------------------------------- the table

class StrColumn:
    """A string column stored as UTF-8 bytes (numpy 'S', 1 byte per character, memory-mappable),
    read as `str`: `col[i]` is a str, `col[rows]` a numpy str array, `tolist()` a list of str."""

    def __init__(self, data: np.ndarray):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        if isinstance(i, (int, np.integer)):
            return self.data[i].decode()
        return np.char.decode(self.data[i], "utf-8")

    def __iter__(self):
        return (b.decode() for b in self.data)

    def tolist(self) -> list[str]:
        return [b.decode() for b in self.data.tolist()]

    def astype(self, dtype):
        return np.char.decode(self.data, "utf-8").astype(dtype)

    def __array__(self, dtype=None, copy=None):
        out = np.char.decode(self.data, "utf-8")
        return out if dtype is None else out.astype(dtype)


def compact(a: np.ndarray) -> np.ndarray:
    """int64 -> int32 where every value is below 2**30 in magnitude (a sum of two still fits);
    strings -> UTF-8 bytes; anything else as is."""
    if a.dtype.kind == "U":
        return np.char.encode(a, "utf-8")
    if a.dtype == np.int64 and (len(a) == 0 or max(int(a.max()), -int(a.min())) < (1 << 30)):
        return a.astype(np.int32)
    return a


def table_key(info_bytes: bytes, root: Path, shards: list[dict]) -> str:
    """The cache key: the manifest's bytes and each samples table's size and mtime."""
    h = hashlib.sha256(info_bytes)
    h.update(f"v{TABLE_CACHE_VERSION}".encode())
    for s in shards:
        try:
            st = (root / s["table"]).stat()
            h.update(f"{s['table']}:{st.st_size}:{st.st_mtime_ns}".encode())
        except OSError:
            h.update(f"{s['table']}:missing".encode())
    return h.hexdigest()[:32]


def table_home(root: Path) -> Path:
    """Where a set's table cache lives: beside the shards, or in the cache dir for a read-only set."""
    return root / TABLE_CACHE if writable(root) else cache_dir() / "tables"


def cached_table(root: Path, key: str, build, wait: float | None = None) -> dict[str, np.ndarray]:
    """The arrays of a set's merged table: memory-mapped from the cache, or built once by `build()`
    (-> dict of numpy arrays) under the node lock, written atomically, then mapped.

    String arrays come back as `StrColumn`; every array is read-only.
    """
    home = table_home(root)
    final = home / key
    if not (final / "meta.json").is_file():
        try:
            lock = NodeLock(home / f"{key}.lock", wait).__enter__()
        except OSError:  # no writable cache anywhere: this process keeps its own copy
            return {k: StrColumn(compact(v)) if v.dtype.kind == "U" else compact(v) for k, v in build().items()}
        try:
            if not (final / "meta.json").is_file():  # another process may have built it meanwhile
                lock.note(f"building the sample table cache {final}")
                _write_table(home, final, build())
                _drop_others(home, key)
        finally:
            lock.__exit__()
    return _map_table(final)


def _write_table(home: Path, final: Path, arrays: dict[str, np.ndarray]) -> None:
    for old in home.glob(f"{final.name}.*.tmp"):  # a holder killed mid-write (we hold the lock now)
        shutil.rmtree(old, ignore_errors=True)
    tmp = home / f"{final.name}.{os.getpid()}.tmp"
    tmp.mkdir(parents=True)
    meta = {"version": TABLE_CACHE_VERSION, "arrays": {}}
    for name, a in arrays.items():
        c = compact(np.asarray(a))
        with open(tmp / f"{name}.npy", "wb") as f:
            np.save(f, c, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        meta["arrays"][name] = {"dtype": c.dtype.str, "str": a.dtype.kind == "U"}
    fault_point("table_cache", "write")
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))  # last: its presence = complete
    os.rename(tmp, final)


def _drop_others(home: Path, keep: str) -> None:
    """Remove caches of earlier builds of the set (a process still mapping one keeps its pages)."""
    for p in home.iterdir():
        if p.name.startswith(keep) or p.suffix == ".lock":
            continue
        if p.is_dir() and (p / "meta.json").is_file() and writable(p):
            shutil.rmtree(p, ignore_errors=True)


def _map_table(final: Path) -> dict:
    meta = json.loads((final / "meta.json").read_text())
    out = {}
    for name, m in meta["arrays"].items():
        a = np.load(final / f"{name}.npy", mmap_mode="r", allow_pickle=False)
        out[name] = StrColumn(a) if m["str"] else a
    return out


# ---------------------------------------------------------------------------------- sha256

def sha256_cache_path(root: Path, info_bytes: bytes) -> Path:
    """`_sha256_cache.json` beside the shards, or, for a read-only folder, one per set (keyed by
    its manifest and folder) in the cache dir."""
    if writable(root):
        return root / SHA256_CACHE
    key = hashlib.sha256(info_bytes + str(root.resolve()).encode()).hexdigest()[:32]
    return cache_dir() / "sha256" / f"{key}.json"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}  # a damaged cache is only a slower start


def verified_sha256(root: Path, shards: list[dict], cache_path: Path, hash_file, atomic_write,
                    wait: float | None = None) -> dict[str, str]:
    """The sha256 of every shard tar: from the cache where (size, mtime) still match, else hashed
    (`hash_file(path)`) by the one process holding the lock, which merges each result into the
    cache file at once (`atomic_write(path, obj)`; an unwritable cache only costs speed).

    Returns:
        {shard path: sha256}.
    """
    def stamps():
        out = {}
        for s in shards:
            st = (root / s["path"]).stat()
            out[s["path"]] = [st.st_size, st.st_mtime_ns]
        return out

    now = stamps()
    cache = _read_json(cache_path)
    if all(cache.get(p, {}).get("stamp") == st for p, st in now.items()):
        return {p: cache[p]["sha256"] for p in now}
    with NodeLock(cache_path.with_name(cache_path.name + ".lock"), wait) as lock:
        cache = _read_json(cache_path)  # what the previous holder finished
        todo = [p for p, st in now.items() if cache.get(p, {}).get("stamp") != st]
        for i, p in enumerate(todo):
            lock.note(f"hashing {root / p} ({i + 1} of {len(todo)})")
            fault_point("sha256", p)
            digest = hash_file(root / p)
            cache = _read_json(cache_path)  # merge: never drop what another writer added
            cache[p] = {"stamp": now[p], "sha256": digest}
            try:
                atomic_write(cache_path, cache)
            except OSError:
                pass
    return {p: cache[p]["sha256"] for p in now}
