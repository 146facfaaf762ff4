"""`python -m benchmarks.train`: training-loop throughput and how much of it is spent waiting for data.

    python -m benchmarks.train                                   # small model, synthetic shards, this CPU
    python -m benchmarks.train configs/author.yaml --synthetic   # the author's model and batch
    python -m benchmarks.train configs/author.yaml data.train.shards=shards/k700_train --steps 100

The loop is the trainer's own `train_step` (trainer/main.py: autocast forward -> MSE to the class
embedding -> backward -> gradient check -> Adam) without checkpoints, evaluation, logging or DDP, in
one process:

1. `loop`: timed steps fed by the loader. Per step: wait = time blocked in `next(loader)`;
   step = wait + forward/backward/optimizer (CUDA synchronised at the end of each step, so the
   time is not hidden in the next step's wait). Reports clips/s, mean step time and the data-wait
   fraction = sum(wait) / sum(step).
2. `compute`: the same number of steps on one batch held in memory: what the model consumes when
   data is free.
3. `loader`: the loader alone for the same number of batches (after draining the batches it
   prefetched during phase 2): what it can supply.

Goal on a GPU (issue 7): loader clips/s >= 3x compute clips/s, data-wait fraction < 2%. On a CPU
machine the loader and the model share the cores, so there `loop` < min(loader, compute).

Class embeddings are random unit vectors (no word vectors needed): they cost nothing per step, so
the figures are those of the real loop.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.loader import exit_now

# A small model for CPU runs: (2+1)D with widths 8-16-32-64, one block per stage, batch 4.
DEFAULT_CONFIG = {
    "run": {"out_dir": "unused", "threads": None},
    "data": {"global_batch": 4, "train": {"shards": "synthetic", "num_threads": 2}},
    "embeddings": {"vectors": "unused"},
    "model": {"backbone": "custom", "widths": [8, 16, 32, 64], "layers": [1, 1, 1, 1]},
    "optim": {"lr": 1e-3},
}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.train", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("config", nargs="?", help="a trainer YAML config (default: a small built-in CPU config)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, as for trainer/main.py")
    p.add_argument("--synthetic", action="store_true",
                   help="train on synthetic shards (benchmarks.synthetic) instead of data.train.shards")
    p.add_argument("--cache-dir", type=Path, help="synthetic shards' cache (default ~/.cache/zsvideo_benchmarks)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per phase")
    p.add_argument("--warmup-steps", type=int, default=3)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--json", type=Path, help="write the results here")
    return p.parse_intermixed_args(argv)  # CONFIG --synthetic key=value ... in any order


def load(args):
    """The validated TrainConfig from the file (or the built-in one) plus overrides."""
    from trainer.config import load_config

    if args.config and "=" in args.config:  # no file given, only overrides
        args.overrides, args.config = [args.config] + args.overrides, None
    return load_config(args.config or DEFAULT_CONFIG, args.overrides, name=None if args.config else "the built-in config")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import torch

    from dali_pipelines.loader import make_train_loader
    from trainer.config import ConfigError
    from trainer.main import train_step
    from trainer.model import autocast_dtype, build_model

    try:
        cfg = load(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    shards = cfg.data.train.shards
    if args.synthetic or shards == "synthetic":
        from benchmarks.synthetic import synthetic_shards

        kw = {"cache": args.cache_dir} if args.cache_dir else {}
        shards = str(synthetic_shards(**kw))
    if not Path(shards).exists():
        print(f"error: data.train.shards {shards} does not exist; pass --synthetic or "
              "data.train.shards=DIR", file=sys.stderr)
        return 2
    # device_count() counts through NVML: CUDA stays uninitialised until the loader has forked
    device = torch.device("cuda" if (args.device == "cuda" or (args.device == "auto" and torch.cuda.device_count() > 0))
                          else "cpu")
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    # fixed clip shapes: cuDNN autotunes each convolution once (as trainer/main.py does)
    torch.backends.cudnn.benchmark = not cfg.run.deterministic
    batch = cfg.data.global_batch  # one process: the whole global batch
    data_cfg = cfg.data.train.model_copy(update={"batch_size": batch, "shards": shards,
                                                 "epoch_clips": max(batch * (2 * args.steps + args.warmup_steps + 4), 1)})
    # Loader first: it forks its source workers, which must happen before CUDA is touched.
    loader = make_train_loader(data_cfg, 0, 1, 0, str(device))
    num_classes = loader.table.info["num_classes"]
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((num_classes, 300)).astype(np.float32)
    targets = torch.from_numpy(emb / np.linalg.norm(emb, axis=1, keepdims=True)).to(device)
    model = build_model(cfg.model.backbone, 300, cfg.model.dropout, cfg.model.widths, cfg.model.layers).to(device)
    if cfg.model.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last_3d)
    fwd = torch.compile(model) if cfg.model.compile else model
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    amp_dtype = autocast_dtype(cfg.optim.amp, device)
    model.train()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step(b):
        clips = b["clips"]
        if cfg.model.channels_last and device.type == "cuda":
            clips = clips.contiguous(memory_format=torch.channels_last_3d)
        train_step(fwd, optimizer, clips, targets[b["labels"]], amp_dtype, cfg.optim.grad_clip)
        sync()

    def batches():
        while True:
            yield from loader

    it = batches()
    t_start = time.perf_counter()
    b = next(it)
    first_batch_s = time.perf_counter() - t_start
    for _ in range(args.warmup_steps):
        step(b)
        b = next(it)
    step(b)

    # 1. the loop
    waits, steps = [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        b = next(it)
        t1 = time.perf_counter()
        step(b)
        t2 = time.perf_counter()
        waits.append(t1 - t0)
        steps.append(t2 - t0)
    loop_time = sum(steps)
    held = b
    # 2. compute only
    t0 = time.perf_counter()
    compute_steps = []
    for _ in range(args.steps):
        ts = time.perf_counter()
        step(held)
        compute_steps.append(time.perf_counter() - ts)
    compute_time = time.perf_counter() - t0
    # 3. loader only; first drain what the pipeline prefetched during phase 2 (free batches)
    for _ in range(2 * data_cfg.prefetch + 2):
        next(it)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        next(it)
    sync()
    loader_time = time.perf_counter() - t0

    n = args.steps * batch
    res = {
        "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "config": args.config or "built-in", "overrides": args.overrides, "shards": shards,
        "batch_size": batch, "steps": args.steps, "model": cfg.model.model_dump(mode="json"),
        "data": {k: v for k, v in data_cfg.model_dump(mode="json").items() if k != "shards"},
        "torch_threads": torch.get_num_threads(),
        "loop_clips_per_s": n / loop_time,
        "step_time_s": loop_time / args.steps, "step_time_median_s": statistics.median(steps),
        "data_wait_fraction": sum(waits) / loop_time,
        "compute_clips_per_s": n / compute_time, "compute_step_time_s": compute_time / args.steps,
        "loader_clips_per_s": n / loader_time,
        "first_batch_s": first_batch_s,
    }
    res["loader_over_compute"] = res["loader_clips_per_s"] / res["compute_clips_per_s"]
    print(f"device {res['device']}{' (' + res['gpu'] + ')' if res['gpu'] else ''}, batch {batch}, "
          f"{args.steps} timed steps, model {cfg.model.backbone}"
          + (f" {list(cfg.model.widths)}x{list(cfg.model.layers)}" if cfg.model.backbone == "custom" else ""))
    print(f"loop:    {res['loop_clips_per_s']:8.1f} clips/s  step {1000 * res['step_time_s']:7.1f} ms "
          f"(median {1000 * res['step_time_median_s']:.1f})  data wait {100 * res['data_wait_fraction']:.1f}%")
    print(f"compute: {res['compute_clips_per_s']:8.1f} clips/s  step {1000 * res['compute_step_time_s']:7.1f} ms "
          "(one batch held in memory)")
    print(f"loader:  {res['loader_clips_per_s']:8.1f} clips/s  = {res['loader_over_compute']:.2f}x what the "
          "model consumes (goal on a GPU: >= 3x, data wait < 2%)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1))
    exit_now(0)


if __name__ == "__main__":
    sys.exit(main())
