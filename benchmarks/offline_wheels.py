"""`python -m benchmarks.offline_wheels --out DIR`: the GPU dependencies as a local wheel folder.

GPU nodes often have no package index. This fills DIR/wheels, on a machine that has one, with the
wheels a GPU image (torch + torchvision + numpy + CUDA) usually lacks, for a given Python version and
platform: NVIDIA DALI for CUDA 12 and for CUDA 13 with what DALI needs besides (nvImageCodec,
nvCOMP, its pure-Python helpers), and the project's own imports (PyAV, pydantic, webdataset,
fastText, ...). Versions are the ones this checkout is installed with where it has them. Then it
packs the folder into one tar split into parts of at most `--part-mb` MB (56 by default, for
transports with a 64 MiB limit), with SHA256SUMS. On the node:

    cat wheels.tar.part* > wheels.tar && sha256sum -c SHA256SUMS && tar xf wheels.tar
    python -m pip install --no-index --find-links wheels -r wheels/requirements-cuda13.txt  # or -cuda12

Nothing is resolved: each wheel is fetched alone (`pip download --no-deps --only-binary=:all:`), so
a node installs exactly these files next to what its image has. `--dry-run` prints the commands.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import subprocess
import sys
import tarfile
from pathlib import Path

# DALI 2.4's own requirements (its wheel metadata), per CUDA major version.
DALI = {
    "12": ["nvidia-dali-cuda120", "nvidia-nvimgcodec-cu12>=0.9,<0.10", "nvidia-libnvcomp-cu12==5.3.0.16",
           "nvidia-nvjpeg-cu12", "nvidia-nvjpeg2k-cu12", "nvidia-nvtiff-cu12"],
    "13": ["nvidia-dali-cuda130", "nvidia-nvimgcodec-cu13>=0.9,<0.10", "nvidia-libnvcomp-cu13==5.3.0.16",
           "nvidia-nvjpeg2k-cu13", "nvidia-nvtiff-cu13"],
}
DALI_HELPERS = ["astunparse", "gast", "optree", "nvtx", "makefun", "libcst"]
# The project's imports that GPU images (NGC PyTorch, the pytorch/pytorch images) do not ship.
PROJECT = ["av", "pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions",
           "webdataset", "braceexpand", "fasttext-numpy2", "pybind11", "psutil", "pyyaml"]
# Dependencies of the above that most images have: in the folder for pip to fall back on, but not in
# the requirements files (so an image's own copy is kept). numpy is assumed (torchvision needs it).
FALLBACKS = ["six", "packaging<=26.3", "wheel", "setuptools"]
PLATFORMS = {"x86_64": ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                        "manylinux2014_x86_64"],
             "aarch64": ["manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"]}


def pinned(spec: str, dali_version: str) -> str:
    """A requirement pinned to this checkout's installed version when it has no pin of its own.

    >>> pinned("nvidia-dali-cuda130", "2.4.0")
    'nvidia-dali-cuda130==2.4.0'
    >>> pinned("nvidia-libnvcomp-cu13==5.3.0.16", "2.4.0")
    'nvidia-libnvcomp-cu13==5.3.0.16'
    """
    if any(c in spec for c in "<>=~"):
        return spec
    if spec.startswith("nvidia-dali-"):
        return f"{spec}=={dali_version}"
    try:
        return f"{spec}=={importlib.metadata.version(spec)}"
    except importlib.metadata.PackageNotFoundError:
        return spec


def requirement_sets(cudas: list[str], dali_version: str, extra: list[str]) -> dict[str, list[str]]:
    """{cuda major: pinned requirements} for the requirements-cudaNN.txt files."""
    unknown = [c for c in cudas if c not in DALI]
    if unknown:
        raise ValueError(f"--cuda {','.join(unknown)}: DALI wheels exist for CUDA {', '.join(DALI)}")
    common = [pinned(s, dali_version) for s in DALI_HELPERS + PROJECT + extra]
    return {c: [pinned(s, dali_version) for s in DALI[c]] + common for c in cudas}


def download_command(spec: str, dest: Path, python: str, arch: str) -> list[str]:
    """The `pip download` of one wheel, for another interpreter and platform than this one."""
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", python, "--implementation", "cp", "-d", str(dest)]
    for plat in PLATFORMS[arch]:
        cmd += ["--platform", plat]
    return cmd + [spec]


def pack(wheels: Path, out: Path, part_bytes: int) -> list[Path]:
    """Tar `wheels` (as `wheels/...`) into out/wheels.tar.partNN of at most `part_bytes` each and
    write out/SHA256SUMS (of wheels.tar, for after the join). Returns the parts."""
    tar_path = out / "wheels.tar"
    with tarfile.open(tar_path, "w") as tar:  # uncompressed: wheels are zip files already
        tar.add(wheels, arcname="wheels")
    for old in out.glob("wheels.tar.part*"):
        old.unlink()
    parts, digest = [], hashlib.sha256()
    with open(tar_path, "rb") as f:
        while chunk := f.read(part_bytes):
            digest.update(chunk)
            parts.append(out / f"wheels.tar.part{len(parts):02d}")
            parts[-1].write_bytes(chunk)
    (out / "SHA256SUMS").write_text(f"{digest.hexdigest()}  wheels.tar\n")
    tar_path.unlink()
    return parts


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.offline_wheels", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="DIR: wheels/, the parts and SHA256SUMS go here")
    p.add_argument("--python", default="3.12", help="the node's Python version (e.g. 3.10, 3.12)")
    p.add_argument("--arch", choices=sorted(PLATFORMS), default="x86_64")
    p.add_argument("--cuda", default="12,13", help="comma list of CUDA major versions to fetch DALI for")
    p.add_argument("--dali-version", default=None, help="default: the installed DALI's (else 2.4.0)")
    p.add_argument("--part-mb", type=float, default=56.0, help="largest part, in MB (10^6 bytes)")
    p.add_argument("--extra", nargs="*", default=[], help="more packages the node lacks")
    p.add_argument("--dry-run", action="store_true", help="print the pip commands, download nothing")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dali_version = args.dali_version or next(
        (v for d in ("nvidia-dali-cuda120", "nvidia-dali-cuda130")
         if (v := _installed(d))), "2.4.0")
    try:
        sets = requirement_sets(args.cuda.split(","), dali_version, args.extra)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    wheels = args.out / "wheels"
    specs = list(dict.fromkeys([s for reqs in sets.values() for s in reqs]
                               + [pinned(s, dali_version) for s in FALLBACKS]))
    if args.dry_run:
        for spec in specs:
            print(" ".join(download_command(spec, wheels, args.python, args.arch)))
        return 0
    wheels.mkdir(parents=True, exist_ok=True)
    failed = []
    for spec in specs:
        r = subprocess.run(download_command(spec, wheels, args.python, args.arch), capture_output=True, text=True)
        if r.returncode:
            failed.append(spec)
            print(f"warning: no wheel for {spec} (Python {args.python}, {args.arch}): "
                  f"{r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}", file=sys.stderr)
    for cuda, reqs in sets.items():
        names = [s for s in reqs if s not in failed]
        (wheels / f"requirements-cuda{cuda}.txt").write_text("\n".join(names) + "\n")
    files = sorted(wheels.glob("*.whl"))
    for f in files:
        print(f"{f.stat().st_size / 1e6:8.1f} MB  {f.name}")
    total = sum(f.stat().st_size for f in files)
    parts = pack(wheels, args.out, int(args.part_mb * 1e6))
    print(f"{len(files)} wheels, {total / 1e6:.1f} MB -> {len(parts)} parts of at most {args.part_mb:g} MB "
          f"under {args.out}" + (f"; missing: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _installed(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
