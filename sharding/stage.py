"""`python -m sharding.stage SRC DEST`: copy a shard set from object storage to a node's local disk.

    python -m sharding.stage s3://bucket/shards/k700 /local/shards/k700
    python -m sharding.stage https://data.example.org/k700 /local/k700 --jobs 16
    AWS_ENDPOINT_URL=http://minio:9000 python -m sharding.stage s3://bucket/k700 /local/k700
    python -m sharding.stage s3://bucket/k700 /local/k700 --storage-option endpoint_url=http://minio:9000

SRC is a shard set's folder (the one holding `_info.json`, FORMAT.md): `s3://`, `gs://` (needs
`pip install gcsfs`), `http(s)://` or a local path, opened through fsspec. Credentials come from
where each protocol's library looks (s3: AWS_* variables, ~/.aws, an instance role; gcs: the
Google application credentials; fsspec's own config: `FSSPEC_S3_ENDPOINT_URL=...`), or from
`--storage-option KEY=VALUE` (fsspec's storage options; never printed).

What it guarantees:
- DEST holds `_info.json` only when it holds the whole set: every file the manifest names (each
  shard's tar, DALI index and samples table) is written to `NAME.partial`, checked (a tar's size and
  sha256 against the manifest's `bytes` and `sha256`; an index or table against the size the server
  reports) and only then renamed to NAME; the manifest itself is written last, atomically.
- A file whose bytes differ is fetched once more, then staging stops (exit 1) naming the file, the
  difference and what to do. A missing object is named by its URL (exit 1).
- Killed at any moment (kill -9, a preempted node), the same command resumes: files verified before
  are skipped after a stat (their size, mtime and sha256 are recorded in `DEST/.stage_state.json`,
  written atomically after each file), leftover `.partial` files are discarded, the rest fetched.
- A DEST holding another shard set (an `_info.json` or a staging state whose manifest differs from
  SRC's) is refused (exit 2); nothing in it is touched.
- Calls on one DEST are serialized (a `flock` on `DEST/.stage_lock`), so every local rank of a job
  may call `stage`: the first copies, the others wait, then find the set complete after a stat of
  each file.
- The verified tars' sha256 go into DEST's `_sha256_cache.json` (sharding.reader's cache, keyed by
  size and mtime), so `load_shards(DEST, verify="sha256")` at training start only stats them.
- Exit codes: 0 done, 1 a download failed or differs, 2 refused (DEST, arguments), 3 disk full.

Fault points for the tests (`ZSVIDEO_FAULTS`, sharding.faults): `pause:stage_partial:NAME` stops
after the first block of NAME is written to `NAME.partial`; `pause:stage_manifest:0` stops with every
file in place, before `_info.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sharding.faults import fault_point
from sharding.reader import SHA256_CACHE
from sharding.shardio import FORMAT_VERSION, atomic_write_bytes, atomic_write_json, sha256_file

__all__ = ["StageError", "is_url", "main", "manifest_files", "stage"]

MANIFEST = "_info.json"
STATE = ".stage_state.json"  # {manifest_sha256, files: {name: {size, mtime_ns, sha256}}}
LOCK = ".stage_lock"
PARTIAL = ".partial"
CHUNK = 8 << 20  # bytes per read: one range request on object stores, one write + hash update
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")
_INSTALL = {"gs": "gcsfs", "gcs": "gcsfs", "s3": "s3fs", "s3a": "s3fs", "http": "aiohttp",
            "https": "aiohttp", "az": "adlfs", "abfs": "adlfs"}


class StageError(Exception):
    """Staging failed or was refused; the message names the file and what to do.

    Attributes:
        exit_code: the command's exit code (1 a download failed or differs, 2 refused, 3 disk full).
    """

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class _Stopped(Exception):
    """Another file failed: this one stops at its next block."""


@dataclass(frozen=True)
class StagedFile:
    """One file a manifest names.

    Attributes:
        name: its path relative to the set's folder (the manifest's `path`, `index` or `table`).
        size: the manifest's `bytes` (tars), None where the manifest records none (index, table).
        sha256: the manifest's `sha256` (tars), else None.
    """

    name: str
    size: int | None = None
    sha256: str | None = None


def is_url(s: str) -> bool:
    """Whether `s` names a remote location: a `scheme://` other than `file://`.

    Examples: `s3://b/k700`, `https://host/k700` -> True; `/data/k700`, `file:///data/k700`,
    `shards/k700`, `C:/data` -> False.
    """
    m = _SCHEME.match(str(s))
    return bool(m) and m.group(1).lower() != "file"


def manifest_files(info: dict) -> list[StagedFile]:
    """The files a manifest names, tars first (the bulk of the bytes), then indexes and tables.

    Raises:
        StageError: a manifest of another format version, without shards, with an entry missing a
            key, or naming a path outside its folder (absolute, `..`) or the same file twice.
    """
    if info.get("format_version") != FORMAT_VERSION:
        raise StageError(f"{MANIFEST}: format_version {info.get('format_version')!r}; this stage "
                         f"copies the files of format {FORMAT_VERSION} (FORMAT.md): update the code")
    shards = info.get("shards")
    if not isinstance(shards, list) or not shards:
        raise StageError(f"{MANIFEST}: lists no shards (see its `errors`): nothing to stage")
    tars, others = [], []
    for i, shard in enumerate(shards):
        try:
            size, sha = int(shard["bytes"]), str(shard["sha256"])
            tars.append(StagedFile(_safe_name(shard["path"]), size, sha))
            others += [StagedFile(_safe_name(shard["index"])), StagedFile(_safe_name(shard["table"]))]
        except (KeyError, TypeError, ValueError) as e:
            raise StageError(f"{MANIFEST}: shard {i}'s entry is malformed ({type(e).__name__}: {e}); "
                             "FORMAT.md lists path, index, table, bytes and sha256") from None
    files = tars + others
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        raise StageError(f"{MANIFEST}: names a file twice ({sorted({n for n in names if names.count(n) > 1})})")
    return files


def _safe_name(name) -> str:
    p = PurePosixPath(str(name))
    if not str(name) or p.is_absolute() or ".." in p.parts or "\\" in str(name) \
            or p.parts[0] in (MANIFEST, STATE, LOCK, SHA256_CACHE):
        raise ValueError(f"path {name!r} is not a file inside the set's folder")
    return str(p)


def stage(src: str, dest: Path | str, jobs: int = 8, progress: bool = True,
          storage_options: dict | None = None, verify: bool = True) -> Path:
    """Copy the shard set at `src` into `dest` (created), resuming what an earlier call left.

    A call on a complete DEST of the same set is quick: one request for SRC's `_info.json`, then a
    stat of each file against `DEST/.stage_state.json`, no hashing.

    Args:
        src: the set's folder: `s3://`, `gs://`, `http(s)://` URL or a local path.
        dest: the local folder to fill.
        jobs: files copied at once (threads; hashing releases the GIL).
        progress: a tqdm bar on stderr (bytes, bytes/s, ETA) and a summary line.
        storage_options: fsspec options for SRC's protocol (`endpoint_url`, `key`, `secret`, ...);
            never printed.
        verify: check each tar's sha256 (the default). False is for benchmarks only: sizes are
            still checked, and the files are recorded as unverified (a later call with
            verify=True hashes them before it counts them complete).

    Returns:
        `dest` as a Path.

    Raises:
        StageError: SRC unreachable or incomplete (a missing object, named by URL), a file that
            differs from the manifest twice, DEST holding another set (exit_code 2), a full disk
            (exit_code 3).
    """
    if jobs < 1:
        raise StageError(f"jobs must be >= 1, got {jobs}", 2)
    dest = Path(dest)
    fs, root = _filesystem(src, storage_options)
    manifest = _fetch_manifest(fs, root)
    digest = hashlib.sha256(manifest).hexdigest()
    try:
        info = json.loads(manifest)
    except ValueError as e:
        raise StageError(f"{_display(fs, _join(root, MANIFEST))}: not JSON ({e}): not a shard set, "
                         "or a damaged upload") from None
    files = manifest_files(info)
    local_src = _local_root(fs, root)
    if local_src is not None and local_src == dest.resolve():
        raise StageError(f"SRC and DEST are the same folder ({dest})", 2)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StageError(f"cannot create DEST {dest}: {e.strerror}", 2) from None
    try:
        with _locked(dest, progress):
            return _Stager(fs, root, dest, files, manifest, digest, jobs, progress, verify).run()
    except OSError as e:  # writing the state, the cache or the manifest
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_full(e, Path(e.filename or dest), sum(f.size or 0 for f in files)) from None
        raise


# ============================================================================ source

def _filesystem(src: str, storage_options: dict | None):
    """(fsspec filesystem, SRC's folder path in it); a URL to `_info.json` itself is accepted."""
    import fsspec

    src = str(src)
    m = _SCHEME.match(src)
    scheme = m.group(1).lower() if m else "file"
    try:
        # a fresh instance: no listing or credential cached by an earlier call
        fs, root = fsspec.core.url_to_fs(src, skip_instance_cache=True, **(storage_options or {}))
    except ImportError as e:
        pkg = _INSTALL.get(scheme)
        raise StageError(f"{scheme}:// needs a package that is not installed ({e})"
                         + (f": pip install {pkg}" if pkg else ""), 2) from None
    except (ValueError, TypeError) as e:
        raise StageError(f"cannot open {_clean(src)} with fsspec: {e}", 2) from None
    root = root.rstrip("/")
    if root.endswith("/" + MANIFEST):
        root = root[: -len(MANIFEST) - 1]
    return fs, root


def _join(root: str, name: str) -> str:
    return f"{root}/{name}"


def _clean(url: str) -> str:
    """A URL fit to print: no `user:password@`, no query (presigned signatures)."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1", str(url)).split("?")[0]


def _display(fs, path: str) -> str:
    try:
        return _clean(fs.unstrip_protocol(path))
    except Exception:
        return _clean(path)


def _local_root(fs, root: str) -> Path | None:
    from fsspec.implementations.local import LocalFileSystem

    return Path(root).resolve() if isinstance(fs, LocalFileSystem) else None


def _fetch_manifest(fs, root: str) -> bytes:
    url = _join(root, MANIFEST)
    try:
        return fs.cat_file(url)
    except FileNotFoundError:
        raise StageError(f"{_display(fs, url)}: not found: SRC is not a shard set's folder, or its "
                         "build or upload never finished (the manifest is written last): check the "
                         "URL, then finish the build or upload") from None
    except PermissionError as e:
        raise StageError(f"{_display(fs, url)}: access denied ({e}): check the credentials "
                         "(env, config files, --storage-option)") from None
    except Exception as e:  # connection refused, DNS, TLS, a 5xx: whatever the protocol raises
        raise StageError(f"{_display(fs, url)}: cannot fetch ({type(e).__name__}: {e}): check the "
                         "URL, the network and the endpoint") from None


def _open_source(fs, path: str, size: int | None):
    """A sequential reader of one object, the cheapest way each protocol offers."""
    from fsspec.implementations.http import HTTPFileSystem
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem):
        return open(path, "rb")
    if isinstance(fs, HTTPFileSystem):  # one streamed GET (Python's http.server ignores Range)
        return fs.open(path, "rb", block_size=0, size=size)
    # object stores: one range GET per read of CHUNK bytes, nothing cached twice
    return fs.open(path, "rb", block_size=CHUNK, cache_type="none")


# ============================================================================ destination

@contextlib.contextmanager
def _locked(dest: Path, verbose: bool):
    """Hold DEST's stage lock (`flock`; released by the kernel if the holder dies)."""
    fd = os.open(dest / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if verbose:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                print(f"stage: waiting for another stage into {dest} (pid {holder})", file=sys.stderr,
                      flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _refuse_other_set(dest: Path, digest: str, state: dict | None) -> None:
    """Exit 2 if DEST holds another shard set, or a build's output, before anything is touched."""
    advice = (f"stage into another folder, or delete {dest} to replace what it holds")
    info_path = dest / MANIFEST
    if info_path.is_file():
        theirs = hashlib.sha256(info_path.read_bytes()).hexdigest()
        if theirs != digest:
            raise StageError(f"{info_path}: DEST holds another shard set (its manifest's sha256 "
                             f"{theirs[:12]}..., SRC's {digest[:12]}...): {advice}", 2)
    if state is not None and state.get("manifest_sha256") != digest:
        raise StageError(f"{dest / STATE}: DEST holds part of another shard set's staging (manifest "
                         f"sha256 {str(state.get('manifest_sha256'))[:12]}..., SRC's {digest[:12]}...): "
                         f"{advice}", 2)
    if (dest / "_build.json").exists():
        raise StageError(f"{dest / '_build.json'}: DEST is a shard build's output folder; {advice}", 2)


def _load_state(dest: Path) -> dict | None:
    path = dest / STATE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
        if isinstance(state, dict) and isinstance(state.get("files"), dict):
            return state
    except (OSError, ValueError):
        pass
    # written atomically, so only a hand edit gets here: its files are checked (tars re-hashed)
    print(f"stage: warning: {path} is unreadable; its files are checked again", file=sys.stderr)
    return None


def _disk_full(e: OSError, path: Path, total: int) -> StageError:
    return StageError(f"{e.strerror} writing {path} (the whole set is {total / 1e9:.2f} GB): free "
                      "space (or quota) and re-run the same command; it resumes", 3)


class _Stager:
    """One staging run under DEST's lock: what is in place, what to fetch, the state file."""

    def __init__(self, fs, root, dest, files, manifest, digest, jobs, progress, verify):
        self.fs, self.root, self.dest, self.files = fs, root, dest, files
        self.manifest, self.digest = manifest, digest
        self.jobs, self.progress, self.verify = jobs, progress, verify
        self.state: dict = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.bar = None
        self.fetched_bytes = 0

    def run(self) -> Path:
        loaded = _load_state(self.dest)
        _refuse_other_set(self.dest, self.digest, loaded)
        self.state = {"manifest_sha256": self.digest, "files": dict(loaded["files"]) if loaded else {}}
        todo = [f for f in self.files if not self._in_place(f)]
        info_path = self.dest / MANIFEST
        if not todo and info_path.is_file() and info_path.read_bytes() == self.manifest:
            return self.dest  # complete: a stat per file, nothing hashed
        # From here DEST is incomplete until the manifest is written again, last.
        info_path.unlink(missing_ok=True)
        self._drop_records(todo)
        atomic_write_json(self.dest / STATE, self.state)  # names this set before any byte lands
        self._discard_leftovers()
        need = sum(f.size or 0 for f in todo)
        free = shutil.disk_usage(self.dest).free
        if need > free:
            raise StageError(f"{self.dest}: {free / 1e9:.2f} GB free, the set needs {need / 1e9:.2f} GB "
                             "more: free space (or stage elsewhere) and re-run; it resumes", 3)
        t0, cpu0 = time.perf_counter(), time.process_time()
        self._fetch_all(todo)
        if self.verify:
            self._write_sha256_cache()
        fault_point("stage_manifest", 0)
        atomic_write_bytes(info_path, self.manifest)
        if self.progress:
            dt = time.perf_counter() - t0
            print(f"stage: {len(todo)} files fetched ({self.fetched_bytes / 1e9:.3f} GB, "
                  f"{self.fetched_bytes / 1e6 / max(dt, 1e-9):.0f} MB/s, "
                  f"{time.process_time() - cpu0:.1f} CPU-s), {len(self.files) - len(todo)} already in "
                  f"place -> {self.dest}", file=sys.stderr)
        return self.dest

    # ------------------------------------------------------------------ bookkeeping

    def _in_place(self, f: StagedFile) -> bool:
        """Recorded after a verified copy, and unchanged since (size and mtime)."""
        rec = self.state["files"].get(f.name)
        if not rec:
            return False
        try:
            st = (self.dest / f.name).stat()
        except OSError:
            return False
        return (rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns
                and (f.size is None or f.size == st.st_size)
                and (not self.verify or f.sha256 is None or rec.get("sha256") == f.sha256))

    def _drop_records(self, todo) -> None:
        for f in todo:
            self.state["files"].pop(f.name, None)
        known = {f.name for f in self.files}
        for name in [n for n in self.state["files"] if n not in known]:
            del self.state["files"][name]

    def _record(self, f: StagedFile, path: Path, sha: str | None) -> None:
        st = path.stat()
        with self.lock:
            self.state["files"][f.name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha}
            atomic_write_json(self.dest / STATE, self.state)

    def _discard_leftovers(self) -> None:
        """`.partial` files and atomic-write temp files of killed runs."""
        for f in self.files:
            (self.dest / (f.name + PARTIAL)).unlink(missing_ok=True)
        for pattern in (f"{MANIFEST}.*.tmp", f"{STATE}.*.tmp", f"{SHA256_CACHE}.*.tmp"):
            for p in self.dest.glob(pattern):
                p.unlink(missing_ok=True)

    def _write_sha256_cache(self) -> None:
        """Tell sharding.reader's sha256 check what was just verified (FORMAT.md: the cache)."""
        path = self.dest / SHA256_CACHE
        try:
            cache = json.loads(path.read_text()) if path.is_file() else {}
            cache = cache if isinstance(cache, dict) else {}
        except (OSError, ValueError):
            cache = {}
        for f in self.files:
            rec = self.state["files"].get(f.name)
            if f.sha256 and rec and rec.get("sha256") == f.sha256:
                cache[f.name] = {"stamp": [rec["size"], rec["mtime_ns"]], "sha256": f.sha256}
        atomic_write_json(path, cache)

    # ------------------------------------------------------------------ copying

    def _fetch_all(self, todo: list[StagedFile]) -> None:
        from tqdm import tqdm

        total = sum(f.size or 0 for f in todo)
        self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="stage",
                        file=sys.stderr, dynamic_ncols=True, mininterval=0.5, smoothing=0.1,
                        disable=not self.progress)
        pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="stage")
        try:
            futures = [pool.submit(self._fetch_one, f) for f in todo]
            wait(futures, return_when=FIRST_EXCEPTION)
            failed = [fu for fu in futures if fu.done() and fu.exception() is not None]
            if failed:
                self.stop.set()
                for fu in futures:
                    fu.cancel()
                wait(futures)
                errors = [fu.exception() for fu in futures
                          if not fu.cancelled() and fu.exception() is not None
                          and not isinstance(fu.exception(), _Stopped)]
                raise errors[0]
        except BaseException:  # Ctrl-C too: the threads stop at their next block
            self.stop.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            self.bar.close()

    def _progress(self, n: int) -> None:
        with self.lock:
            self.bar.update(n)

    def _fetch_one(self, f: StagedFile) -> None:
        final = self.dest / f.name
        final.parent.mkdir(parents=True, exist_ok=True)
        if self._adopt(f, final):
            return
        url = _join(self.root, f.name)
        shown = _display(self.fs, url)
        partial = final.with_name(final.name + PARTIAL)
        for attempt in (1, 2):
            try:
                size, sha, server_size = self._download(f, url, partial)
            except (FileNotFoundError, StageError, _Stopped):
                partial.unlink(missing_ok=True)
                raise
            except OSError as e:
                partial.unlink(missing_ok=True)
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise _disk_full(e, partial, sum(x.size or 0 for x in self.files)) from None
                if isinstance(e, PermissionError):
                    raise StageError(f"{shown}: access denied ({e}): check the credentials") from None
                problem = f"the download failed ({type(e).__name__}: {e})"
            except Exception as e:  # the protocol's client errors (aiohttp, botocore): a network fault
                partial.unlink(missing_ok=True)
                problem = f"the download failed ({type(e).__name__}: {e})"
            else:
                problem = self._check(f, size, sha, server_size)
                if problem is None:
                    os.replace(partial, final)
                    self._record(f, final, sha)
                    return
                partial.unlink(missing_ok=True)
            if attempt == 1:
                self._warn(f"{f.name}: {problem}; fetching it again")
                with self.lock:
                    self.bar.total += f.size or size or 0
                    self.bar.refresh()
        raise StageError(
            f"{shown}: {problem}, twice: the copy there differs from its shard set's manifest (a "
            "corrupted or unfinished upload, or a set replaced under the same URL) or the network "
            "fails: check the set at SRC (python -m sharding.verify on the original, then upload it "
            f"again), then re-run the same command (it resumes; {f.name} stays out of DEST)")

    def _check(self, f: StagedFile, size: int, sha: str | None, server_size: int | None) -> str | None:
        if f.size is not None and size != f.size:
            return f"{size} bytes arrived, the manifest says {f.size}"
        if server_size is not None and size != server_size:
            return f"{size} bytes arrived, the server announced {server_size}"
        if self.verify and f.sha256 and sha != f.sha256:
            return f"sha256 of the bytes is {sha}, the manifest says {f.sha256} (same size: corrupted)"
        return None

    def _download(self, f: StagedFile, url: str, partial: Path) -> tuple[int, str | None, int | None]:
        """Stream one object into `partial`, hashing as it goes; (bytes, sha256, server's size)."""
        try:
            server_size = self.fs.info(url).get("size")
        except FileNotFoundError:
            raise StageError(f"{_display(self.fs, url)}: not found (named in {MANIFEST} as {f.name}): "
                             "the set at SRC is incomplete: upload the whole set again, then re-run "
                             "(it resumes)") from None
        server_size = int(server_size) if server_size is not None else None
        if f.size is None and server_size:
            with self.lock:
                self.bar.total += server_size
        sha = hashlib.sha256() if self.verify or f.sha256 is None else None
        n = 0
        with _open_source(self.fs, url, server_size) as src, open(partial, "wb") as out:
            while True:
                if self.stop.is_set():
                    raise _Stopped()
                block = src.read(CHUNK)
                if not block:
                    break
                out.write(block)
                if sha is not None:
                    sha.update(block)  # releases the GIL: the threads hash in parallel
                if n == 0:
                    out.flush()
                    fault_point("stage_partial", f.name)
                n += len(block)
                self._progress(len(block))
            out.flush()
            os.fsync(out.fileno())
        with self.lock:
            self.fetched_bytes += n
        return n, (sha.hexdigest() if sha is not None else None), server_size

    def _adopt(self, f: StagedFile, final: Path) -> bool:
        """A tar already under its name but not recorded (a kill between its rename and its record,
        a copy made with verify=False): kept if its size and sha256 match the manifest."""
        if not (self.verify and f.sha256 and f.size is not None):
            return False
        try:
            if final.stat().st_size != f.size:
                return False
        except OSError:
            return False
        if sha256_file(final) != f.sha256:
            return False
        self._record(f, final, f.sha256)
        self._progress(f.size)
        return True

    def _warn(self, message: str) -> None:
        from tqdm import tqdm

        with self.lock:
            tqdm.write(f"stage: warning: {message}", file=sys.stderr)


# ============================================================================ command line

def _parse_storage_options(items: list[str]) -> dict:
    """`KEY=VALUE` pairs; a dotted KEY nests (`client_kwargs.region_name=eu-west-1`); VALUE stays
    a string except `true` / `false` (a numeric secret must not turn into a number)."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise StageError(f"--storage-option wants KEY=VALUE, got {key or item!r}", 2)
        parsed = {"true": True, "false": False}.get(value.lower(), value)
        node = out
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = parsed
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sharding.stage", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("src", help="the shard set's folder: s3://, gs://, http(s):// URL or a local path")
    p.add_argument("dest", type=Path, help="local folder to copy it into (created; resumed)")
    p.add_argument("--jobs", type=int, default=8, help="files copied at once")
    p.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an fsspec storage option for SRC's protocol, e.g. endpoint_url=http://minio:9000 "
                        "(repeatable; never printed)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        stage(args.src, args.dest, jobs=args.jobs, progress=not args.quiet,
              storage_options=_parse_storage_options(args.storage_option))
    except StageError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
