"""What a training run writes as it goes, besides checkpoints: `train_log.jsonl` (rank 0, one line
per step), `samples/rank<r>.jsonl` (every rank, with run.sample_log), TensorBoard scalars and the
console line every run.log_every steps; and how they are cut back to a checkpoint on resume.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
import yaml

from trainer.config import TrainConfig
from trainer.distributed import print0


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines log. A torn last line (the process was killed mid-write) is
    skipped with a warning; a bad line elsewhere is an error naming it."""
    lines = path.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i != len(lines) - 1:
                raise ValueError(f"{path} line {i + 1} is not JSON ({e}): the file is damaged") from None
            print(f"warning: {path}: skipping a torn last line (the run was killed while writing it)",
                  file=sys.stderr)
    return out


def cut_back(path: Path, keep) -> int:
    """Rewrite a JSON-lines log keeping the records for which `keep(record)` is true (and dropping
    a torn last line), atomically. Returns the number of records dropped."""
    if not path.is_file():
        return 0
    records = read_jsonl(path)
    kept = [r for r in records if keep(r)]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)
    return len(records) - len(kept)


def resume_logs(out_dir: Path, rank: int, step: int, redo_eval: bool) -> None:
    """Cut this rank's logs back to what checkpoint `step` has seen: the steps after it are about to
    be run again (a kill -9 after the checkpoint would otherwise leave them twice). With `redo_eval`
    the evaluation at `step` is run again too, so its metrics lines go as well."""
    cut_back(out_dir / "samples" / f"rank{rank}.jsonl", lambda r: r["step"] <= step)
    if rank == 0:
        dropped = cut_back(out_dir / "train_log.jsonl", lambda r: r["step"] <= step)
        dropped += cut_back(out_dir / "metrics.jsonl", lambda r: r["step"] < step or (r["step"] == step and not redo_eval))
        if dropped:
            print0(f"resume: dropped {dropped} log lines written after the checkpoint of step {step}")


def open_run_dir(cfg: TrainConfig, out_dir: Path, rank: int, step: int, redo_eval: bool):
    """Make the run folder ready for training from `step` (0: a fresh run): logs cut back to it
    (`resume_logs`), config.yaml written and a TensorBoard writer that drops the events of later
    steps (rank 0; None on the others)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.run.sample_log:
        (out_dir / "samples").mkdir(exist_ok=True)
    resume_logs(out_dir, rank, step, redo_eval)
    if rank != 0:
        return None
    (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(str(out_dir / "tb"), purge_step=step if redo_eval else step + 1)


class StepLog:
    """Per-step logging of one training run (every rank constructs one; rank 0 writes the shared files)."""

    def __init__(self, cfg: TrainConfig, out_dir: Path, rank: int, writer, device: torch.device, total_steps: int,
                 skipped: int = 0):
        self.cfg, self.out_dir, self.rank, self.writer, self.device = cfg, out_dir, rank, writer, device
        self.total_steps = total_steps
        self.skipped = skipped  # steps skipped so far (a resumed run's stored count)
        self.t_start = time.time()
        self._reset()

    def _reset(self) -> None:
        self.t_window, self.wait_window, self.n_window = time.time(), 0.0, 0

    def timed(self, loader):
        """The loader's batches, adding the time spent waiting for each to the current window."""
        batches = iter(loader)
        while True:
            t_wait = time.time()
            batch = next(batches, None)
            if batch is None:
                return
            self.wait_window += time.time() - t_wait
            yield batch

    def step(self, step: int, epoch: int, loss: float, lr: float, keys: list[str], skipped: int = 0) -> None:
        """Record finished step `step` (1-based) of 0-based `epoch`; `keys` are this rank's samples;
        `skipped` is the run's count of steps whose update was skipped (non-finite gradients)."""
        self.n_window += 1
        if self.cfg.run.sample_log:
            with open(self.out_dir / "samples" / f"rank{self.rank}.jsonl", "a") as f:
                f.write(json.dumps({"step": step, "keys": keys}) + "\n")
        if self.rank == 0:
            rec = {"step": step, "epoch": epoch + 1, "loss": loss, "lr": lr}
            if skipped > self.skipped:  # this step's update was skipped
                rec["skipped"] = True
                print0(f"step {step}: gradient norm not finite on some rank; update skipped ({skipped} so far)")
                self.writer.add_scalar("train/skipped_steps", skipped, step)
            with open(self.out_dir / "train_log.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
        self.skipped = skipped
        if step % self.cfg.run.log_every:
            return
        if self.rank == 0:
            dt = time.time() - self.t_window
            clips_s = self.n_window * self.cfg.data.global_batch / dt
            eta = (self.total_steps - step) * dt / self.n_window
            w = self.writer
            w.add_scalar("train/loss", loss, step)
            w.add_scalar("train/lr", lr, step)
            w.add_scalar("train/clips_per_s", clips_s, step)
            w.add_scalar("train/data_wait_fraction", self.wait_window / dt, step)
            if self.device.type == "cuda":
                w.add_scalar("train/gpu_mem_gb", torch.cuda.max_memory_allocated() / 2**30, step)
            print0(f"epoch {epoch + 1}/{self.cfg.optim.epochs} step {step}/{self.total_steps} loss {loss:.5f} "
                   f"lr {lr:.1e} {clips_s:.1f} clips/s data-wait {100 * self.wait_window / dt:.0f}% "
                   f"ETA {eta / 60:.1f} min")
        self._reset()

    def minutes(self) -> float:
        """Minutes since this log was created (the run's training time in this process)."""
        return (time.time() - self.t_start) / 60
