"""Fully sharded data parallelism (FSDP2), activation checkpointing and sharded checkpoints.

Everything here is applied to a built :class:`~memory_mosaics.models.LanguageModel` from the outside,
through the ``blocks`` every model has, so the model code never sees it:

* :func:`checkpoint_activations`: each block's forward runs under ``torch.utils.checkpoint``
  (non-reentrant): only the block's input is saved, the rest is recomputed in backward.
* :func:`shard`: ``fully_shard`` on each block, then on the root (the embedding, the final norm and,
  tied to the embedding, the output matrix: one parameter, so it stays tied). Parameters, gradients
  and the optimiser state (built after sharding, on the sharded parameters) are DTensors sharded on
  dim 0 over the processes.
* :func:`gathered`: every parameter gathered for a forward without collectives (evaluation, where
  the processes take different numbers of batches, and diagnostics, which call submodules directly).
* :func:`save_sharded` / :func:`load_sharded`: model and optimiser state through
  ``torch.distributed.checkpoint`` (each process writes its shards; a load reshards to any number
  of processes, one included); :func:`consolidated` gathers the full weights on rank 0 for
  ``model.safetensors``, so eval, generate and every other command read the checkpoint unchanged.
  :func:`load_full_optimizer` continues an unsharded (one-process or DDP) checkpoint sharded.
"""

from __future__ import annotations

import functools
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_optimizer_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor
from torch.utils.checkpoint import checkpoint

from ..models import lookup
from .distributed import Dist


def checkpoint_activations(model: nn.Module) -> None:
    """Run each of ``model.blocks`` under non-reentrant activation checkpointing (in place).

    The block's own ``forward`` is replaced on the instance by ``checkpoint(forward, x)``: module
    hooks (FSDP's all-gather) still run around it, the parameter names are unchanged, and the RNG
    state is replayed in the recomputation, so dropout masks and gradients equal the plain run's.
    """
    for block in model.blocks:
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


def shard(model: nn.Module, d: Dist) -> nn.Module:
    """``fully_shard`` each block (resharded after its forward), then the root (kept gathered from
    its forward to its backward); in place, and returned. A single process is left unsharded."""
    if not d.enabled:
        return model
    mesh = init_device_mesh(d.device.type, (d.world_size,))
    for block in model.blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=False)
    return model


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


@contextmanager
def gathered(model: nn.Module):
    """Every parameter of a sharded ``model`` gathered (plain tensors on each module) for the body,
    which then runs forwards without collectives; sharded again afterwards. A no-op when unsharded.
    Collective: every process enters it."""
    if not is_sharded(model):
        yield model
        return
    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    model.set_reshard_after_forward(False)
    for m in modules:
        m.unshard()
    try:
        yield model
    finally:
        for m in modules:
            m.reshard()
        model.set_reshard_after_forward(True)  # the blocks' setting (shard) ...
        model.set_reshard_after_forward(False, recurse=False)  # ... and the root's


def nonfinite(model: nn.Module) -> list[str]:
    """Names of the floating-point tensors of ``model`` holding a NaN or an infinity, in any process's
    shard (the same list on every process; collective when a process group is up)."""
    bad = []
    for name, t in model.state_dict().items():
        local = t.to_local() if isinstance(t, DTensor) else t
        if local.is_floating_point() and not local.isfinite().all():
            bad.append(name)
    if dist.is_initialized():
        lists: list[list[str]] = [[] for _ in range(dist.get_world_size())]
        dist.all_gather_object(lists, bad)
        bad = sorted({name for names in lists for name in names})
    return bad


def consolidated(model: nn.Module, d: Dist) -> nn.Module | None:
    """A plain CPU copy of a sharded ``model`` with the full weights, on rank 0 (None on the others),
    to be written by ``save_pretrained``; an unsharded ``model`` itself. Collective. Built on the meta
    device, then given the gathered tensors, so no memory is spent on a second initialisation."""
    if not is_sharded(model):
        return model if d.is_main else None
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not d.is_main:
        return None
    with torch.device("meta"):
        plain = lookup(model.config.model_type)[1](model.config)
    # own storage per tensor: gathered tensors may be views of one buffer, which safetensors refuses
    plain.load_state_dict({name: t.clone() for name, t in full.items()}, assign=True)
    plain.train(model.training)
    return plain


def save_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, folder: str | Path) -> None:
    """Write the model and optimiser state of every process into ``folder`` (DCP: one file of shards
    per process and a ``.metadata`` index written last by rank 0). Collective."""
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    with _one_process_is_fine():
        dcp.save(state, checkpoint_id=str(folder), no_dist=not dist.is_initialized())


def load_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, folder: str | Path) -> None:
    """Read a folder written by :func:`save_sharded` by any number of processes into ``model`` and
    ``optimizer`` (resharded to this run's processes). Collective."""
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    with _one_process_is_fine():
        dcp.load(state, checkpoint_id=str(folder), no_dist=not dist.is_initialized())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def load_full_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Load ``saved``, the ``state_dict()`` of the optimiser of an unsharded run (one process or DDP:
    parameters numbered in the order of its groups), into the ``optimizer`` of a sharded ``model``
    built the same way (:func:`~memory_mosaics.training.optim.build_optimizer`): the numbers become
    parameter names, and each full tensor is sharded as its parameter. Collective."""
    names = {p: name for name, p in model.named_parameters()}
    order = [names[p] for group in optimizer.param_groups for p in group["params"]]
    full = {
        "state": {order[i]: s for i, s in saved["state"].items()},
        "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in saved["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, full, options=StateDictOptions(full_state_dict=True))


@contextmanager
def _one_process_is_fine():
    """DCP warns whenever no process group is up; a one-process run saving or loading is intended."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        yield
