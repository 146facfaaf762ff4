"""Write what the model would see: `python -m dali_pipelines.dump --shards DIR --split train ...`.

    python -m dali_pipelines.dump --shards data/demo/train --split train --batches 2 \\
        --out batch.npz --png batch.png
    python -m dali_pipelines.dump --config configs/demo.yaml --split train --out demo.npz --png demo.png

The .npz holds `clips` (B, C, T, H, W) float32, exactly the model input ((B, N, C, T, H, W) for
eval), `labels`, `keys` (sample keys, str), `standardization` (str), `index` (table rows), and for
train `start` (first frame of the window in the stored sample), `crop_x`, `crop_y` (top-left pixel
of the crop in the decoded, optionally resized frame) and `flip` (bool); for eval `video` (-1 =
padding). Runs the same loaders as training, on the CPU backend unless --device says otherwise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from dali_pipelines.config import EvalDataConfig, TrainDataConfig
from dali_pipelines.standardize import KINETICS_MEAN, KINETICS_STD


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dali_pipelines.dump", description=__doc__.split("\n")[0])
    p.add_argument("--shards", required=True, help="shard directory (or its _info.json)")
    p.add_argument("--config", type=Path, help="a run config (configs/*.yaml): its data.train settings "
                   "become the defaults (flags still override)")
    p.add_argument("--split", required=True, choices=["train", "eval"])
    p.add_argument("--batches", type=int, default=1, help="batches to dump")
    p.add_argument("--out", required=True, type=Path, help="output .npz")
    p.add_argument("--png", type=Path, help="contact sheet of the clips' frames")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--clip-len", type=int, default=16)
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--crop", type=int, default=112)
    p.add_argument("--resize-short", type=int, default=None)
    p.add_argument("--standardization", choices=["per_frame", "mean_std"], default="per_frame")
    p.add_argument("--no-flip", action="store_true", help="train: never flip")
    p.add_argument("--epoch-clips", type=int, default=None, help="train: clips per epoch")
    p.add_argument("--position", type=int, default=0, help="train: start after this many batches")
    p.add_argument("--num-clips", type=int, default=25, help="eval: clips per video")
    p.add_argument("--clip-positions", choices=["uniform", "random"], default="uniform")
    p.add_argument("--rank", type=int, default=0, help="pretend to be this rank ...")
    p.add_argument("--world-size", type=int, default=1, help="... of this many")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--py-workers", type=int, default=1)
    return p


def dump(args: argparse.Namespace) -> dict[str, np.ndarray]:
    """Run the loader for `args.batches` batches and return the arrays written to the .npz."""
    from dali_pipelines.loader import make_eval_loader, make_train_loader  # torch + DALI: lazy

    torch_device = "cuda:0" if args.device == "gpu" else "cpu"
    common = dict(shards=args.shards, batch_size=args.batch_size, clip_len=args.clip_len,
                  stride=args.stride, crop=args.crop, resize_short=args.resize_short,
                  standardization=args.standardization, seed=args.seed, device=args.device,
                  py_workers=args.py_workers)
    if args.split == "train":
        cfg = TrainDataConfig(flip=not args.no_flip, epoch_clips=args.epoch_clips, **common)
        loader = make_train_loader(cfg, args.rank, args.world_size, 0, torch_device)
        loader.load_state_dict({"position": args.position})
    else:
        cfg = EvalDataConfig(num_clips=args.num_clips, clip_positions=args.clip_positions, **common)
        loader = make_eval_loader(cfg, args.rank, args.world_size, 0, torch_device)
    batches = []
    while len(batches) < args.batches:  # may span epochs / passes
        for batch in loader:
            batches.append({k: v.cpu().numpy() for k, v in batch.items()})
            if len(batches) == args.batches:
                break
    out = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    out["keys"] = loader.table.columns["keys"][out["index"]].astype(str)
    out["standardization"] = np.array(args.standardization)
    return out


def unstandardize(clips: np.ndarray, standardization: str) -> np.ndarray:
    """Model input (..., C, T, H, W) -> viewable floats in [0, 1] with the same shape.

    'mean_std' is inverted exactly; 'per_frame' discards each frame's mean and scale, so each
    frame is stretched to its own min..max instead.
    """
    if standardization == "mean_std":
        shape = (3, 1, 1, 1)
        x = clips * np.reshape(KINETICS_STD, shape) + np.reshape(KINETICS_MEAN, shape)
        return np.clip(x, 0.0, 1.0)
    lo = clips.min(axis=(-4, -2, -1), keepdims=True)  # per frame: over C, H, W
    hi = clips.max(axis=(-4, -2, -1), keepdims=True)
    return (clips - lo) / np.maximum(hi - lo, 1e-6)


def contact_sheet(arrays: dict[str, np.ndarray], path: Path, max_rows: int = 8) -> None:
    """One row per sample (eval: its first clip), one column per frame."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clips = arrays["clips"]
    if clips.ndim == 6:
        clips = clips[:, 0]  # (B, N, C, T, H, W) -> (B, C, T, H, W): first clip
    clips = unstandardize(clips[:max_rows], str(arrays["standardization"]))
    rows, _, frames = clips.shape[:3]
    fig, axes = plt.subplots(rows, frames, figsize=(frames * 0.9, rows * 1.0), squeeze=False)
    for r in range(rows):
        for t in range(frames):
            ax = axes[r][t]
            ax.imshow(clips[r, :, t].transpose(1, 2, 0))  # (C,H,W) -> (H,W,C)
            ax.set_xticks([]), ax.set_yticks([])
        title = f"{arrays['keys'][r]} y={arrays['labels'][r]}"
        if "start" in arrays:
            title += (f" start={arrays['start'][r]} crop=({arrays['crop_x'][r]},"
                      f"{arrays['crop_y'][r]}) flip={bool(arrays['flip'][r])}")
        axes[r][0].set_title(title, loc="left", fontsize=7)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.95, wspace=0.05, hspace=0.35)
    fig.savefig(path, dpi=80)
    plt.close(fig)


_FROM_RUN_CONFIG = ("clip_len", "stride", "crop", "resize_short", "standardization", "seed", "epoch_clips")


def defaults_from_run_config(path: Path) -> dict:
    """Defaults from a run config's `data.train` section (configs/*.yaml): dump what that run's model
    sees. Only the loader's own keys are read, so this floor needs nothing from the trainer."""
    import yaml

    train = ((yaml.safe_load(path.read_text()) or {}).get("data") or {}).get("train")
    if not isinstance(train, dict):
        raise SystemExit(f"error: {path} has no data.train section")
    out = {k: train[k] for k in _FROM_RUN_CONFIG if k in train}
    if "flip" in train:
        out["no_flip"] = not train["flip"]
    if "shards" in train:
        out["shards"] = train["shards"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path)
    known, _ = pre.parse_known_args(argv)
    if known.config is not None:
        p.set_defaults(**defaults_from_run_config(known.config))
        for action in p._actions:  # --shards comes from the config unless given
            if action.dest == "shards":
                action.required = False
    args = p.parse_args(argv)
    arrays = dump(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, **arrays)
    if args.png:
        contact_sheet(arrays, args.png)
    shape = arrays["clips"].shape
    print(f"[dump] {shape[0]} samples {shape} ({args.standardization}) -> {args.out}"
          + (f", {args.png}" if args.png else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
