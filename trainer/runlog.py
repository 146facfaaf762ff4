"""What a training run writes as it goes, besides checkpoints: `train_log.jsonl` (rank 0, one line
per step), `samples/rank<r>.jsonl` (every rank, with run.sample_log), TensorBoard scalars and the
console line every run.log_every steps.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from trainer.config import TrainConfig
from trainer.distributed import print0


class StepLog:
    """Per-step logging of one training run (every rank constructs one; rank 0 writes the shared files)."""

    def __init__(self, cfg: TrainConfig, out_dir: Path, rank: int, writer, device: torch.device, total_steps: int):
        self.cfg, self.out_dir, self.rank, self.writer, self.device = cfg, out_dir, rank, writer, device
        self.total_steps = total_steps
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

    def step(self, step: int, epoch: int, loss: float, lr: float, keys: list[str]) -> None:
        """Record finished step `step` (1-based) of 0-based `epoch`; `keys` are this rank's samples."""
        self.n_window += 1
        if self.cfg.run.sample_log:
            with open(self.out_dir / "samples" / f"rank{self.rank}.jsonl", "a") as f:
                f.write(json.dumps({"step": step, "keys": keys}) + "\n")
        if self.rank == 0:
            with open(self.out_dir / "train_log.jsonl", "a") as f:
                f.write(json.dumps({"step": step, "epoch": epoch + 1, "loss": loss, "lr": lr}) + "\n")
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
