"""Checkpoints: written atomically, named so the newest sorts last, the last K kept.

A checkpoint holds everything an exact resume needs: model, optimizer, step, epoch, every rank's
RNG state, the loader position and the resolved config.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from trainer.faults import TrainingError

_NAME = re.compile(r"^ckpt_(\d{7,})\.pt$")


def checkpoint_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Finished checkpoints, oldest first (temp files of an interrupted write are not listed)."""
    d = checkpoint_dir(out_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if _NAME.match(p.name))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def save_checkpoint(out_dir: str | Path, step: int, state: dict, keep_last: int) -> Path:
    """Write `ckpt_<step>.pt` via a temp file + os.replace, then delete all but the newest `keep_last`."""
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
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` returned."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
