"""Writing the shard files: the tar, its DALI index and its per-sample table (FORMAT.md).

The format's constants (version, member order, table columns) are defined here, once; the reader
(`sharding.reader`) and the verifier import them.

Reproducible bytes: members are written in a fixed order with fixed metadata (mtime 0, uid 0,
mode 0644), so the same samples give the same tar whatever the number of build workers.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import tarfile
from pathlib import Path

import numpy as np

from sharding.faults import fault_point
from sharding.formats import LIST_COLUMNS  # per-sample lists where a format's samples carry them

FORMAT_VERSION = 1  # `format_version` of `_info.json`; readers refuse any other
MEMBER_ORDER = ("json", "cls", "label", "frames")  # after the video member
# Columns of `{split}-NNNNNN.samples.json`: integer columns, then string columns.
INT_COLUMNS = ("labels", "num_frames", "video_num_frames", "first_frame", "segment", "own_start",
               "own_count", "width", "height", "offset", "size")
STR_COLUMNS = ("keys", "video_ids")
TABLE_COLUMNS = ("keys", "video_ids", "labels", "num_frames", "video_num_frames", "first_frame",
                 "segment", "own_start", "own_count", "width", "height", "offset", "size")
assert sorted(TABLE_COLUMNS) == sorted(INT_COLUMNS + STR_COLUMNS)


def sample_members(key: str, ext: str, video: bytes, meta: dict) -> list[tuple[str, bytes]]:
    """The tar members of one sample, in order (see FORMAT.md).

    Args:
        key: the sample key (no dots).
        ext: the video member's extension (`webm`, `mp4`).
        video: the encoded video.
        meta: the sample's json (must hold label, num_frames, first_frame, own_start, own_count).
    """
    ints = np.array([meta["num_frames"], meta["first_frame"], meta["own_start"], meta["own_count"]], "<i4")
    payload = {
        "json": json.dumps(meta, sort_keys=True).encode(),
        "cls": str(meta["label"]).encode(),
        "label": np.array([meta["label"]], "<i4").tobytes(),
        "frames": ints.tobytes(),
    }
    return [(f"{key}.{ext}", video)] + [(f"{key}.{m}", payload[m]) for m in MEMBER_ORDER]


def temp_path(path: Path) -> Path:
    """A temp name beside `path`, unique to this process and call (`NAME.PID-RANDOM.tmp`), so two
    writers never share (or delete) one another's temp file."""
    return path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a unique temp name, fsync, then rename: a reader never sees half a file."""
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, a kill: leave no half file behind
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode())


def write_shard(tar_path: Path, samples: list[tuple[str, str, bytes, dict]], shard: int = -1) -> dict:
    """Write one shard atomically, then its DALI index and its table.

    Args:
        tar_path: final path of `{split}-NNNNNN.tar`.
        samples: (key, ext, video bytes, meta) in shard order.
        shard: the shard's number, for the fault hook (sharding.faults).

    Returns:
        The shard's manifest entry: path, index, table, num_samples, num_videos, bytes, sha256
        (paths relative to the shard's folder).
    """
    tmp = temp_path(tar_path)
    index_lines, table = [], {c: [] for c in TABLE_COLUMNS}
    sha = hashlib.sha256()
    try:
        _write_tar(tmp, samples, sha, index_lines, table, shard)
        size = tmp.stat().st_size
        os.replace(tmp, tar_path)
        fault_point("tar", shard)
    except BaseException:  # a full disk, a kill: leave no half file behind
        tmp.unlink(missing_ok=True)
        raise
    stem = tar_path.name[: -len(".tar")]
    index_path = tar_path.with_name(stem + ".idx")
    table_path = tar_path.with_name(stem + ".samples.json")
    # the DALI webdataset index, v1.2: "<ext> <data offset> <size> <member name>" per component
    atomic_write_bytes(index_path, (f"v1.2 {len(samples)}\n" + "\n".join(index_lines) + "\n").encode())
    atomic_write_bytes(table_path, json.dumps(table, separators=(",", ":")).encode())
    return {
        "path": tar_path.name, "index": index_path.name, "table": table_path.name,
        "num_samples": len(samples), "num_videos": len({m["video_id"] for _, _, _, m in samples}),
        "bytes": size, "sha256": sha.hexdigest(),
    }


class _Hashing(io.RawIOBase):
    """A write-only file that hashes what passes through: no second pass over a large tar."""

    def __init__(self, f, sha):
        self.f, self.sha = f, sha

    def writable(self):
        return True

    def tell(self):
        return self.f.tell()

    def write(self, b):
        self.sha.update(b)
        return self.f.write(b)


def _write_tar(tmp: Path, samples, sha, index_lines: list, table: dict, shard: int = -1) -> None:
    """The tar itself (write_shard), hashing as it writes; fills `index_lines` and `table`."""
    with open(tmp, "wb") as raw:
        sink = _Hashing(raw, sha)
        with tarfile.open(fileobj=sink, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for key, ext, video, meta in samples:
                parts = []
                for name, data in sample_members(key, ext, video, meta):
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    offset = tar.offset + tarfile.BLOCKSIZE  # the data follows one header block
                    tar.addfile(info, io.BytesIO(data))
                    parts.append(f"{name.split('.', 1)[1]} {offset} {len(data)} {name}")
                    if name.endswith("." + ext) and name.count(".") == 1:
                        video_at = (offset, len(data))
                index_lines.append(" ".join(parts))
                for col, val in (("keys", key), ("video_ids", meta["video_id"]), ("labels", meta["label"]),
                                 ("num_frames", meta["num_frames"]), ("video_num_frames", meta["video_num_frames"]),
                                 ("first_frame", meta["first_frame"]), ("segment", meta["segment"]),
                                 ("own_start", meta["own_start"]), ("own_count", meta["own_count"]),
                                 ("width", meta["width"]), ("height", meta["height"]),
                                 ("offset", video_at[0]), ("size", video_at[1])):
                    table[col].append(val)
                for col in LIST_COLUMNS:
                    if col in meta:
                        table.setdefault(col, []).append(meta[col])
                if len(index_lines) == 1:
                    sink.flush()
                    fault_point("tar_member", shard)
        raw.flush()
        os.fsync(raw.fileno())


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
