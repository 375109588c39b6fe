"""Seeded subsets of labelled data: equal counts per class, or the classes' original proportions.

Example:
    >>> import torch
    >>> y = torch.tensor([0] * 8 + [1] * 2)
    >>> torch.bincount(y[balanced_subset(y, 4, seed=0)]).tolist(), torch.bincount(y[stratified_subset(y, 5, seed=0)]).tolist()
    ([2, 2], [4, 1])
"""

from __future__ import annotations

import torch


def balanced_subset(y: torch.Tensor, limit: int, seed: int) -> torch.Tensor:
    """Indices of a seeded subset of `limit` items with classes as equal as possible."""
    if limit >= len(y):
        return torch.arange(len(y))
    g = torch.Generator().manual_seed(seed)
    classes = torch.unique(y)
    per_class = [torch.nonzero(y == c).flatten() for c in classes]
    per_class = [idx[torch.randperm(len(idx), generator=g)] for idx in per_class]
    take = [0] * len(classes)
    remaining = limit
    # Round-robin so the subset stays balanced even when some classes are small.
    while remaining > 0:
        progressed = False
        for i, idx in enumerate(per_class):
            if remaining and take[i] < len(idx):
                take[i] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            break
    chosen = torch.cat([idx[:t] for idx, t in zip(per_class, take)])
    return chosen.sort().values


def stratified_subset(y: torch.Tensor, limit: int, seed: int) -> torch.Tensor:
    """Indices of a seeded subset of `limit` items in the classes' original proportions (largest remainder,
    ties to the earlier class; a class keeps one item outside the subset where it can). On classes of equal
    size it picks exactly what `balanced_subset` picks."""
    if limit >= len(y):
        return torch.arange(len(y))
    g = torch.Generator().manual_seed(seed)
    per_class = [torch.nonzero(y == c).flatten() for c in torch.unique(y)]
    per_class = [idx[torch.randperm(len(idx), generator=g)] for idx in per_class]
    sizes, n = [len(idx) for idx in per_class], len(y)
    take = [limit * s // n for s in sizes]  # below each class's size, as limit < n
    order = sorted(range(len(sizes)), key=lambda i: (-(limit * sizes[i] % n), i))
    remaining = limit - sum(take)  # fewer than the classes: one more for the largest remainders
    for spare in (1, 0):  # first only classes that keep an item back, then any
        for i in order:
            if remaining and take[i] < sizes[i] - spare:
                take[i] += 1
                remaining -= 1
    chosen = torch.cat([idx[:t] for idx, t in zip(per_class, take)])
    return chosen.sort().values


LIMIT_WAYS = {"equal": "class-balanced (equal counts per class, as far as each class has examples)",
              "proportional": "stratified (original class proportions)"}


def limited(y: torch.Tensor, limit: int, seed: int, way: str) -> torch.Tensor:
    """data.limit / test_limit: `limit` seeded indices, equal counts per class or the original proportions."""
    return (balanced_subset if way == "equal" else stratified_subset)(y, limit, seed)
