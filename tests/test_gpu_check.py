"""The GPU kit's dry run: `python -m benchmarks.gpu_check --device cpu --quick` runs every step
that can run without a GPU, so the kit cannot rot between GPU runs; a step past its time box is
killed (with its children), reported, and the run goes on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent


def test_gpu_check_cpu_quick_dry_run(tmp_path):
    out = tmp_path / "gc"
    # the env step hangs (a planned pause, sharding.faults) and is killed at its 5 s box; the other
    # steps get boxes no machine's speed reaches, so the outcome does not depend on it
    boxes = [a for name in ("model", "data", "decode", "pytest_gpu", "loader", "train") for a in ("--box", f"{name}=900")]
    r = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--out", str(out), "--device", "cpu",
                        "--quick", "--box", "env=5", *boxes, "--budget-s", "6000"], capture_output=True, text=True,
                       cwd=REPO, timeout=1800, env={**os.environ, "ZSVIDEO_FAULTS": "pause:step:env"})
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((out / "gpu_check.json").read_text())
    steps = {s["step"]: s for s in report["steps"]}
    assert list(steps) == ["env", "model", "data", "decode", "pytest_gpu", "loader", "train"]
    assert steps["env"]["status"] == "timeout" and "time box" in steps["env"]["could_not"][0]
    for name in ("model", "data", "decode", "loader", "train"):
        assert steps[name]["status"] == "ok", (name, steps[name])
    assert steps["pytest_gpu"]["status"] == "skipped" and "no GPU" in steps["pytest_gpu"]["could_not"][0]
    assert [(x["memory_format"], x["clips_per_s"] > 0) for x in steps["model"]["runs"]] == [
        ("NCDHW", True), ("channels_last_3d", True)]
    cases = steps["decode"]["cases"]
    assert [c["layout"] for c in cases] == ["ivf", "segments", "eval", "jpeg", "eval_jpeg"]
    assert not any("error" in c for c in cases)
    runs = steps["loader"]["runs"]
    assert {x["format"] for x in runs} == {"vp9", "jpeg"}  # both storage formats, side by side
    assert all(x["clips_per_s"] > 0 and x["cpu_s_per_clip"] > 0 for x in runs)
    assert steps["train"]["runs"] and steps["train"]["runs"][0]["loop_clips_per_s"] > 0
    md = (out / "gpu_check.md").read_text()
    assert "## env: timeout" in md and "## train: ok" in md and "could not: no GPU" in md
    # the killed step left nothing running
    left = [p.info["pid"] for p in psutil.process_iter(["pid", "cmdline"])
            if any(str(out) in a for a in (p.info["cmdline"] or []))]
    assert not left, left


def test_gpu_check_refuses_unknown_steps(tmp_path):
    r = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--out", str(tmp_path), "--device", "cpu",
                        "--box", "modle=3"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 2 and "--box 'modle=3'" in r.stderr and "model" in r.stderr
