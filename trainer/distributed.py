"""Process-group set-up and the few collectives the trainer needs (torchrun or a plain process)."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def dist_env() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment; (0, 0, 1) for a plain process."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)))


def pick_device(local_rank: int) -> torch.device:
    """cuda:<local_rank> when CUDA is there, else the CPU. Calling this initialises CUDA: build the
    DALI loaders (which fork their reader processes) first."""
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_process_group(device: torch.device, world_size: int) -> None:
    """nccl on GPUs, gloo on CPU; nothing for a single process. torchrun's env:// rendezvous covers
    one node (--nproc_per_node) and several (--nnodes, --rdzv-endpoint)."""
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=30))


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def print0(*args, **kwargs) -> None:
    if int(os.environ.get("RANK", 0)) == 0:
        print(*args, **kwargs, flush=True)


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s object on every rank (e.g. class embeddings computed once)."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj) -> list:
    if not is_dist():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if `flag` is True on any (a stop request must stop all ranks together)."""
    if not is_dist():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def sum_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The elementwise sum of `value` over all ranks (a new tensor; `value` itself is unchanged)."""
    value = value.detach().clone()
    if is_dist():
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value
