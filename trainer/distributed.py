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


def device_name(local_rank: int) -> str:
    """'cuda:<local_rank>' when GPUs are visible, else 'cpu', WITHOUT initialising CUDA: the loaders
    are built with it before they fork their source workers, which DALI refuses once the CUDA
    driver is initialised. `torch.cuda.device_count()` counts through NVML;
    `torch.cuda.is_available()` would call cudaGetDeviceCount, which initialises the driver."""
    count = torch.cuda.device_count()
    if count == 0:
        return "cpu"
    if local_rank >= count:
        raise RuntimeError(f"local rank {local_rank}, but {count} GPU(s) visible (CUDA_VISIBLE_DEVICES="
                           f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}): start at most {count} processes per "
                           "node (--nproc_per_node), or set CUDA_VISIBLE_DEVICES='' to run the ranks on the CPU")
    return f"cuda:{local_rank}"


def pick_device(local_rank: int) -> torch.device:
    """The rank's device (`device_name`), made current. This initialises CUDA: build the DALI
    loaders (which fork their reader processes) first."""
    device = torch.device(device_name(local_rank))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


# NCCL and gloo give up on a collective after this long (a rank that died or hangs): long enough for
# a full evaluation pass between two collectives, short enough to free a node within the hour.
PROCESS_GROUP_TIMEOUT = timedelta(minutes=30)


def process_group_options(device: torch.device) -> dict:
    """`dist.init_process_group` arguments: nccl bound to the rank's GPU (`device_id`: the
    communicator is created for that device at once, and barriers stop warning that the device is
    unknown), gloo on the CPU."""
    if device.type == "cuda":
        return {"backend": "nccl", "timeout": PROCESS_GROUP_TIMEOUT, "device_id": device}
    return {"backend": "gloo", "timeout": PROCESS_GROUP_TIMEOUT}


def init_process_group(device: torch.device, world_size: int) -> None:
    """nccl on GPUs, gloo on CPU; nothing for a single process. torchrun's env:// rendezvous covers
    one node (--nproc_per_node) and several (--nnodes, --rdzv-endpoint)."""
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(**process_group_options(device))


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


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Every rank's buffers (BatchNorm running statistics) become rank `src`'s, in place.

    DDP broadcasts them from rank 0 at the start of each training forward, so between steps each
    rank holds the statistics of its own last batch. What is evaluated must be what rank 0
    checkpoints: an evaluation redone after a resume then gives the uninterrupted run's numbers."""
    if is_dist():
        for b in module.buffers():
            dist.broadcast(b.data, src)
