"""Multi-process training with ``torch.distributed`` started by ``torchrun``.

``torchrun --nproc_per_node N -m sepcli train ...`` sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous variables; :func:`init` reads
them and joins the process group (``gloo`` on CPU, ``nccl`` on CUDA). Without
them training runs as a single process. Rank 0 alone writes the cache, logs,
checkpoints and the archive; the others wait at barriers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from sepcli.errors import TrainingError

__all__ = ["DistInfo", "init", "barrier", "broadcast", "all_mean", "sync_buffers", "shutdown"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise TrainingError(f"environment variable {name}={value!r} is not an integer") from None


def init(device: str) -> tuple[DistInfo, torch.device]:
    """Join the process group described by the torchrun environment, if any.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; under torchrun, CUDA
            processes use ``cuda:LOCAL_RANK``.

    Returns:
        ``(info, device)`` for this process.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", 0)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise TrainingError(f"unknown device {device!r} (use cpu, cuda, cuda:N or auto)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"--device {device} asked for but CUDA is not available")
    if world <= 1:
        return DistInfo(), dev
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend=backend)
        except Exception as exc:  # rendezvous failures come as many types
            raise TrainingError(f"cannot join the {backend} process group: {exc}") from None
    return DistInfo(rank, world, local), dev


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast(info: DistInfo, value: Any) -> Any:
    """``value`` of rank 0, on every rank (any picklable object)."""
    if not info.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_mean(info: DistInfo, value: float, device: torch.device) -> float:
    """Mean of ``value`` over ranks."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / info.world_size


def sync_buffers(info: DistInfo, module: torch.nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over ranks.

    DDP keeps parameters equal but lets each rank update its own running
    statistics after the last forward of an epoch; averaging them makes every
    rank (and the checkpoint) hold the same model, with statistics from all shards.
    """
    if not info.enabled:
        return
    for buf in module.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf.data)
            buf.data /= info.world_size
        else:
            dist.broadcast(buf.data, src=0)


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
