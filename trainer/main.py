"""Train a zero-shot video classifier.

    torchrun --nproc_per_node=4 trainer/main.py configs/author.yaml [key=value ...]
    python trainer/main.py configs/demo.yaml            # one process
    trainer/main.py CONFIG --eval-only [checkpoint=PATH] = python -m trainer.evaluate CONFIG [checkpoint=PATH]

Reads top to bottom: config -> distributed env -> loaders -> device + process group -> class
embeddings -> model -> optimizer -> resume -> DDP -> loop -> final evaluation. Re-running the same
command resumes from the newest checkpoint in run.out_dir and continues the same sample stream.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

if __name__ == "__main__" and sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    # torchrun/python put trainer/ itself on sys.path: its module names (config, model, ...) must not
    # shadow top-level packages. The project is imported as the installed `trainer` package.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from dali_pipelines.loader import make_train_loader
from trainer.checkpoint import init_backbone, non_finite, resume_run, rng_state, save_checkpoint
from trainer.config import ConfigError, load_config, lr_at
from trainer.distributed import (all_gather_objects, any_rank, broadcast_buffers, device_name, dist_env,
                                 init_process_group, is_dist, pick_device, print0, sum_over_ranks)
from trainer.evaluate import build_test_sets, evaluate_all, make_test_loaders
from trainer.evaluate import main as evaluate_main
from trainer.faults import Signals, TrainingError, inject, run_cli
from trainer.model import autocast_dtype, build_model
from trainer.runlog import StepLog, open_run_dir
from trainer.staging import local_config


def set_determinism(enabled: bool) -> None:
    """`run.deterministic`, as torchvision's reference scripts set it: deterministic kernels only (an
    op without one raises), cuDNN's deterministic algorithms and no cuDNN autotuning."""
    if enabled:
        # cuBLAS GEMMs are reproducible only with a fixed workspace (read when CUDA initialises)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    else:
        torch.backends.cudnn.benchmark = True  # fixed clip shapes: cuDNN autotunes each convolution once


