"""Multi-process data parallelism through PyTorch's own launcher (``torchrun``).

``torchrun --nproc_per_node N -m memory_mosaics.cli train ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init` reads them and joins the process
group (gloo on CPU, nccl on CUDA). Without them everything here degrades to a single process, so
the trainer calls these helpers unconditionally and the model code never sees any of it. Sharded
training (FSDP2) and sharded checkpoints are in :mod:`.sharding`.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Dist:
    """Where this process stands: ``rank`` of ``world_size`` and its ``device``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> ``cuda:LOCAL_RANK`` when CUDA is available, else CPU; ``"cuda"`` -> ``cuda:LOCAL_RANK``."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{local_rank}"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


def init(device: str = "auto") -> Dist:
    """Join the process group described by torchrun's environment (a no-op for a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world, **kwargs)
    return Dist(rank, world, local_rank, dev)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@contextmanager
def main_first(d: Dist):
    """Run the body on rank 0 first, then on the other ranks (e.g. to build a shared cache once)."""
    if not d.is_main:
        barrier()
    yield
    if d.is_main:
        barrier()


def wrap(model: nn.Module, d: Dist) -> nn.Module:
    """DistributedDataParallel around ``model`` when there are several processes, else ``model``."""
    if not d.enabled:
        return model
    ids = [d.device.index] if d.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def no_sync(model: nn.Module, sync: bool):
    """Skip the gradient reduction on accumulation micro-steps that are not the last one: DDP's
    all-reduce, or FSDP's reduce-scatter (the unsharded gradients then accumulate locally)."""
    if sync:
        return nullcontext()
    if isinstance(model, FSDPModule):
        return _fsdp_no_sync(model)
    if isinstance(model, DistributedDataParallel):
        return model.no_sync()
    return nullcontext()


@contextmanager
def _fsdp_no_sync(model: FSDPModule):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all processes, in place (returned for convenience)."""
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather(t: torch.Tensor, d: Dist) -> list[torch.Tensor]:
    """Every process's copy of the same-shaped ``t``, on the CPU, in rank order."""
    if not dist.is_initialized():
        return [t.cpu()]
    src = t.to(d.device)
    out = [torch.empty_like(src) for _ in range(d.world_size)]
    dist.all_gather(out, src)
    return [o.cpu() for o in out]
