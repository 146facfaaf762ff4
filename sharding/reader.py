"""Read a shard set (sharding/FORMAT.md) into one validated sample table, and read its bytes.

Everything is checked before a pipeline is built, so a broken or unfinished build fails at start-up
with the file's name instead of hours into training inside a DALI worker. `SampleReader` is the one
way to read a sample's bytes (the DALI sources, the benchmarks' DataLoaders, the verifier).
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sharding import nodecache
from sharding.nodecache import SHA256_CACHE  # noqa: F401 (the name callers know)
from sharding.formats import ARRAY_PREFIXES, Cut, FormatError, StorageFormat, format_of
from sharding.shardio import FORMAT_VERSION, INT_COLUMNS, STR_COLUMNS, atomic_write_json, sha256_file

_REBUILD = ("re-run `python -m sharding.build` with the same arguments (it resumes, and rebuilds "
            "missing or truncated shards) or rebuild with --overwrite")


class ShardError(Exception):
    """A shard set that cannot be read; the message names the file and what to do."""


@dataclass(frozen=True)
class ShardTable:
    """All samples of a shard set, one row per sample, in manifest order.

    Attributes:
        root: the directory holding `_info.json`.
        info: the parsed manifest.
        tar_paths: absolute path of each shard's tar (index = `shard` column).
        columns: numpy columns of length `num_samples`: the FORMAT.md table columns (int64 / str)
            plus `shard` (int64, index into `tar_paths`).
        video_ptr, video_rows: train grouping in CSR form: the rows of video v (its segments in
            frame order) are `video_rows[video_ptr[v]:video_ptr[v + 1]]`. For an eval set each
            video is one row.
        kf_ptr, kf_frames, kf_offsets: keyframe-indexed (ivf) sets only, else None: row r's
            keyframes are frames `kf_frames[kf_ptr[r]:kf_ptr[r + 1]]`, their frame records start
            at byte `kf_offsets[...]` of the member (`cut`).
        fo_ptr, fo_offsets: JPEG-frame sets only, else None: row r's frames start at bytes
            `fo_offsets[fo_ptr[r]:fo_ptr[r + 1]]` of the member.
    """

    root: Path
    info: dict
    tar_paths: list[str]
    columns: dict[str, np.ndarray]
    video_ptr: np.ndarray
    video_rows: np.ndarray
    kf_ptr: np.ndarray | None = None
    kf_frames: np.ndarray | None = None
    kf_offsets: np.ndarray | None = None
    fo_ptr: np.ndarray | None = None
    fo_offsets: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.columns["keys"])

    @classmethod
    def from_columns(cls, columns: dict[str, np.ndarray], info: dict, root: Path | str = ".",
                     tar_paths: list[str] | None = None) -> "ShardTable":
        """A table from in-memory columns (the samplers need no files: used by their tests)."""
        columns = {k: np.asarray(v) for k, v in columns.items()}
        columns.setdefault("shard", np.zeros(len(columns["keys"]), dtype=np.int64))
        video_ptr, video_rows = _group_by_video(columns)
        return cls(Path(root), info, list(tar_paths or []), columns, video_ptr, video_rows)

    @property
    def num_videos(self) -> int:
        return len(self.video_ptr) - 1

    @property
    def clip_span(self) -> int:
        """The build's `--clip-span`: the frames one window covers, which sets each video's window
        starts (`own_count`). In a segmented set (webm/mp4 train) no window of this span crosses a
        segment; keyframe-indexed (ivf) and eval sets store whole videos, so any span can be read."""
        return int(self.info["encoding"]["clip_span"])

    def video_first_rows(self) -> np.ndarray:
        """The first row of each video: its label / frame count / size source."""
        return self.video_rows[self.video_ptr[:-1]]

    def read(self, row: int) -> bytes:
        """The encoded video bytes of one row (one-off reads; loops keep a `SampleReader`)."""
        with SampleReader(self, max_open=1) as reader:
            return reader.read(row)

    @property
    def format(self) -> StorageFormat:
        """The set's storage format (`sharding.formats`), from its manifest."""
        return format_of(self.info)

    def cut(self, row: int, start: int, span: int) -> Cut | None:
        """Where to cut row `row` for the frames [start, start + span), in formats that read part of a
        member (ivf: at the keyframes around the window; jpeg_frames: exactly its frames); None
        where a window reads the whole member (`StorageFormat.cut`)."""
        fmt = self.format
        return fmt.cut(self, row, start, span) if fmt.cuts else None


