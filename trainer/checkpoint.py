"""Checkpoints: written atomically, named so the newest sorts last, the last K kept.

A checkpoint holds everything an exact resume needs: model, optimizer, step, epoch, every rank's
RNG state, the loader position and the resolved config.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np
import torch

from trainer.config import TrainConfig, check_resume, stored_config
from trainer.distributed import all_gather_objects, broadcast_object, print0
from trainer.faults import TrainingError

_NAME = re.compile(r"^ckpt_(\d{7,})\.pt$")


def checkpoint_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Finished checkpoints, oldest first by step number (ckpt_10000000.pt after ckpt_9999999.pt);
    temp files of an interrupted write are not listed."""
    d = checkpoint_dir(out_dir)
    if not d.is_dir():
        return []
    return sorted((p for p in d.iterdir() if _NAME.match(p.name)), key=lambda p: int(_NAME.match(p.name)[1]))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def non_finite(state: dict, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in a (nested) state dict that hold NaN or inf."""
    bad = []
    for k, v in state.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            bad += non_finite(v, name + ".")
        elif isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            bad.append(name)
    return bad


def save_checkpoint(out_dir: str | Path, step: int, state: dict, keep_last: int) -> Path:
    """Write `ckpt_<step>.pt` via a temp file + os.replace, then delete all but the newest `keep_last`.

    Raises:
        TrainingError: the model or optimizer state is not finite (such a checkpoint would later be
            resumed from as "the last good one"); nothing is written.
    """
    bad = non_finite({"model": state.get("model", {}), "optimizer": state.get("optimizer", {})})
    if bad:
        raise TrainingError(f"not saving checkpoint of step {step}: {len(bad)} tensors are not finite ({bad[:3]})")
    d = checkpoint_dir(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"ckpt_{step:07d}.pt"
    tmp = d / f".{path.name}.tmp"
    torch.save(state, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    for old in list_checkpoints(out_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path) -> dict:
    """Load one of our checkpoints (tensors and plain Python containers only: weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return torch.load(path, map_location="cpu", weights_only=True)


def newest_readable(out_dir: str | Path) -> tuple[Path | None, dict | None]:
    """The newest checkpoint that loads, and what it holds; (None, None) when there is none.

    A newer one that cannot be read (a truncated copy, a full disk at the wrong moment) is renamed
    to `<name>.unreadable` (kept for inspection, out of the rotation) with a warning, and the one
    before it is tried.
    """
    for path in reversed(list_checkpoints(out_dir)):
        try:
            return path, load_checkpoint(path)
        except Exception as e:  # whatever torch.load raises on a damaged zip or pickle
            bad = path.with_name(path.name + ".unreadable")
            path.replace(bad)
            print(f"warning: checkpoint {path} cannot be read ({type(e).__name__}: {str(e)[:200]}); moved to "
                  f"{bad.name}, falling back to the one before it", file=sys.stderr, flush=True)
    return None, None


def resume_point(out_dir: str | Path, rank: int) -> tuple[Path | None, dict | None]:
    """The checkpoint every rank resumes from: rank 0 picks the newest readable one and broadcasts its
    path and step (ranks with node-local run folders would otherwise pick different ones and their
    collectives would not match); every rank then loads that file itself.

    Raises:
        TrainingError: on every rank, when some rank cannot read the chosen file or holds another
            step under its name, naming those ranks.
    """
    path, ckpt = newest_readable(out_dir) if rank == 0 else (None, None)
    chosen = broadcast_object((str(path), ckpt["step"]) if path is not None else None)
    if chosen is None:
        return None, None
    path, step = Path(chosen[0]), chosen[1]
    problem = None
    if rank != 0:
        try:
            ckpt = load_checkpoint(path)
            if ckpt.get("step") != step:
                problem = f"holds step {ckpt.get('step')}, not {step}"
        except Exception as e:
            problem = f"{type(e).__name__}: {str(e)[:200]}"
    problems = [(r, p) for r, p in enumerate(all_gather_objects(problem)) if p]
    if problems:
        raise TrainingError(
            f"rank 0 resumes from {path} (step {step}), which " + "; ".join(f"rank {r} cannot use: {p}" for r, p in problems)
            + ". With node-local run folders, copy rank 0's checkpoints/ to every node (or use a shared run.out_dir).")
    return path, ckpt


def resume_run(out_dir: str | Path, rank: int, cfg: TrainConfig, model, optimizer, loader) -> tuple[Path | None, dict | None]:
    """Continue the run in `out_dir`, if there is one: load the checkpoint `resume_point` chooses
    into the model, optimizer, loader and this rank's RNGs, after checking the run is this one
    (`check_resume`: its stored config, or the config.yaml of a run without checkpoints yet).

    Returns:
        (the checkpoint's path, its contents), or (None, None) for a fresh run.

    Raises:
        ConfigError: the folder holds a run with another config (and run.resume is not force).
        TrainingError: some rank cannot read the chosen checkpoint.
    """
    path, ckpt = resume_point(out_dir, rank)
    stored = ckpt["config"] if ckpt else stored_config(out_dir)
    for line in check_resume(stored, cfg, path or Path(out_dir) / "config.yaml"):
        print0(f"warning: run.resume=force: resuming although {line}")
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        loader.load_state_dict(ckpt["loader_state"])
        set_rng_state(ckpt["rng"][rank] if rank < len(ckpt["rng"]) else ckpt["rng"][0])
        print0(f"resumed from {path} (step {ckpt['step']}, epoch {ckpt['epoch']})")
    return path, ckpt


def backbone_state_from(path: str | Path) -> dict[str, torch.Tensor]:
    """Backbone weights for `model.init`: one of our checkpoints (its `model` entry) or a torchvision
    `r2plus1d_18` state_dict (its `fc.*` is dropped: our head is a regressor)."""
    obj = load_checkpoint(path)
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if any(k.startswith("backbone.") for k in obj):
        return {k[len("backbone."):]: v for k, v in obj.items() if k.startswith("backbone.")}
    return {k: v for k, v in obj.items() if not k.startswith("fc.")}


def init_backbone(model: torch.nn.Module, init: str | Path) -> Path:
    """`model.init`: load backbone weights into `model.backbone` from a checkpoint file, a torchvision
    state_dict, or a run folder (its newest checkpoint: two-stage recipes). Returns the file used.

    Raises:
        TrainingError: a folder without checkpoints, or weights that do not fit the backbone.
    """
    path = Path(init)
    if path.is_dir():
        path = latest_checkpoint(path)
        if path is None:
            raise TrainingError(f"model.init {init} is a folder without checkpoints/ckpt_*.pt; "
                                "run that stage first or point model.init at a checkpoint file")
    missing, unexpected = model.backbone.load_state_dict(backbone_state_from(path), strict=False)
    if missing or unexpected:
        raise TrainingError(f"model.init {path}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return path


def rng_state() -> dict:
    """This process's torch, numpy (and CUDA) RNG states, for a checkpoint."""
    # numpy's state as tensors and numbers, so checkpoints load with weights_only=True
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]}
    # is_initialized, not is_available: a CPU-side call must not initialise CUDA (DALI forks later)
    if torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` returned."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.device_count() > 0:  # NVML: no CUDA initialisation to ask
        torch.cuda.set_rng_state(state["cuda"])
