"""Data-parallel fine-tuning across processes (torchrun / accelerate launch): DDP, gloo on CPU, NCCL on GPU.

Launched with `torchrun --nproc_per_node N -m prunetune.cli run ...`, every rank runs the same
pipeline: the same seeds give every rank the same dense model, the same batch order and the same
pruning decisions; each rank trains on its slice of every global batch and DDP averages the
gradients, so weights stay identical. Masks are broadcast from rank 0 after every pruning step as a
guard. Rank 0 writes the run folder; rank r > 0 writes `OUT.rank<r>` (kept, so ranks can be compared).

Example:
    >>> world()
    (0, 1)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .pruning.masks import masked_tensors


def world() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment, initialising the process group once."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def active() -> bool:
    return world()[1] > 1


def shard(x: Any, y: torch.Tensor) -> tuple[Any, torch.Tensor]:
    """This rank's slice of a global batch (every rank sees the same global batches)."""
    rank, size = world()
    if size == 1:
        return x, y
    if isinstance(x, dict):
        return {k: v[rank::size] for k, v in x.items()}, y[rank::size]
    return x[rank::size], y[rank::size]


def wrap(model: nn.Module) -> nn.Module:
    """The module to train: DDP around `model` when several processes run, else `model` itself."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    device = next(model.parameters()).device
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=False)


@torch.no_grad()
def sync_masks(model: nn.Module) -> None:
    """Broadcast every mask from rank 0 (pruning decisions must be identical on every rank)."""
    if not active():
        return
    import torch.distributed as dist

    for mask in masked_tensors(model).values():
        m = mask.to(torch.uint8)
        dist.broadcast(m, src=0)
        mask.copy_(m.bool())


@torch.no_grad()
def sync_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics): each rank updated them from
    its own slice of the last batch, so without this the ranks' models would differ slightly."""
    if not active():
        return
    import torch.distributed as dist

    for b in model.buffers():
        if b.is_floating_point():
            dist.broadcast(b, src=0)


def rank_folder(out: str | Path) -> Path:
    """Where this rank writes its run folder."""
    rank, _ = world()
    out = Path(out)
    return out if rank == 0 else out.with_name(f"{out.name}.rank{rank}")
