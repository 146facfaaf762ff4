"""Train a zero-shot video classifier.

    torchrun --nproc_per_node=4 trainer/main.py configs/author.yaml [key=value ...] [--eval-only]
    python trainer/main.py configs/demo.yaml            # one process

Reads top to bottom: config -> distributed env -> loaders -> device + process group -> class
embeddings -> model -> optimizer -> resume -> DDP -> loop -> final evaluation. Re-running the same
command resumes from the newest checkpoint in run.out_dir and continues the same sample stream.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

if __name__ == "__main__" and sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    # torchrun/python put trainer/ itself on sys.path: its module names (config, model, ...) must not
    # shadow top-level packages. The project is imported as the installed `trainer` package.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel as DDP

from dali_pipelines.loader import make_eval_loader, make_train_loader
from trainer.checkpoint import backbone_state_from, latest_checkpoint, load_checkpoint, save_checkpoint
from trainer.config import ConfigError, TrainConfig, load_config, lr_at
from trainer.distributed import (any_rank, broadcast_object, dist_env, init_process_group, is_dist,
                                 mean_over_ranks, pick_device, print0, all_gather_objects)
from sharding.reader import ShardError, load_shards
from trainer.embeddings import MissingWordsError, StaleCacheError, embeddings_for
from trainer.evaluate import TestSet, evaluate_set, write_results
from trainer.model import build_model


class TrainingError(RuntimeError):
    """A fault that stops the run with what to do next (NaN loss, bad data, overlapping classes)."""


def eval_train_classes(train_shards: str, checkpoint: str | Path | None) -> list[dict]:
    """The training classes for an evaluation-only run: from the training shards' manifest when
    they are here, else from the checkpoint (ours store them; `trainer.import_checkpoint` writes the
    paper's 664 Kinetics classes), so a checkpoint can be evaluated without its training data.

    Raises:
        TrainingError: neither source has them, naming both.
    """
    try:
        return load_shards(train_shards).info["classes"]
    except ShardError as e:
        reason = str(e)
    if checkpoint is not None:
        classes = load_checkpoint(checkpoint).get("train_classes")
        if classes:
            print0(f"training classes: {len(classes)} from {checkpoint} (no training shards: {reason})")
            return classes
    raise TrainingError(f"evaluation needs the training classes (overlap check, generalized accuracy): "
                        f"the training shards cannot be read ({reason}) and the checkpoint "
                        f"{checkpoint} lists none; point data.train.shards at them, or re-import the "
                        "checkpoint with python -m trainer.import_checkpoint --train-classes FILE")


def check_no_overlap(train_classes: list[dict], test_name: str, test_classes: list[dict]) -> None:
    """A zero-shot test set must not contain training classes (by raw name or embedded text)."""
    train_keys = {c["name"].lower() for c in train_classes} | {c["text"] for c in train_classes}
    clash = [c["name"] for c in test_classes if c["name"].lower() in train_keys or c["text"] in train_keys]
    if clash:
        raise TrainingError(
            f"test set '{test_name}' shares {len(clash)} classes with the training set ({clash[:5]}"
            f"{' ...' if len(clash) > 5 else ''}): that is not zero-shot. Rebuild the training shards with "
            "--exclude-classes (python -m trainer.class_overlap makes the list), or mark the set `seen: true`.")


def embed_all(cfg: TrainConfig, texts: list[str], rank: int) -> np.ndarray:
    """Class embeddings of `texts`, computed on rank 0 (one read of the vectors file) and broadcast."""
    emb = None
    if rank == 0:
        cache = cfg.embeddings.cache or str(Path(cfg.run.out_dir) / "class_embeddings.npz")
        emb = embeddings_for(cfg.embeddings, texts, cache)  # either kind; the head's size follows its dim
    return broadcast_object(emb)


def rng_state() -> dict:
    # numpy's state as tensors and numbers, so checkpoints load with weights_only=True
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def run(config_path: str, overrides: list[str], eval_only: bool = False, checkpoint: str | None = None) -> int:
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
    torch.manual_seed(cfg.run.seed + rank)
    np.random.seed(cfg.run.seed + rank)

    # SIGTERM/SIGINT only raise a flag: the loop checkpoints and exits at the next step. Installed
    # before the loaders fork their reader processes (py_workers > 0), which inherit it: a signal to
    # the whole process group must not kill a reader mid-batch.
    stop = {"signal": None}

    def on_signal(signum, frame):
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    # ---------------------------------------------------------------- loaders (before CUDA: they fork)
    device_type = "cuda" if torch.cuda.is_available() else "cpu"  # does not initialise CUDA
    dev_str = f"cuda:{local_rank}" if device_type == "cuda" else "cpu"
    train_data = cfg.data.train.model_copy(update={"batch_size": per_rank})
    train_loader = make_train_loader(train_data, rank, world_size, local_rank, dev_str) if not eval_only else None
    test_loaders = []
    for ts in cfg.eval.sets:
        clip_counts = sorted({cfg.eval.clips} | ({cfg.eval.quick_clips} if not eval_only else set()))
        test_loaders.append({n: make_eval_loader(cfg.eval.data(ts, cfg.data.train, n), rank, world_size,
                                                 local_rank, dev_str) for n in clip_counts})

    device = pick_device(local_rank)
    init_process_group(device, world_size)

    # ---------------------------------------------------------------- classes and their embeddings
    train_classes = (train_loader.table.info["classes"] if train_loader
                     else eval_train_classes(cfg.data.train.shards, checkpoint or latest_checkpoint(out_dir)))
    test_classes = [next(iter(loaders.values())).classes for loaders in test_loaders]
    for ts, classes in zip(cfg.eval.sets, test_classes):
        if not ts.seen:
            check_no_overlap(train_classes, ts.name, classes)
    texts = [c["text"] for c in train_classes] + [c["text"] for cl in test_classes for c in cl]
    all_emb = embed_all(cfg, list(dict.fromkeys(texts)), rank)
    row = {t: i for i, t in enumerate(dict.fromkeys(texts))}
    train_emb = all_emb[[row[c["text"]] for c in train_classes]]
    test_sets = []
    for ts, loaders, classes in zip(cfg.eval.sets, test_loaders, test_classes):
        own = {c["text"] for c in classes}
        # generalized: compete with every other class of the run (training and all test sets)
        extra = [i for t, i in row.items() if t not in own]
        test_sets.append(TestSet(ts.name, loaders, [c["name"] for c in classes], [c["text"] for c in classes],
                                 all_emb[[row[c["text"]] for c in classes]],
                                 all_emb[extra] if ts.generalized else None, ts.seen))
    train_targets = torch.from_numpy(train_emb).to(device)  # (num_classes, D)

    # ---------------------------------------------------------------- model and optimizer
    model = build_model(cfg.model.backbone, train_emb.shape[1], cfg.model.dropout, cfg.model.widths,
                        cfg.model.layers).to(device)
    if cfg.model.init:
        init_path = Path(cfg.model.init)
        if init_path.is_dir():  # a run folder (two-stage recipes): its newest checkpoint
            init_path = latest_checkpoint(init_path)
            if init_path is None:
                raise TrainingError(f"model.init {cfg.model.init} is a folder without checkpoints/ckpt_*.pt; "
                                    "run that stage first or point model.init at a checkpoint file")
        missing, unexpected = model.backbone.load_state_dict(backbone_state_from(init_path), strict=False)
        if missing or unexpected:
            raise TrainingError(f"model.init {init_path}: missing {missing[:5]}, unexpected {unexpected[:5]}")
        print0(f"model.init: backbone weights from {init_path}")
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    amp_dtype = torch.bfloat16 if (cfg.optim.amp == "bf16" and device.type == "cuda") else None

    # ---------------------------------------------------------------- resume
    step, start_epoch = 0, 0
    ckpt_path = Path(checkpoint) if checkpoint else latest_checkpoint(out_dir)
    if ckpt_path is not None:
        ckpt = load_checkpoint(ckpt_path)
        model.load_state_dict(ckpt["model"])
        if not eval_only:
            optimizer.load_state_dict(ckpt["optimizer"])
            train_loader.load_state_dict(ckpt["loader_state"])
            set_rng_state(ckpt["rng"][rank] if rank < len(ckpt["rng"]) else ckpt["rng"][0])
        step, start_epoch = ckpt["step"], ckpt["epoch"]
        print0(f"{'loaded' if eval_only else 'resumed from'} {ckpt_path} (step {step}, epoch {start_epoch})")
    elif eval_only:
        print0(f"error: no checkpoint in {out_dir / 'checkpoints'} to evaluate; pass checkpoint=PATH")
        return 2

    writer = None
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.run.sample_log:
        (out_dir / "samples").mkdir(exist_ok=True)
    if is_main:
        (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(out_dir / "tb"))

    ddp = DDP(model, device_ids=[local_rank] if device.type == "cuda" else None) if is_dist() else model
    fwd = torch.compile(ddp) if cfg.model.compile else ddp

    def evaluate(clips: int, epoch: int) -> None:
        for ts in test_sets:
            rows, arrays = evaluate_set(model, ts, clips, device, amp_dtype)
            if is_main:
                write_results(out_dir, rows, arrays, ts.name, epoch, step, writer)
                for r in rows:
                    print0(f"eval {ts.name:>12} {r['protocol']:>16} clips {clips:2d}: top1 {r['top1']:6.2f}  "
                           f"top5 {r['top5']:6.2f}  ({r['n_videos']} videos, {r['n_classes']} classes)")

    def save(epoch: int) -> Path:
        rngs = all_gather_objects(rng_state())
        # every rank's parameter checksum: DDP keeps them equal, and a checkpoint says so
        checksums = all_gather_objects(float(sum(p.double().sum().item() for p in model.parameters())))
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                 "epoch": epoch, "rng": rngs, "loader_state": train_loader.state_dict(),
                 "config": cfg.model_dump(mode="json"), "param_checksums": checksums,
                 "train_classes": train_classes}
        path = out_dir / "checkpoints" / f"ckpt_{step:07d}.pt"
        if is_main:
            path = save_checkpoint(out_dir, step, state, cfg.checkpoint.keep_last)
        if is_dist():
            dist.barrier()
        return path

    if eval_only:
        evaluate(cfg.eval.clips, start_epoch)
        return 0

    # ---------------------------------------------------------------- the loop
    steps_per_epoch = train_loader.steps_per_epoch
    total_steps = cfg.optim.epochs * steps_per_epoch
    print0(f"training: {world_size} ranks x {per_rank} clips, {steps_per_epoch} steps/epoch, "
           f"{cfg.optim.epochs} epochs, device {device}, run {out_dir}")
    last_ckpt = latest_checkpoint(out_dir)
    t_window, wait_window, n_window = time.time(), 0.0, 0
    t0_run, step0 = time.time(), step
    for epoch in range(train_loader.epoch, cfg.optim.epochs):
        lr = lr_at(cfg.optim, epoch)
        for g in optimizer.param_groups:
            g["lr"] = lr
        model.train()
        batches = iter(train_loader)
        while True:
            t_wait = time.time()
            batch = next(batches, None)
            if batch is None:
                break
            wait_window += time.time() - t_wait
            clips, labels = batch["clips"], batch["labels"]
            if cfg.model.channels_last:
                clips = clips.contiguous(memory_format=torch.channels_last_3d)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                pred = fwd(clips)  # (B, D) unit vectors
            loss = torch.nn.functional.mse_loss(pred.float(), train_targets[labels])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            loss_all = mean_over_ranks(loss.detach())
            if not torch.isfinite(loss_all):
                keys = train_loader.keys(batch["index"])
                raise TrainingError(
                    f"loss is {loss_all.item()} at step {step + 1} (epoch {epoch + 1}); this rank's batch: "
                    f"{keys[:8]}{' ...' if len(keys) > 8 else ''}. Last good checkpoint: {last_ckpt} (the newest "
                    f"written before this step; older ones are in {out_dir / 'checkpoints'}). Lower optim.lr or "
                    "set optim.grad_clip, inspect those samples (python -m dali_pipelines.dump), then re-run the "
                    "same command to resume from the newest checkpoint (delete newer ones to go further back).")
            optimizer.step()
            step += 1
            n_window += 1
            if cfg.run.sample_log:
                with open(out_dir / "samples" / f"rank{rank}.jsonl", "a") as f:
                    f.write(json.dumps({"step": step, "keys": train_loader.keys(batch["index"])}) + "\n")
            if is_main:
                with open(out_dir / "train_log.jsonl", "a") as f:
                    f.write(json.dumps({"step": step, "epoch": epoch + 1, "loss": loss_all.item(), "lr": lr}) + "\n")
            if step % cfg.run.log_every == 0 and is_main:
                dt = time.time() - t_window
                clips_s = n_window * cfg.data.global_batch / dt
                eta = (total_steps - step) * dt / n_window
                writer.add_scalar("train/loss", loss_all.item(), step)
                writer.add_scalar("train/lr", lr, step)
                writer.add_scalar("train/clips_per_s", clips_s, step)
                writer.add_scalar("train/data_wait_fraction", wait_window / dt, step)
                if device.type == "cuda":
                    writer.add_scalar("train/gpu_mem_gb", torch.cuda.max_memory_allocated() / 2**30, step)
                print0(f"epoch {epoch + 1}/{cfg.optim.epochs} step {step}/{total_steps} loss {loss_all.item():.5f} "
                       f"lr {lr:.1e} {clips_s:.1f} clips/s data-wait {100 * wait_window / dt:.0f}% "
                       f"ETA {eta / 60:.1f} min")
            if step % cfg.run.log_every == 0:
                t_window, wait_window, n_window = time.time(), 0.0, 0
            if step % cfg.checkpoint.every_steps == 0:
                last_ckpt = save(train_loader.epoch)
            if any_rank(stop["signal"] is not None, device):
                last_ckpt = save(train_loader.epoch)
                print0(f"stopped by signal at step {step}; checkpoint {last_ckpt}. Re-run the same command to resume.")
                return 128 + (stop["signal"] or signal.SIGTERM)
        last_ckpt = save(epoch + 1)
        done = epoch + 1
        if cfg.eval.every_epochs and done % cfg.eval.every_epochs == 0 and done < cfg.optim.epochs and test_sets:
            evaluate(cfg.eval.quick_clips, done)
            model.train()
    if is_main:
        print0(f"trained {step - step0} steps in {(time.time() - t0_run) / 60:.1f} min")
    evaluate(cfg.eval.clips, cfg.optim.epochs)
    if writer is not None:
        writer.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    eval_only = "--eval-only" in argv
    ckpt = [a.split("=", 1)[1] for a in argv if a.startswith("--checkpoint=")]
    argv = [a for a in argv if a != "--eval-only" and not a.startswith("--checkpoint=")]
    if not argv or argv[0].startswith("-"):
        print("usage: trainer/main.py CONFIG [key=value ...] [--eval-only [--checkpoint=PATH]]", file=sys.stderr)
        return 2
    try:
        return run(argv[0], argv[1:], eval_only=eval_only or bool(ckpt), checkpoint=ckpt[0] if ckpt else None)
    except (TrainingError, ShardError, StaleCacheError, MissingWordsError, FileNotFoundError, ValueError) as e:
        # faults with a message that says what to do: no traceback, a non-zero exit on every rank
        print(f"error (rank {os.environ.get('RANK', 0)}): {e}", file=sys.stderr, flush=True)
        return 3
    finally:
        if is_dist():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
