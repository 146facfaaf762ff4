"""`sharding.stage`: a shard set copied from real servers the tests start on 127.0.0.1 (Python's
http.server, and moto's S3 server), with real faults: a same-size corrupted tar on the server, a
missing object, kill -9 mid-copy, a DEST that holds another set."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sharding.build import main as build_main
from sharding.reader import SHA256_CACHE, load_shards
from sharding.stage import LOCK, MANIFEST, PARTIAL, STATE, StageError, is_url, main, manifest_files, stage
from videos import write_video

REPO = Path(__file__).resolve().parents[1]
SECRET = "fake-secret-never-printed"


# ============================================================================ fixtures

@pytest.fixture(scope="session")
def shard_set(tmp_path_factory) -> Path:
    """A real 2-shard set (4 tiny PyAV videos, JPEG frames: the fastest build)."""
    videos = tmp_path_factory.mktemp("stage_videos")
    for i in range(4):
        write_video(videos / f"class{i % 2}" / f"v{i}.mp4", num_frames=20, width=96, height=64)
    out = tmp_path_factory.mktemp("stage_build") / "shards"
    rc = build_main(["--input", str(videos), "--layout", "folders", "--split", "eval", "--out", str(out),
                     "--codec", "jpeg", "--videos-per-shard", "2", "--workers", "0", "--quiet"])
    assert rc == 0
    assert len(json.loads((out / MANIFEST).read_text())["shards"]) == 2
    return out


def set_files(root: Path) -> list[str]:
    """The manifest and every file it names (what an upload of the set holds)."""
    info = json.loads((root / MANIFEST).read_text())
    return [MANIFEST] + [f.name for f in manifest_files(info)]


def upload_copy(shard_set: Path, to: Path) -> Path:
    to.mkdir(parents=True)
    for name in set_files(shard_set):
        shutil.copyfile(shard_set / name, to / name)
    return to


class _Handler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.gets.append(self.path.lstrip("/"))
        super().do_GET()


@contextlib.contextmanager
def http_server(root: Path):
    """Python's ThreadingHTTPServer over `root` in a thread; `.gets` lists the paths requested."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    server.daemon_threads = True
    server.gets = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def served(shard_set, tmp_path):
    """A copy of the set on an HTTP server: (its folder, its URL, the list of GET paths)."""
    root = upload_copy(shard_set, tmp_path / "server")
    with http_server(root) as server:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/", server.gets