def train_step(fwd, optimizer: torch.optim.Optimizer, clips: torch.Tensor, targets: torch.Tensor,
               amp_dtype: torch.dtype | None = None, grad_clip: float | None = None,
               buffers: list[torch.Tensor] = ()) -> tuple[torch.Tensor, bool]:
    """One step of the paper's objective: autocast forward -> MSE between the predicted unit vectors
    and the class embeddings `targets` (B, D) -> backward -> optional clipping -> Adam.

    The loss and the gradient norm are checked over all ranks before `optimizer.step()`: a
    non-finite loss, or a non-finite gradient norm on any rank (bf16 overflow can give inf
    gradients with a finite loss), leaves the model untouched on every rank: the weights, and
    `buffers` (the model's BatchNorm running statistics, which the forward pass moves) are put back.

    Returns:
        (loss averaged over ranks, whether the optimizer stepped).
    """
    before = [b.clone() for b in buffers]
    with torch.autocast(clips.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        pred = fwd(clips)  # (B, D) unit vectors
    loss = torch.nn.functional.mse_loss(pred.float(), targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if grad_clip:
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    # one collective for both: the loss summed over ranks and the number of ranks with a bad norm
    both = sum_over_ranks(torch.stack([loss.detach(), (~torch.isfinite(norm)).float().to(loss.device)]))
    loss_all = both[0] / (dist.get_world_size() if is_dist() else 1)
    ok = bool(torch.isfinite(loss_all)) and both[1].item() == 0
    if ok:
        optimizer.step()
    else:
        with torch.no_grad():
            for b, old in zip(buffers, before):
                b.copy_(old)
    return loss_all, ok


NONFINITE_FIXES = "Lower optim.lr, set optim.grad_clip, or optim.nonfinite_grads=skip (steps with inf gradients)."


def eval_due(cfg, done: int) -> int | None:
    """Clips per video of the evaluation after epoch `done` (1-based), or None: quick ones every
    eval.every_epochs, the full one after the last epoch."""
    if done == cfg.optim.epochs:
        return cfg.eval.clips
    return cfg.eval.quick_clips if cfg.eval.every_epochs and done % cfg.eval.every_epochs == 0 else None


def nan_loss_error(loss: float, step: int, epoch: int, keys: list[str], last_ckpt, out_dir: Path) -> TrainingError:
    return TrainingError(
        f"loss is {loss} at step {step} (epoch {epoch}); this rank's batch: {keys[:8]}{' ...' if len(keys) > 8 else ''}. "
        f"Last good checkpoint: {last_ckpt} (the newest written before this step, and finite: non-finite weights "
        f"are never saved; older ones are in {out_dir / 'checkpoints'}). Lower optim.lr or set optim.grad_clip, "
        "inspect those samples (python -m dali_pipelines.dump), then re-run the same command to resume from the "
        "newest checkpoint (delete newer ones to go further back).")


def run(config_path: str, overrides: list[str]) -> int:
    # ---------------------------------------------------------------- config and distributed env
    rank, local_rank, world_size = dist_env()
    is_main = rank == 0
    try:
        cfg = load_config(config_path, overrides)
    except ConfigError as e:
        print0(f"error: {e}")
        return 2
    if cfg.data.global_batch % world_size:
        print0(f"error: data.global_batch={cfg.data.global_batch} does not divide over {world_size} ranks; "
               f"pick a multiple of {world_size} (or another --nproc_per_node)")
        return 2
    per_rank = cfg.data.global_batch // world_size
    out_dir = Path(cfg.run.out_dir)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    set_determinism(cfg.run.deterministic)
    torch.manual_seed(cfg.run.seed + rank)
    np.random.seed(cfg.run.seed + rank)
    signals = Signals().install()  # before the loaders fork (see Signals); raises until the step loop

    # ---------------------------------------------------------------- loaders (before CUDA: they fork)
    dev_str = device_name(local_rank)  # counts GPUs through NVML: CUDA stays uninitialised for the fork
    local = local_config(cfg, local_rank)  # URL shard sets: staged to data.stage_dir (trainer/staging.py)
    train_loader = make_train_loader(local.data.train.model_copy(update={"batch_size": per_rank}), rank, world_size,
                                     local_rank, dev_str)
    clip_counts = sorted({cfg.eval.clips, cfg.eval.quick_clips})
    test_loaders = make_test_loaders(local, clip_counts, rank, world_size, local_rank, dev_str)
    device = pick_device(local_rank)
    init_process_group(device, world_size)

    # ---------------------------------------------------------------- classes, model and optimizer
    train_classes = train_loader.table.info["classes"]
    test_sets, train_emb = build_test_sets(cfg, train_classes, test_loaders, rank)
    train_targets = torch.from_numpy(train_emb).to(device)  # (num_classes, D)
    model = build_model(cfg.model.backbone, train_emb.shape[1], cfg.model.dropout, cfg.model.widths,
                        cfg.model.layers).to(device)
    if cfg.model.init:
        print0(f"model.init: backbone weights from {init_backbone(model, cfg.model.init)}")
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    amp_dtype = autocast_dtype(cfg.optim.amp, device)

    # ---------------------------------------------------------------- resume (the same run only)
    last_ckpt, ckpt = resume_run(out_dir, rank, cfg, model, optimizer, train_loader)
    step, skipped, redo_eval = (ckpt["step"], ckpt.get("skipped_steps", 0), ckpt.get("pending_eval")) if ckpt else (0, 0, None)
    writer = open_run_dir(cfg, out_dir, rank, step, redo_eval is not None)

    buffers = list(model.buffers())  # what a skipped step puts back (train_step)
    ddp = DDP(model, device_ids=[local_rank] if device.type == "cuda" else None) if is_dist() else model
    fwd = torch.compile(ddp) if cfg.model.compile else ddp

    def save(epoch: int, pending_eval: int | None = None) -> Path:
        bad = non_finite({"model": model.state_dict(), "optimizer": optimizer.state_dict()["state"]})
        if any_rank(bool(bad), device):  # every rank refuses together
            raise TrainingError(f"the weights after step {step} are not finite ({bad[:3] or 'on another rank'}): "
                                f"not saved. Last good checkpoint: {last_ckpt}. {NONFINITE_FIXES}")
        rngs = all_gather_objects(rng_state())
        # every rank's parameter checksum: DDP keeps them equal, and a checkpoint says so
        checksums = all_gather_objects(float(sum(p.double().sum().item() for p in model.parameters())))
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "epoch": epoch,
                 "rng": rngs, "loader_state": train_loader.state_dict(), "config": cfg.model_dump(mode="json"),
                 "param_checksums": checksums, "train_classes": train_classes, "skipped_steps": skipped,
                 "pending_eval": pending_eval}  # the evaluation that follows: redone if the run dies in it
        path = out_dir / "checkpoints" / f"ckpt_{step:07d}.pt"
        if is_main:
            path = save_checkpoint(out_dir, step, state, cfg.checkpoint.keep_last)
        if is_dist():
            dist.barrier()
        inject("saved", step)
        return path

    def evaluate(clips: int, epoch: int) -> None:
        with signals.immediate():  # an evaluation stops at once: its checkpoint was written before it
            broadcast_buffers(model)  # the model rank 0 checkpointed, on every rank
            evaluate_all(model, test_sets, clips, device, amp_dtype, out_dir, epoch, step, writer,
                         source=f"the weights of step {step} ({last_ckpt})")
        model.train()

    # ---------------------------------------------------------------- the loop
    log = StepLog(cfg, out_dir, rank, writer, device, train_loader.steps_per_epoch * cfg.optim.epochs, skipped)
    print0(f"training: {world_size} ranks x {per_rank} clips, {train_loader.steps_per_epoch} steps/epoch, "
           f"{cfg.optim.epochs} epochs, device {device}, run {out_dir}")
    step0 = step
    if redo_eval:  # the run stopped in (or after) the evaluation that follows its checkpoint
        evaluate(redo_eval, ckpt["epoch"])
    with signals.deferred():
        for epoch in range(train_loader.epoch, cfg.optim.epochs):
            lr = lr_at(cfg.optim, epoch)
            for g in optimizer.param_groups:
                g["lr"] = lr
            model.train()
            for batch in log.timed(train_loader):
                clips = batch["clips"]
                if cfg.model.channels_last:
                    clips = clips.contiguous(memory_format=torch.channels_last_3d)
                hook = inject("step", step + 1, model)
                loss, stepped = train_step(fwd, optimizer, clips, train_targets[batch["labels"]], amp_dtype,
                                           cfg.optim.grad_clip, buffers)
                if hook is not None:
                    hook.remove()
                if not torch.isfinite(loss):
                    raise nan_loss_error(loss.item(), step + 1, epoch + 1, train_loader.keys(batch["index"]),
                                         last_ckpt, out_dir)
                if not stepped and cfg.optim.nonfinite_grads == "stop":
                    raise TrainingError(f"the gradient norm is not finite at step {step + 1} (optim.nonfinite_grads: stop); "
                                        f"not applied. Last good checkpoint: {last_ckpt}. {NONFINITE_FIXES}")
                skipped += not stepped
                step += 1
                log.step(step, epoch, loss.item(), lr, train_loader.keys(batch["index"]), skipped)
                inject("after_step", step, model)
                if step % cfg.checkpoint.every_steps == 0:
                    last_ckpt = save(train_loader.epoch)
                if any_rank(signals.signum is not None, device):
                    last_ckpt = save(train_loader.epoch)
                    print0(f"stopped by signal at step {step}; checkpoint {last_ckpt}. Re-run the same command to resume.")
                    return 128 + (signals.signum or signal.SIGTERM)
            due = eval_due(cfg, epoch + 1) if test_sets or epoch + 1 == cfg.optim.epochs else None
            last_ckpt = save(epoch + 1, due)
            if due:
                evaluate(due, epoch + 1)
    print0(f"trained {step - step0} steps in {log.minutes():.1f} min" + (f", {skipped} updates skipped" if skipped else ""))
    if writer is not None:
        writer.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--eval-only" in argv or any(a.startswith("--checkpoint=") for a in argv):
        # evaluation has one command line, trainer.evaluate's: --checkpoint=PATH is its checkpoint=PATH
        return evaluate_main([a[2:] if a.startswith("--checkpoint=") else a for a in argv if a != "--eval-only"])
    if not argv or argv[0].startswith("-"):
        print("usage: trainer/main.py CONFIG [key=value ...] [--eval-only [checkpoint=PATH]]", file=sys.stderr)
        return 2
    return run_cli(run, argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
