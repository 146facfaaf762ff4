"""Checkpoints: written atomically, named so the newest sorts last, the last K kept.

A checkpoint holds everything an exact resume needs: model, optimizer, step, epoch, every rank's
RNG state, the loader position and the resolved config.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

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