class SampleReader:
    """Positional reads (`os.pread`) of a shard set's bytes through a bounded cache of open files.

    Safe in threads: pread has no file position, and a descriptor evicted from the cache while
    another thread reads through it is closed only when that read ends (closing it at once could
    let a new `open` reuse its number, and the reader would silently get another tar's bytes).
    Safe across fork (a forked process reopens its own descriptors); picklable (descriptors are
    not pickled). At most `max_open` tars are cached open, least recently used closed first, so a
    10k-shard set does not exhaust the fd limit.

    Args:
        table: the shard set (its `tar_paths` and `offset` / `size` / `shard` columns).
        max_open: descriptors kept open.
    """

    def __init__(self, table: "ShardTable", max_open: int = 64):
        self.tar_paths = list(table.tar_paths)
        cols = table.columns
        self.shard, self.offset, self.size = cols["shard"], cols["offset"], cols["size"]
        self.max_open = max(1, int(max_open))
        self._table = table if table.format.cuts else None  # windows cut out of members
        self._reset()

    def _reset(self) -> None:
        self._fds: OrderedDict[int, int] = OrderedDict()  # shard -> fd, least recently used first
        self._busy: dict[int, int] = {}  # fd -> reads in flight
        self._evicted: set[int] = set()  # fds out of the cache, to close when their reads end
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def __getstate__(self):
        state = {k: v for k, v in self.__dict__.items() if k not in ("_fds", "_busy", "_evicted", "_lock")}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset()

    def __enter__(self) -> "SampleReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the cached descriptors (reads in flight close theirs when they end)."""
        if os.getpid() != self._pid:
            self._reset()
            return
        with self._lock:
            for fd in self._fds.values():
                self._release_or_defer(fd)
            self._fds.clear()

    def _release_or_defer(self, fd: int) -> None:
        if self._busy.get(fd):
            self._evicted.add(fd)
        else:
            os.close(fd)

    def _acquire(self, shard: int) -> int:
        if os.getpid() != self._pid:  # a forked child: never share (or close) the parent's fds
            self._reset()
        with self._lock:
            fd = self._fds.get(shard)
            if fd is None:
                while len(self._fds) >= self.max_open:
                    self._release_or_defer(self._fds.popitem(last=False)[1])
                fd = self._fds[shard] = os.open(self.tar_paths[shard], os.O_RDONLY)
            else:
                self._fds.move_to_end(shard)
            self._busy[fd] = self._busy.get(fd, 0) + 1
            return fd

    def _done(self, fd: int) -> None:
        with self._lock:
            self._busy[fd] -= 1
            if not self._busy[fd]:
                del self._busy[fd]
                if fd in self._evicted:
                    self._evicted.discard(fd)
                    os.close(fd)

    def read_range(self, shard: int, offset: int, size: int) -> bytes:
        """Bytes [offset, offset + size) of tar number `shard` (any member: json, label, ...).

        Raises:
            ShardError: the tar ends before the range (truncated after validation).
        """
        fd = self._acquire(shard)
        try:
            data = os.pread(fd, size, offset)
        finally:
            self._done(fd)
        if len(data) != size:
            raise _fail(self.tar_paths[shard], f"short read at byte {offset} ({len(data)} of {size} "
                        "bytes): the shard was truncated or replaced after validation")
        return data

    def read(self, row: int, begin: int = 0, end: int | None = None) -> bytes:
        """Bytes [begin, end) of row `row`'s video member (default: all of it)."""
        end = int(self.size[row]) if end is None else end
        return self.read_range(int(self.shard[row]), int(self.offset[row]) + begin, end - begin)

    def byte_range(self, row: int, start: int | None = None, span: int | None = None) -> tuple[str, int, int]:
        """(tar path, first byte, end byte) in the tar of what `read_window(row, start, span)`
        reads, or of the whole member when `start` is None (error messages name it)."""
        offset, size = int(self.offset[row]), int(self.size[row])
        if self._table is None or start is None:
            return self.tar_paths[int(self.shard[row])], offset, offset + size
        c = self._table.cut(row, start, span)
        return self.tar_paths[int(self.shard[row])], offset + c.begin, offset + c.end

    def read_window(self, row: int, start: int, span: int) -> tuple[bytes, int]:
        """The bytes to decode for frames [start, start + span) of a row, and where the window
        starts in them: the whole member and `start`, or, in a keyframe-indexed (ivf) set, the
        stream cut at the keyframes around the window (`ShardTable.cut`) and `start` minus the
        cut's first frame. The decoder then starts at most gop - 1 frames before the window."""
        if self._table is None:
            return self.read(row), start
        c = self._table.cut(row, start, span)
        return self._table.format.window_bytes(self, row, c), start - c.first_frame


