"""`python -m benchmarks.stage`: how fast `sharding.stage` copies a shard set, and what its sha256
check costs.

    python -m benchmarks.stage                        # a generated 1 GB set of random-byte tars
    python -m benchmarks.stage --size-gb 4 --jobs 16 --json stage.json
    python -m benchmarks.stage --shards shards/ucf101 # a real set

A local HTTP server (Python's ThreadingHTTPServer in a subprocess on 127.0.0.1, sending files with
`sendfile`, so its CPU is not ours) serves the set; `sharding.stage` copies it into a temp folder
(fsync'd, as always) with and without the sha256 check (`verify=False`, which exists for this
measurement only), `--repeat` times each, alternating, after one untimed warm-up run. Measured per
run: wall time, MB/s and the CPU-seconds of this process (every thread: fsspec's network loop, the
copy threads and their hashing) per GB copied. Also the single-thread sha256 rate of this CPU.

A generated set is `--size-gb` of random bytes in tars of `--shard-mb` with a manifest that holds
what staging reads (FORMAT.md: path, index, table, bytes, sha256); it is not a readable shard set.

Then what a Kinetics-700 set (216 GB) costs one node on a 1 GB/s link: the CPU-s/GB with the check
says how many cores keep up with 1 GB/s (hashing is what caps a core), and how long it takes on one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.measure import machine_info
from sharding.shardio import FORMAT_VERSION
from sharding.stage import stage

K700_GB = 216.0  # Kinetics-700 train + val as VP9 ivf shards (README)
LINK_GB_S = 1.0

# The server: ThreadingHTTPServer whose file bodies go out with sendfile (zero copy).
_SERVER = r"""
import functools, sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

class Handler(SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def copyfile(self, source, outputfile):
        self.wfile.flush()
        self.connection.sendfile(source)

server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=sys.argv[1]))
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def generate_set(out: Path, size_gb: float, shard_mb: int, seed: int = 0) -> Path:
    """Random-byte tars of `shard_mb` MB adding up to `size_gb` GB, with small index and table
    files and a consistent `_info.json` (what staging reads; not a readable shard set)."""
    out.mkdir(parents=True, exist_ok=True)
    total, shard_bytes = int(size_gb * 1e9), shard_mb * 10 ** 6
    rng = __import__("random").Random(seed)
    shards, i = [], 0
    while sum(s["bytes"] for s in shards) < total:
        n = min(shard_bytes, total - sum(s["bytes"] for s in shards))
        n -= n % 512  # tar blocks
        name = f"train-{i:06d}"
        sha = hashlib.sha256()
        with open(out / f"{name}.tar", "wb") as f:
            left = n
            while left:
                block = rng.randbytes(min(left, 8 << 20))
                f.write(block)
                sha.update(block)
                left -= len(block)
        (out / f"{name}.idx").write_text("v1.2 0\n")
        (out / f"{name}.samples.json").write_text(json.dumps({"keys": []}))
        shards.append({"path": f"{name}.tar", "index": f"{name}.idx", "table": f"{name}.samples.json",
                       "num_samples": 0, "num_videos": 0, "bytes": n, "sha256": sha.hexdigest()})
        i += 1
    info = {"format_version": FORMAT_VERSION, "dataset": "random-bytes", "split": "train", "classes": [],
            "num_classes": 0, "num_videos": 0, "num_samples": 0, "shards": shards}
    (out / "_info.json").write_text(json.dumps(info, indent=1))
    return out


