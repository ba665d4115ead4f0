"""torchrun / DistributedDataParallel support: process-group setup and the few collectives the loop needs.

Every function is a no-op (or the identity) in a plain single-process run, so scripts call them
unconditionally.
"""
from __future__ import annotations

import os
from typing import Callable

import torch
import torch.distributed as dist


def init_distributed(device_name: str) -> None:
    """Join the process group torchrun describes in the environment (rank() and world_size() then tell the place)."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) < 2 or dist.is_initialized():
        return
    cuda = device_name != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Only the main process writes logs, TensorBoard events, checkpoints and reports."""
    return rank() == 0


def main_log(log: Callable[..., None] = print) -> Callable[..., None]:
    """log in the main process, a no-op in the others."""
    return log if is_main() else _quiet


def _quiet(*args, **kwargs) -> None:
    """The log of processes other than rank 0."""


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def sum_across(*values: float) -> list[float]:
    """Sum numbers over all processes (float64, on the CPU for gloo or the current GPU for nccl)."""
    if not is_distributed():
        return list(values)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate a CPU tensor's rows from all processes (sizes may differ)."""
    if not is_distributed():
        return t
    parts = [None] * world_size()
    dist.all_gather_object(parts, t.cpu())
    return torch.cat(parts)


def broadcast(obj):
    """The main process's value of a picklable object, on every process."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()