def _fail(path: Path | str, what: str, fix: str = _REBUILD) -> ShardError:
    return ShardError(f"{path}: {what}; {fix}")


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise _fail(path, "missing")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise _fail(path, f"unreadable ({e})") from e


def load_shards(path: str | os.PathLike, split: str | None = None, verify: str = "size") -> ShardTable:
    """Read and validate a shard set.

    Args:
        path: a shard directory or its `_info.json`.
        split: 'train' or 'eval' to require that split; None accepts either.
        verify: 'size' checks each tar's size; 'sha256' also its sha256 against the manifest,
            computed once per node and (path, size, mtime), cached beside the shards or in the
            cache dir, so a second start costs one stat per shard (`check_sha256`).

    The merged sample table is built once per node and memory-mapped by every process
    (`sharding.nodecache.cached_table`): the first start parses the tables, later ones map the
    cache (string columns as `nodecache.StrColumn`, integer columns int32 where they fit).

    Returns:
        The validated `ShardTable`.

    Raises:
        ShardError: naming the offending file: a missing `_info.json` (an unfinished build), a
            missing tar / index / samples table, a tar whose size differs from the manifest, a table
            whose row count or columns differ from the manifest, a byte range past the tar's end,
            an empty shard list, or a wrong format version / split; with verify='sha256', a tar
            whose bytes differ from the build's.
    """
    if verify not in ("size", "sha256"):
        raise ValueError(f"verify must be 'size' or 'sha256', got {verify!r}")
    path = Path(path)
    info_path = path if path.name == "_info.json" else path / "_info.json"
    if not info_path.is_file():
        raise _fail(info_path, "missing (no shard set here, or its build never finished: the "
                    "manifest is written last)",
                    "point `shards` at the build's output directory, or " + _REBUILD)
    try:
        info_bytes = info_path.read_bytes()
        info = json.loads(info_bytes)
    except (OSError, ValueError) as e:
        raise _fail(info_path, f"unreadable ({e})") from e
    root = info_path.parent
    if info.get("format_version") != FORMAT_VERSION:
        raise _fail(info_path, f"format_version {info.get('format_version')!r}, this reader knows "
                    f"{FORMAT_VERSION}", "rebuild the shards with this version of sharding.build")
    if split is not None and info.get("split") != split:
        raise _fail(info_path, f"split is {info.get('split')!r} but {split!r} shards are needed",
                    f"build them with `python -m sharding.build --split {split}`")
    shards = info.get("shards") or []
    if not shards:
        raise _fail(info_path, "the manifest lists no shards (no video was stored; see its `errors`)",
                    "check the build's input and errors, then rebuild")

    try:
        fmt = format_of(info)
    except FormatError as e:
        raise _fail(info_path, str(e), "rebuild the shards with this version of sharding.build") from None
    tar_paths = []
    for shard in shards:  # a stat per file: the cached table holds the rest of the checks
        tar = root / shard["path"]
        try:
            tar_size = tar.stat().st_size
        except FileNotFoundError:
            raise _fail(tar, f"tar shard listed in {info_path.name} is missing") from None
        if not (root / shard["index"]).is_file():
            raise _fail(root / shard["index"], f"DALI index listed in {info_path.name} is missing")
        if tar_size != shard["bytes"]:
            raise _fail(tar, f"size {tar_size} bytes, the manifest says {shard['bytes']} "
                        "(truncated or replaced after the build; verify sha256 in _info.json)")
        tar_paths.append(str(tar.resolve()))
    key = nodecache.table_key(info_bytes, root, shards)
    try:
        arrays = nodecache.cached_table(root, key, lambda: merged_table(root, info, fmt, info_path))
    except nodecache.CacheWaitTimeout as e:
        raise ShardError(f"{info_path}: the sample table is being built by another process: {e}") from None
    if verify == "sha256":
        check_sha256(root, shards, info_bytes)
    lists = {k: arrays.pop(k) for k in [k for k in arrays if k.startswith(ARRAY_PREFIXES)]}
    video_ptr, video_rows = arrays.pop("video_ptr"), arrays.pop("video_rows")
    return ShardTable(root, info, tar_paths, arrays, video_ptr, video_rows, **lists)