def sha256_rate(mb: int = 512) -> float:
    """MB/s of hashlib.sha256 on one thread."""
    block = os.urandom(64 << 20)
    h = hashlib.sha256()
    t0 = time.perf_counter()
    for _ in range(mb // 64):
        h.update(block)
    return (mb // 64) * 64 * 2 ** 20 / 1e6 / (time.perf_counter() - t0)


def set_bytes(root: Path) -> int:
    info = json.loads((root / "_info.json").read_text())
    return sum(int(s["bytes"]) for s in info["shards"]) + sum(
        (root / s[k]).stat().st_size for s in info["shards"] for k in ("index", "table"))


def run_once(url: str, dest: Path, jobs: int, verify: bool, nbytes: int) -> dict:
    shutil.rmtree(dest, ignore_errors=True)
    t0, c0 = time.perf_counter(), time.process_time()
    stage(url, dest, jobs=jobs, progress=False, verify=verify)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    gb = nbytes / 1e9
    return {"verify": verify, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "mb_s": round(nbytes / 1e6 / wall, 1), "cpu_s_per_gb": round(cpu / gb, 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stage", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--shards", type=Path, help="serve this shard set (default: generate one)")
    p.add_argument("--size-gb", type=float, default=1.0, help="generated set: total size")
    p.add_argument("--shard-mb", type=int, default=128, help="generated set: bytes per tar")
    p.add_argument("--jobs", type=int, default=8, help="sharding.stage --jobs")
    p.add_argument("--repeat", type=int, default=3, help="runs of each mode")
    p.add_argument("--tmp", type=Path, help="folder for the generated set and the copies (default: $TMPDIR)")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)

    cores = sorted(os.sched_getaffinity(0))
    machine = machine_info(cores)
    print(f"machine: {machine['cpu']}, {len(cores)} of {machine['logical_cpus']} logical CPUs, "
          f"{machine['memory_gb']} GB, load {machine['load_avg_start']}, Python {machine['python']}")
    work = Path(tempfile.mkdtemp(prefix="bench_stage_", dir=args.tmp))
    server = None
    try:
        if args.shards:
            src = args.shards.resolve()
        else:
            t0 = time.perf_counter()
            src = generate_set(work / "src", args.size_gb, args.shard_mb)
            print(f"generated {args.size_gb} GB in {args.shard_mb} MB tars ({time.perf_counter() - t0:.1f} s)")
        nbytes = set_bytes(src)
        server = subprocess.Popen([sys.executable, "-c", _SERVER, str(src)], stdout=subprocess.PIPE, text=True)
        url = f"http://127.0.0.1:{int(server.stdout.readline())}/"
        run_once(url, work / "dest", args.jobs, True, nbytes)  # warm-up: imports, sessions, caches
        runs = []
        for _ in range(args.repeat):
            for verify in (True, False):
                r = run_once(url, work / "dest", args.jobs, verify, nbytes)
                runs.append(r)
                print(f"  verify={str(verify):5}  {r['wall_s']:7.2f} s  {r['mb_s']:7.0f} MB/s  "
                      f"{r['cpu_s_per_gb']:5.2f} CPU-s/GB")
        hash_mb_s = sha256_rate()
    finally:
        if server is not None:
            server.terminate()
            server.wait()
        shutil.rmtree(work, ignore_errors=True)

    def best(verify: bool, key: str, pick) -> float:
        return pick(r[key] for r in runs if r["verify"] == verify)

    cpu_v, cpu_n = best(True, "cpu_s_per_gb", min), best(False, "cpu_s_per_gb", min)
    mbs_v, mbs_n = best(True, "mb_s", max), best(False, "mb_s", max)
    cores_needed = cpu_v * LINK_GB_S  # CPU-s per GB x GB/s
    link_s = K700_GB / LINK_GB_S
    one_core_s = K700_GB * max(1 / LINK_GB_S, cpu_v)
    here_s = K700_GB * max(1 / LINK_GB_S, cpu_v / len(cores))
    print(f"\n{nbytes / 1e9:.2f} GB over HTTP on 127.0.0.1, --jobs {args.jobs}, best of {args.repeat}:")
    print(f"  with sha256:    {mbs_v:7.0f} MB/s  {cpu_v:5.2f} CPU-s/GB")
    print(f"  without sha256: {mbs_n:7.0f} MB/s  {cpu_n:5.2f} CPU-s/GB  (the check: "
          f"{cpu_v - cpu_n:+.2f} CPU-s/GB)")
    print(f"  sha256 alone on one thread: {hash_mb_s:.0f} MB/s = {1e3 / hash_mb_s:.2f} CPU-s/GB")
    print(f"Kinetics-700 ({K700_GB:.0f} GB) per node at {LINK_GB_S:g} GB/s (disk and server assumed to keep "
          f"up): the link alone takes {link_s / 60:.1f} min; with sha256 the copy costs {cpu_v:.2f} CPU-s/GB, "
          f"so {cores_needed:.2f} cores keep up with the link; on one core it caps at "
          f"{1e3 / cpu_v:.0f} MB/s: {one_core_s / 60:.1f} min; on this machine's {len(cores)} cores "
          f"{here_s / 60:.1f} min; {K700_GB * cpu_v / 60:.1f} CPU-min in all")
    if args.json:
        args.json.write_text(json.dumps({
            "machine": machine, "bytes": nbytes, "jobs": args.jobs, "runs": runs,
            "sha256_mb_s_one_thread": round(hash_mb_s, 1),
            "best": {"verify": {"mb_s": mbs_v, "cpu_s_per_gb": cpu_v},
                     "no_verify": {"mb_s": mbs_n, "cpu_s_per_gb": cpu_n}},
            "k700": {"gb": K700_GB, "link_gb_s": LINK_GB_S, "cores_to_keep_up": round(cores_needed, 2),
                     "minutes_link_bound": round(link_s / 60, 2), "minutes_one_core": round(one_core_s / 60, 2),
                     "minutes_this_machine": round(here_s / 60, 2)}}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
