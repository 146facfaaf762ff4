"""The offline wheel folder helper, without downloading: the commands it would run, and the split
into transport-sized parts that join back to the same tar."""

from __future__ import annotations

import hashlib
import io
import tarfile

import numpy as np
import pytest

from benchmarks import offline_wheels as ow


def test_dry_run_fetches_both_dali_cudas_for_the_given_python(capsys):
    assert ow.main(["--out", "unused", "--python", "3.10", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    targets = [line.split()[-1] for line in lines]
    assert any(t.startswith("nvidia-dali-cuda120==") for t in targets)
    assert any(t.startswith("nvidia-dali-cuda130==") for t in targets)
    assert "nvidia-libnvcomp-cu13==5.3.0.16" in targets and any(t.startswith("av==") for t in targets)
    assert any(t.startswith("six") for t in targets)  # a fallback: fetched, not required
    assert len(targets) == len(set(targets))  # shared packages once
    for line in lines:
        assert "--no-deps" in line and "--only-binary=:all:" in line and "--python-version 3.10" in line
        assert "--platform manylinux_2_28_x86_64" in line


def test_unknown_cuda_is_refused(capsys):
    assert ow.main(["--out", "unused", "--cuda", "11", "--dry-run"]) == 2
    assert "DALI wheels exist for CUDA 12, 13" in capsys.readouterr().err


def test_parts_are_at_most_the_limit_and_join_to_the_tar(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    rng = np.random.default_rng(0)
    files = {f"pkg{i}-1.0-py3-none-any.whl": rng.bytes(n) for i, n in enumerate((2500, 10, 4000))}
    for name, data in files.items():
        (wheels / name).write_bytes(data)
    (wheels / "requirements-cuda13.txt").write_text("pkg0\n")
    out = tmp_path / "out"
    out.mkdir()
    parts = ow.pack(wheels, out, part_bytes=1000)
    sizes = [p.stat().st_size for p in parts]
    assert len(parts) > 6 and max(sizes) <= 1000 and sorted(p.name for p in parts) == [p.name for p in parts]
    joined = b"".join(p.read_bytes() for p in parts)
    digest, name = (out / "SHA256SUMS").read_text().split()
    assert name == "wheels.tar" and digest == hashlib.sha256(joined).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(joined)) as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    assert got == {f"wheels/{k}": v for k, v in files.items()} | {"wheels/requirements-cuda13.txt": b"pkg0\n"}
    assert not (out / "wheels.tar").exists()


def test_pinned_keeps_explicit_pins():
    assert ow.pinned("nvidia-nvimgcodec-cu13>=0.9,<0.10", "2.4.0") == "nvidia-nvimgcodec-cu13>=0.9,<0.10"
    assert ow.pinned("nvidia-dali-cuda120", "2.4.1") == "nvidia-dali-cuda120==2.4.1"
    assert ow.pinned("surely-not-installed-pkg", "2.4.0") == "surely-not-installed-pkg"