def merged_table(root: Path, info: dict, fmt: StorageFormat, info_path: Path) -> dict[str, np.ndarray]:
    """Every shard's samples table read, checked against the manifest and its files, and merged:
    the columns, `shard`, the format's CSR lists and the video grouping (`video_ptr`,
    `video_rows`). What `load_shards` caches once per node (`sharding.nodecache`)."""
    shards = info["shards"]
    parts = [read_shard_table(root, shard, fmt, s_idx, info_path.name)[1] for s_idx, shard in enumerate(shards)]
    lists = {}  # the format's per-shard CSR parts -> one CSR over all rows (ptr keys end in _ptr)
    for key in [k for k in parts[0] if k.endswith("_ptr")]:
        counts = np.concatenate([np.diff(p.pop(key)) for p in parts])
        lists[key] = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        prefix = key[:-len("ptr")]
        for flat in [k for k in parts[0] if k.startswith(prefix)]:
            lists[flat] = np.concatenate([p.pop(flat) for p in parts])
    columns = {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
    n = len(columns["keys"])
    if n != info.get("num_samples"):
        raise _fail(info_path, f"shards hold {n} samples, the manifest says {info.get('num_samples')}")
    if n == 0:
        raise _fail(info_path, "the shards hold no samples", "check the build's input, then rebuild")

    video_ptr, video_rows = _group_by_video(columns)
    if len(video_ptr) - 1 != info.get("num_videos"):
        raise _fail(info_path, f"shards hold {len(video_ptr) - 1} videos, the manifest says "
                    f"{info.get('num_videos')}")
    _check_ownership(columns, video_ptr, video_rows, int(info["encoding"]["clip_span"]), info_path)
    return {**columns, **lists, "video_ptr": video_ptr, "video_rows": video_rows}


def check_sha256(root: Path, shards: list[dict], info_bytes: bytes | None = None) -> None:
    """Compare every shard's sha256 with the manifest's. Each tar is hashed once per node: by the
    one process holding the set's lock, the others wait and read its cache (`SHA256_CACHE` beside
    the shards, or in the cache dir for a read-only folder: `sharding.nodecache.verified_sha256`);
    a later start hashes only tars whose (size, mtime) changed.

    Raises:
        ShardError: naming the first tar whose bytes differ from the build's, or the tar another
            process was still hashing when the wait ran out.
    """
    if info_bytes is None:
        info_bytes = (root / "_info.json").read_bytes()
    cache_path = nodecache.sha256_cache_path(root, info_bytes)
    try:
        digests = nodecache.verified_sha256(root, shards, cache_path, sha256_file, atomic_write_json)
    except nodecache.CacheWaitTimeout as e:
        raise ShardError(f"{root}: verify sha256: {e}") from None
    for shard in shards:
        if digests[shard["path"]] != shard["sha256"]:
            raise _fail(root / shard["path"], "sha256 differs from the manifest's (the bytes changed after the "
                        "build: a bad disk or copy)", "re-run `python -m sharding.build` with the same arguments "
                        "and --verify-existing (it rebuilds shards whose sha256 differs), or copy the shard again")


def read_shard_table(root: Path, shard: dict, fmt: StorageFormat, shard_index: int = 0,
                     manifest: str = "_info.json") -> tuple[str, dict[str, np.ndarray]]:
    """Check one manifest shard entry against its files and read its samples table.

    Args:
        root: the folder the entry's paths are relative to.
        shard: the `_info.json` entry ({path, index, table, num_samples, bytes, ...}).
        fmt: the set's storage format: its list columns are required and checked.
        shard_index: the value of the returned `shard` column.
        manifest: the manifest's name, for messages.

    Returns:
        (absolute tar path, columns): the FORMAT.md columns as numpy arrays plus `shard`, and the
        format's list columns as CSR arrays (ivf: `kf_ptr`, `kf_frames`, `kf_offsets`; jpeg_frames:
        `fo_ptr`, `fo_offsets`).

    Raises:
        ShardError: a missing tar / index / table, a tar size other than the manifest's, a table
            whose columns or row count differ from the manifest, or a byte range past the tar's end.
    """
    tar, idx, table_path = (root / shard[k] for k in ("path", "index", "table"))
    for p, what in ((tar, "tar shard"), (idx, "DALI index"), (table_path, "samples table")):
        if not p.is_file():
            raise _fail(p, f"{what} listed in {manifest} is missing")
    tar_size = tar.stat().st_size
    if tar_size != shard["bytes"]:
        raise _fail(tar, f"size {tar_size} bytes, the manifest says {shard['bytes']} "
                    "(truncated or replaced after the build; verify sha256 in _info.json)")
    table = _load_json(table_path)
    missing = [c for c in INT_COLUMNS + STR_COLUMNS if c not in table]
    if missing:
        raise _fail(table_path, f"columns {missing} missing")
    lengths = {c: len(table[c]) for c in INT_COLUMNS + STR_COLUMNS}
    if len(set(lengths.values())) != 1:
        raise _fail(table_path, f"columns of unequal length {lengths}")
    n = lengths["keys"]
    if n != shard["num_samples"]:
        raise _fail(table_path, f"{n} rows, the manifest says {shard['num_samples']}")
    part = {c: np.asarray(table[c], dtype=np.int64) for c in INT_COLUMNS}
    part.update({c: np.asarray(table[c], dtype=str) for c in STR_COLUMNS})
    if n and int((part["offset"] + part["size"]).max()) > tar_size:
        raise _fail(table_path, "a sample's byte range ends past the end of its tar")
    part["shard"] = np.full(n, shard_index, dtype=np.int64)
    try:
        part.update(fmt.read_lists(table, n, part["size"], part["num_frames"]))
    except FormatError as e:
        raise _fail(table_path, str(e)) from None
    return str(tar.resolve()), part


def _group_by_video(columns: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """CSR grouping of rows by video id, videos in order of first appearance, segments in frame order.

    Example: video ids [a, b, a] with first_frame [35, 0, 0] -> video_ptr [0, 2, 3],
    video_rows [2, 0, 1] (video a = rows 2 then 0, video b = row 1).
    """
    ids = columns["video_ids"]
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    # Renumber videos by first appearance so the order follows the shards, not the ids' spelling.
    rank_of_unique = np.argsort(np.argsort(first))
    video = rank_of_unique[inverse]
    rows = np.lexsort((columns["first_frame"], video))
    counts = np.bincount(video, minlength=len(first))
    ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return ptr, rows.astype(np.int64)


def _check_ownership(columns, video_ptr, video_rows, clip_span, info_path) -> None:
    """Each video's segments must own its window starts contiguously from 0 (FORMAT.md)."""
    own_lo = columns["first_frame"][video_rows] + columns["own_start"][video_rows]
    own_hi = own_lo + columns["own_count"][video_rows]
    starts = video_ptr[:-1]
    ends = video_ptr[1:] - 1
    ok = own_lo[starts] == 0
    # A segment's owned starts begin where the previous segment's end (within one video).
    inner = np.ones(len(video_rows), dtype=bool)
    inner[starts] = False
    ok_inner = own_lo[inner] == own_hi[np.flatnonzero(inner) - 1]
    vnf = columns["video_num_frames"][video_rows]
    # ... and the last one must end at the video's last start, W = max(F - span + 1, 1).
    if not (ok.all() and ok_inner.all()
            and (own_hi[ends] == np.maximum(vnf[ends] - clip_span + 1, 1)).all()):
        raise _fail(info_path, "segments do not partition their videos' window starts "
                    "(mixed or corrupted builds)")
