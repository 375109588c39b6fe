"""Input activation norms of chosen layers over a few calibration batches (for `wanda` importance).

For every layer the L2 norm of each input feature over all calibration tokens (or pixels) is
returned: ||X_j||_2 with X the layer's inputs stacked as [tokens, features]. Padding tokens of text
batches (attention mask 0) are left out.

Example:
    >>> import torch
    >>> from torch import nn
    >>> lin = nn.Linear(2, 1)
    >>> norms = input_norms(lambda x: lin(x), {"lin": lin}, [torch.tensor([[3.0, 0.0], [4.0, 1.0]])])
    >>> norms[lin].tolist()
    [5.0, 1.0]
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn


def _feature_dim(module: nn.Module) -> int:
    return 1 if isinstance(module, nn.modules.conv._ConvNd) else -1


@torch.no_grad()
def input_norms(forward: Callable[[Any], Any], modules: dict[str, nn.Module], inputs: Iterable[Any]) -> dict[nn.Module, torch.Tensor]:
    """{module: per-input-feature L2 norm} after running `forward` on each item of `inputs`."""
    sums: dict[nn.Module, torch.Tensor] = {}
    state: dict[str, Any] = {"mask": None}

    def hook(mod: nn.Module, args: tuple) -> None:
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor):
            return
        dim = _feature_dim(mod)
        mask = state["mask"]
        if dim == -1 and mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
            x = x[mask.bool()]  # real tokens only
        x = x.detach().float()
        if dim == 1:
            x = x.transpose(0, 1).reshape(x.shape[1], -1).t()
        x = x.reshape(-1, x.shape[-1])
        sq = x.pow(2).sum(0).cpu()
        sums[mod] = sums[mod] + sq if mod in sums else sq

    handles = [m.register_forward_pre_hook(hook) for m in modules.values()]
    try:
        for x in inputs:
            state["mask"] = x.get("attention_mask") if isinstance(x, dict) else None
            forward(x)
    finally:
        for h in handles:
            h.remove()
    return {m: s.sqrt() for m, s in sums.items()}
