"""Random augmentation of image batches (N, C, H, W), done on the tensor batch.

Example:
    >>> import torch
    >>> from prunetune.recipe import AugmentSpec
    >>> augment(torch.ones(2, 1, 4, 4), AugmentSpec(crop_padding=1), torch.Generator().manual_seed(0)).shape
    torch.Size([2, 1, 4, 4])
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..errors import PrunetuneError


def augment(x: torch.Tensor, spec, generator: torch.Generator) -> torch.Tensor:
    if not spec.active:
        return x
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise PrunetuneError("augment: crop_padding and hflip apply to image batches only; turn them off for this data")
    n, _, h, w = x.shape
    if spec.hflip:
        flip = torch.rand(n, generator=generator) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    p = spec.crop_padding
    if p:
        padded = F.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=generator)
        rows = (dy.view(-1, 1) + torch.arange(h)).view(n, h, 1)
        cols = (dx.view(-1, 1) + torch.arange(w)).view(n, 1, w)
        # Gather an h x w window per image at its own offset: [n, h, w, C] -> [n, C, h, w].
        x = padded.permute(0, 2, 3, 1)[torch.arange(n).view(n, 1, 1), rows, cols].permute(0, 3, 1, 2).contiguous()
    return x