@pytest.fixture(scope="module")
def moto_endpoint():
    """moto's S3-compatible server (ThreadedMotoServer) on 127.0.0.1, a free port."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """Fake credentials in the environment; no real AWS config or endpoint is read."""
    for var in [v for v in os.environ if v.startswith(("AWS_", "FSSPEC_"))]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "fake-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def s3_set(shard_set, moto_endpoint, aws_env):
    """The set uploaded with boto3 to a fresh bucket: (s3:// URL, boto3 client, bucket)."""
    import boto3

    client = boto3.client("s3", endpoint_url=moto_endpoint)
    bucket = f"sets-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    for name in set_files(shard_set):
        client.upload_file(str(shard_set / name), bucket, f"k700/{name}")
    return f"s3://{bucket}/k700", client, bucket


def assert_same_set(dest: Path, source: Path) -> None:
    """DEST holds exactly the set: the bytes of every file, nothing partial, and the reader's
    sha256 check accepts it (its cache, written by stage, dropped first: a real re-hash)."""
    for name in set_files(source):
        assert (dest / name).read_bytes() == (source / name).read_bytes(), name
    assert not list(dest.rglob(f"*{PARTIAL}")) and not list(dest.rglob("*.tmp"))
    cache = json.loads((dest / SHA256_CACHE).read_text())
    (dest / SHA256_CACHE).unlink()
    table = load_shards(dest, verify="sha256")
    assert len(table) == json.loads((source / MANIFEST).read_text())["num_samples"]
    assert json.loads((dest / SHA256_CACHE).read_text()) == cache  # what stage recorded is right


def run_stage(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sharding.stage", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


# ============================================================================ round trips

def test_is_url():
    assert is_url("s3://bucket/k700") and is_url("https://host/k700") and is_url("gs://b/x")
    assert not any(is_url(s) for s in ("/data/k700", "file:///data/k700", "shards/k700", "C:/x", ""))


def test_stage_over_http_equals_the_source_and_a_second_call_only_stats(served, shard_set, tmp_path,
                                                                       monkeypatch):
    _, url, gets = served
    dest = tmp_path / "local" / "k700"
    assert stage(url, dest, jobs=3, progress=False) == dest
    assert_same_set(dest, shard_set)
    assert sorted(gets) == sorted(set_files(shard_set))  # each file once

    # a complete DEST: one request (the manifest), a stat per file, nothing hashed
    import sharding.stage as mod

    monkeypatch.setattr(mod._Stager, "_download", None)  # a download or a hash would raise
    monkeypatch.setattr(mod, "sha256_file", None)
    gets.clear()
    before = {p.name: p.stat().st_mtime_ns for p in dest.iterdir() if p.name != LOCK}
    stage(url, dest, progress=False)
    monkeypatch.undo()
    assert gets == [MANIFEST]
    assert {p.name: p.stat().st_mtime_ns for p in dest.iterdir() if p.name != LOCK} == before

    # a file damaged in DEST since (same size, new mtime): fetched again, the set complete again
    tar = json.loads((shard_set / MANIFEST).read_text())["shards"][1]["path"]
    data = bytearray((dest / tar).read_bytes())
    data[1000] ^= 0xFF
    (dest / tar).write_bytes(bytes(data))
    gets.clear()
    stage(url, dest, progress=False)
    assert sorted(gets) == sorted([MANIFEST, tar])
    assert_same_set(dest, shard_set)


def test_stage_over_s3_with_options_and_with_env(s3_set, shard_set, moto_endpoint, tmp_path):
    url, _, _ = s3_set
    # the library, endpoint and credentials as fsspec storage options
    dest = stage(url, tmp_path / "a", jobs=2, progress=False,
                 storage_options={"endpoint_url": moto_endpoint, "key": "fake-key-id", "secret": SECRET})
    assert_same_set(dest, shard_set)
    # the command, endpoint and credentials from the environment (AWS_ENDPOINT_URL: botocore)
    env = {**os.environ, "AWS_ENDPOINT_URL": moto_endpoint}
    res = run_stage(url, tmp_path / "b", "--jobs", "2", env=env)
    assert res.returncode == 0, res.stderr
    assert "fetched" in res.stderr and SECRET not in res.stdout + res.stderr
    assert_same_set(tmp_path / "b", shard_set)


# ============================================================================ faults

def test_corrupted_tar_on_the_server_is_fetched_twice_then_refused_naming_it(served, shard_set, tmp_path,
                                                                             capsys):
    root, url, gets = served
    first, tar = (s["path"] for s in json.loads((root / MANIFEST).read_text())["shards"])
    data = bytearray((root / tar).read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes (a bad upload)
    (root / tar).write_bytes(bytes(data))
    dest = tmp_path / "dest"
    # one job: the tars go in order, so shard 0's is in place before shard 1's fails
    assert main([url, str(dest), "--jobs", "1"]) == 1
    err = capsys.readouterr().err
    assert f"warning: {tar}: sha256" in err and "fetching it again" in err
    msg = err.split("error: ", 1)[1]
    assert f"{url}{tar}" in msg and "sha256" in msg and "twice" in msg and "re-run" in msg
    assert gets.count(tar) == 2
    assert not (dest / tar).exists() and not (dest / MANIFEST).exists()
    assert not list(dest.glob(f"*{PARTIAL}"))
    # fixed on the server: the same command finishes, the files already in place are kept
    in_place = {p.name for p in dest.iterdir()}
    assert first in in_place
    shutil.copyfile(shard_set / tar, root / tar)
    gets.clear()
    assert main([url, str(dest), "--quiet"]) == 0
    assert tar in gets and not in_place & set(gets)
    assert_same_set(dest, shard_set)


def test_missing_object_is_named_over_http_and_s3(served, s3_set, moto_endpoint, tmp_path):
    root, url, _ = served
    table = json.loads((root / MANIFEST).read_text())["shards"][1]["table"]
    (root / table).unlink()
    with pytest.raises(StageError) as e:
        stage(url, tmp_path / "h", progress=False)
    assert f"{url}{table}: not found" in str(e.value) and e.value.exit_code == 1
    assert not (tmp_path / "h" / MANIFEST).exists()

    s3_url, client, bucket = s3_set
    tar = json.loads((root / MANIFEST).read_text())["shards"][0]["path"]
    client.delete_object(Bucket=bucket, Key=f"k700/{tar}")
    with pytest.raises(StageError) as e:
        stage(s3_url, tmp_path / "s", progress=False, storage_options={"endpoint_url": moto_endpoint})
    assert f"{s3_url}/{tar}: not found" in str(e.value)
    assert not (tmp_path / "s" / MANIFEST).exists()

    with pytest.raises(StageError, match=r"_info.json: not found: SRC is not a shard set"):
        stage(url + "no/such/set", tmp_path / "n", progress=False)


def start_paused(args, fault: str) -> subprocess.Popen:
    """`python -m sharding.stage ARGS` paused at a planned point (sharding.faults): the same point
    of the copy on any machine. A watchdog kills it if it never pauses."""
    proc = subprocess.Popen([sys.executable, "-m", "sharding.stage", *map(str, args), "--quiet"], cwd=REPO,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "ZSVIDEO_FAULTS": f"pause:{fault}"})
    watchdog = threading.Timer(120, proc.kill)  # a failsafe, not an assertion
    watchdog.start()
    try:
        for line in proc.stderr:
            if line.startswith("fault: paused at"):
                return proc
        proc.wait()
        raise AssertionError(f"stage ended (exit {proc.returncode}) without pausing at {fault}")
    finally:
        watchdog.cancel()


@pytest.mark.parametrize("point", ["partial", "manifest"])
def test_killed_mid_copy_then_rerun_finishes_the_set(served, shard_set, tmp_path, point):
    _, url, gets = served
    shards = json.loads((shard_set / MANIFEST).read_text())["shards"]
    dest = tmp_path / "dest"
    # one job: the files go in order (tars first), so shard 0's tar is in place when shard 1's starts
    fault = f"stage_partial:{shards[1]['path']}" if point == "partial" else "stage_manifest:0"
    proc = start_paused([url, dest, "--jobs", "1"], fault)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()

    assert not (dest / MANIFEST).exists()  # never a manifest over an incomplete set
    for name in set_files(shard_set)[1:]:  # whatever is under a final name is whole and right
        if (dest / name).exists():
            assert (dest / name).read_bytes() == (shard_set / name).read_bytes(), name
    if point == "partial":
        assert (dest / (shards[1]["path"] + PARTIAL)).exists()
        assert not (dest / shards[1]["path"]).exists()
    else:
        assert all((dest / n).exists() for n in set_files(shard_set)[1:])

    gets.clear()
    res = run_stage(url, dest, "--jobs", "2")
    assert res.returncode == 0, res.stderr
    fetched = set(gets) - {MANIFEST}
    assert shards[0]["path"] not in fetched  # verified before the kill: kept after a stat
    if point == "manifest":
        assert fetched == set()
    assert_same_set(dest, shard_set)


def test_dest_holding_another_set_is_refused(served, shard_set, tmp_path, capsys):
    root, url, _ = served
    dest = stage(url, tmp_path / "dest", progress=False)
    other = json.loads((root / MANIFEST).read_text())
    other["dataset"] = "another"  # a set rebuilt under the same URL
    (root / MANIFEST).write_text(json.dumps(other))
    before = {p.name: p.read_bytes() for p in dest.iterdir() if p.name != LOCK}

    assert main([url, str(dest), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{dest / MANIFEST}: DEST holds another shard set" in err and "delete" in err
    assert {p.name: p.read_bytes() for p in dest.iterdir() if p.name != LOCK} == before

    (dest / MANIFEST).unlink()  # an unfinished staging of the first set: its state still says so
    with pytest.raises(StageError, match="another shard set's staging") as e:
        stage(url, dest, progress=False)
    assert e.value.exit_code == 2 and str(dest / STATE) in str(e.value)

    build_out = tmp_path / "build"  # an unfinished build's folder (no manifest yet)
    build_out.mkdir()
    (build_out / "_build.json").write_text("{}")
    with pytest.raises(StageError, match="a shard build's output folder") as e:
        stage(url, build_out, progress=False)
    assert e.value.exit_code == 2


def test_manifest_paths_outside_the_set_and_missing_packages_are_refused(tmp_path):
    info = {"format_version": 1, "shards": [{"path": "../../etc/x.tar", "index": "a.idx",
                                             "table": "a.samples.json", "bytes": 1, "sha256": "0" * 64}]}
    with pytest.raises(StageError, match="not a file inside the set's folder"):
        manifest_files(info)
    with pytest.raises(StageError, match="format_version"):
        manifest_files({**info, "format_version": 99})
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        with pytest.raises(StageError, match="pip install gcsfs"):
            stage("gs://bucket/k700", tmp_path / "g", progress=False)


def test_two_stages_into_one_dest_take_turns(served, shard_set, tmp_path):
    """Every local rank of a job may call stage on one DEST: the second waits for the first's lock
    (the kernel drops it when the holder is killed), then finishes the set."""
    _, url, _ = served
    shards = json.loads((shard_set / MANIFEST).read_text())["shards"]
    dest = tmp_path / "dest"
    first = start_paused([url, dest, "--jobs", "1"], f"stage_partial:{shards[1]['path']}")
    second = subprocess.Popen([sys.executable, "-m", "sharding.stage", url, str(dest)], cwd=REPO,
                              stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(120, second.kill)  # a failsafe, not an assertion
    watchdog.start()
    try:
        for line in second.stderr:
            if "waiting for another stage" in line:
                assert f"(pid {first.pid})" in line
                break
        assert first.poll() is None and second.poll() is None  # the first holds the lock
        first.send_signal(signal.SIGKILL)
        first.wait()
        first.stderr.close()
        rest = second.stderr.read()
        assert second.wait() == 0, rest
    finally:
        watchdog.cancel()
        second.stderr.close()
    assert_same_set(dest, shard_set)


def test_an_unverified_copy_is_hashed_not_fetched_again(served, shard_set, tmp_path):
    _, url, gets = served
    dest = stage(url, tmp_path / "dest", progress=False, verify=False)  # benchmarks only
    assert not (dest / SHA256_CACHE).exists()
    gets.clear()
    stage(url, dest, progress=False)  # the default: the tars in place are hashed, then recorded
    assert gets == [MANIFEST]
    assert_same_set(dest, shard_set)


def test_a_disk_too_small_is_refused_before_copying_then_resumes(served, shard_set, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small_disk"
    mnt.mkdir()
    need = sum((shard_set / n).stat().st_size for n in set_files(shard_set))
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={need // 2}", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (no CAP_SYS_ADMIN)")
    try:
        _, url, gets = served
        with pytest.raises(StageError, match=r"GB free, the set needs .* free space .* resumes") as e:
            stage(url, mnt / "dest", progress=False)
        assert e.value.exit_code == 3 and gets == [MANIFEST]
        subprocess.run(["mount", "-o", f"remount,size={need * 4}", str(mnt)], check=True)
        assert main([url, str(mnt / "dest"), "--quiet"]) == 0
        assert_same_set(mnt / "dest", shard_set)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_stage_benchmark_runs(shard_set, tmp_path):
    """`python -m benchmarks.stage` over the tiny set (its figures mean nothing at this size)."""
    out = tmp_path / "stage.json"
    res = subprocess.run([sys.executable, "-m", "benchmarks.stage", "--shards", str(shard_set), "--repeat", "1",
                          "--tmp", str(tmp_path), "--json", str(out)], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert "Kinetics-700" in res.stdout and "CPU-s/GB" in res.stdout
    fig = json.loads(out.read_text())
    assert [r["verify"] for r in fig["runs"]] == [True, False]
    assert fig["k700"]["minutes_link_bound"] == pytest.approx(216 / 60, abs=0.01)
    assert [p.name for p in tmp_path.iterdir()] == ["stage.json"]  # its temp folder removed
