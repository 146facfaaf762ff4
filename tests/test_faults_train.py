"""Fault injection for the trainer: torchrun with 2 gloo ranks on tiny shards, the real DALI CPU
graphs and loop. Faults are planned through trainer.faults' ZSVIDEO_FAULTS hook at exact points
(a kill -9 after a step, inside an evaluation, right after a checkpoint write; inf gradients; NaN
weights; a rank that raises), so no test depends on when a signal lands. RELIABILITY.md lists each
fault and its test.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from test_trainer import REPO, TORCHRUN, make_config, shards  # noqa: F401 (shards: the module fixture)

EPOCHS = 3  # 2 steps per epoch: checkpoints at steps 2, 4, 6 (epoch ends) and 5 (every_steps)


def fault_config(shards: Path, out: Path, **over) -> Path:
    """The tiny run of test_trainer with two test sets (a kill can fall between their writes)."""
    sets = [{"name": "unseen", "shards": str(shards / "shards_test"), "generalized": True},
            {"name": "seen", "shards": str(shards / "shards_leak"), "seen": True}]
    return make_config(shards, out, **{"optim.epochs": EPOCHS, "checkpoint.every_steps": 5, "eval.sets": sets,
                                       "eval.clips": 1, "run.deterministic": True, **over})


def train(config: Path, faults: str | None = None, *extra, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "ZSVIDEO_FAULTS": faults} if faults else {k: v for k, v in os.environ.items()
                                                                   if k != "ZSVIDEO_FAULTS"}
    return subprocess.run([*TORCHRUN, str(REPO / "trainer" / "main.py"), str(config), *extra], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, env=env)


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def checkpoint_contents(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    state["config"]["run"].pop("out_dir")  # the one field that differs between the two runs
    return state


def assert_equal_states(a, b, where="checkpoint"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_equal_states(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_states(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def reference(shards, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("faults") / "reference"
    r = train(fault_config(shards, out))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_kill_9_at_three_seeded_points_then_resume_is_bit_identical(reference, shards, tmp_path):  # noqa: F811
    rng = random.Random(14)
    after_step = rng.choice([1, 3])  # between checkpoints: the steps after the last one run twice
    in_eval = rng.choice([2, 4])  # after the first test set's metrics are written
    after_save = rng.choice([s for s in (4, 5, 6) if s > in_eval])
    out = tmp_path / "killed"
    cfg = fault_config(shards, out)
    for fault in (f"kill:after_step:{after_step}", f"kill:eval:{in_eval}", f"kill:saved:{after_save}"):
        r = train(cfg, fault)
        assert r.returncode != 0, f"{fault} did not stop the run: {r.stdout[-2000:]}"
    r = train(cfg)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout
    # every log line once, and the same as the uninterrupted run's
    for name in ("train_log.jsonl", "metrics.jsonl", "samples/rank0.jsonl", "samples/rank1.jsonl"):
        assert lines(out / name) == lines(reference / name), f"{name} after kills at {after_step}/{in_eval}/{after_save}"
    assert [x["step"] for x in lines(out / "train_log.jsonl")] == list(range(1, 2 * EPOCHS + 1))
    final = f"ckpt_{2 * EPOCHS:07d}.pt"
    assert_equal_states(checkpoint_contents(out / "checkpoints" / final),
                        checkpoint_contents(reference / "checkpoints" / final))


def test_inf_gradient_at_a_saving_step_is_skipped_and_never_saved(shards, tmp_path):  # noqa: F811
    out = tmp_path / "inf"
    cfg = fault_config(shards, out, **{"optim.epochs": 1, "checkpoint.every_steps": 1, "eval.sets": []})
    r = train(cfg, "inf_grad:step:2:1")  # on rank 1 only: every rank must skip
    assert r.returncode == 0, r.stderr[-3000:]
    log = lines(out / "train_log.jsonl")
    assert [x.get("skipped", False) for x in log] == [False, True]
    assert "step 2: gradient norm not finite on some rank; update skipped (1 so far)" in r.stdout
    one, two = (torch.load(out / "checkpoints" / f"ckpt_000000{s}.pt", weights_only=True) for s in (1, 2))
    assert two["skipped_steps"] == 1
    assert all(torch.isfinite(v).all() for v in two["model"].values() if v.is_floating_point())
    # the update was skipped: the model exactly as after step 1, BatchNorm's running statistics included
    assert any("running_mean" in k for k in two["model"])
    assert_equal_states(one["model"], two["model"], "model of the skipped step")
    assert_equal_states(one["optimizer"]["state"], two["optimizer"]["state"], "Adam state of the skipped step")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(out / "tb"))
    ea.Reload()
    assert [(e.step, e.value) for e in ea.Scalars("train/skipped_steps")] == [(2, 1.0)]
    # optim.nonfinite_grads: stop ends the run there instead, naming the last good checkpoint
    out2 = tmp_path / "inf_stop"
    cfg2 = fault_config(shards, out2, **{"optim.epochs": 1, "checkpoint.every_steps": 1, "eval.sets": [],
                                         "optim.nonfinite_grads": "stop"})
    r = train(cfg2, "inf_grad:step:2")
    assert r.returncode != 0 and "gradient norm is not finite at step 2" in r.stderr
    assert f"Last good checkpoint: {out2 / 'checkpoints' / 'ckpt_0000001.pt'}" in r.stderr
    assert not (out2 / "checkpoints" / "ckpt_0000002.pt").exists()


def test_non_finite_weights_are_not_saved_and_the_message_names_a_good_checkpoint(shards, tmp_path):  # noqa: F811
    out = tmp_path / "nan"
    cfg = fault_config(shards, out, **{"optim.epochs": 1, "checkpoint.every_steps": 1, "eval.sets": []})
    r = train(cfg, "nan_weights:after_step:2")
    assert r.returncode != 0
    good = out / "checkpoints" / "ckpt_0000001.pt"
    assert "the weights after step 2 are not finite" in r.stderr and f"Last good checkpoint: {good}" in r.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["ckpt_0000001.pt"]


def test_a_rank_that_raises_stops_every_rank_with_its_message(shards, tmp_path):  # noqa: F811
    cfg = fault_config(shards, tmp_path / "raise", **{"eval.sets": []})
    # the bound: the other rank waits in a collective; it must fail too, long before gloo's 30 min
    r = train(cfg, "raise:after_step:1:1", timeout=180)
    assert r.returncode != 0
    assert "injected fault on rank 1 at after_step of step 1" in r.stdout + r.stderr


def test_a_reused_out_dir_with_another_lr_is_refused_with_the_diff(reference, shards):  # noqa: F811
    before = {p: p.read_bytes() for p in [reference / "config.yaml", reference / "train_log.jsonl",
                                         reference / "metrics.jsonl", *sorted((reference / "checkpoints").iterdir())]}
    cfg = fault_config(shards, reference, **{"optim.lr": 0.02})
    r = train(cfg)
    assert r.returncode != 0  # (torchrun's 1; each rank exited 3)
    assert "holds another run" in r.stderr and "optim.lr: 0.01 -> 0.02" in r.stderr
    assert "another run.out_dir" in r.stderr and "run.resume=force" in r.stderr
    # evaluation-only with other settings leaves the training run's config.yaml alone
    r = subprocess.run([sys.executable, "-m", "trainer.evaluate", str(cfg), "eval.clips=2"], capture_output=True,
                       text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    after = {p: p.read_bytes() for p in before}
    metrics = after.pop(reference / "metrics.jsonl")
    assert metrics.startswith(before.pop(reference / "metrics.jsonl"))  # the evaluation appended its rows
    assert after == before and yaml.safe_load((reference / "config.yaml").read_text())["optim"]["lr"] == 0.01
