"""The `dynamic` schedule's drop-and-grow step (RigL, Evci et al. 2020), at a constant sparsity.

Each pruned tensor drops `fraction` of its kept weights, the smallest in magnitude, and grows as many
where the gradient of the masked weight is largest; a grown weight starts at zero. The fraction starts
at REGROW_FRACTION and decays on a cosine over the schedule's steps.

Example:
    >>> import torch
    >>> w, mask = torch.tensor([0.9, -0.8, 0.1, 0.05]), torch.tensor([True, True, True, False])
    >>> grad = torch.tensor([0.0, 0.0, 0.0, 2.0])  # of the masked weight: only the pruned one would grow
    >>> swap([(w, mask, grad)], 0.34), mask.tolist(), w[3].item()  # 1 of 3 swapped: 0.1 out, the last in, from 0
    (1, [True, True, False, True], 0.0)
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch

from .masks import WeightMask

REGROW_FRACTION = 0.3  # the first step swaps 30 % of each tensor's kept weights (RigL's alpha)


def fraction(index: int, count: int) -> float:
    """The share of kept weights swapped at step `index` (from 0) of `count`: RigL's cosine decay."""
    return REGROW_FRACTION / 2 * (1 + math.cos(math.pi * index / count))


@contextmanager
def straight_through(masks: list[WeightMask]) -> Iterator[None]:
    """Within the block, the gradient reaches every entry of each original as if unmasked (the gradient
    of the masked weight, pruned entries included); the forward pass is unchanged."""
    for m in masks:
        m.straight_through = True
    try:
        yield
    finally:
        for m in masks:
            m.straight_through = False


@torch.no_grad()
def swap(tensors: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], share: float) -> int:
    """Drop and grow in each (original, bool mask, gradient of the masked weight), in place: each mask
    keeps its count of True. Returns how many weights were grown that the mask had pruned."""
    grown = 0
    for orig, mask, grad in tensors:
        flat = mask.view(-1)
        kept = int(flat.sum())
        n_drop = int(kept * share)
        if n_drop == 0:
            continue
        keep = torch.zeros_like(flat)
        keep[torch.topk((orig * mask).abs().view(-1), kept - n_drop).indices] = True
        grow = torch.zeros_like(flat)
        grow[torch.topk(grad.abs().view(-1).masked_fill(keep, float("-inf")), n_drop).indices] = True
        new = grow & ~flat
        orig.view(-1)[new] = 0.0
        grown += int(new.sum())
        flat.copy_(keep | grow)
    return grown
