"""Masks as `torch.nn.utils.parametrize` parametrizations: the "masked" stage.

While masked, `module.weight` is `original * mask`, so a pruned weight is exactly zero in every
forward pass and after every optimizer step. `realise` makes the zeros permanent and removes the
parametrization: the "realised" stage, a plain model with the same outputs.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import parametrize


class WeightMask(nn.Module):
    """Parametrization multiplying a weight by a fixed 0/1 mask buffer."""

    def __init__(self, shape: torch.Size) -> None:
        super().__init__()
        self.register_buffer("mask", torch.ones(shape, dtype=torch.bool))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


def attach_mask(module: nn.Module, tensor: str = "weight") -> WeightMask:
    existing = get_mask(module, tensor)
    if existing is not None:
        return existing
    mask = WeightMask(getattr(module, tensor).shape).to(getattr(module, tensor).device)
    parametrize.register_parametrization(module, tensor, mask)
    return mask


def get_mask(module: nn.Module, tensor: str = "weight") -> WeightMask | None:
    if not parametrize.is_parametrized(module, tensor):
        return None
    for p in module.parametrizations[tensor]:
        if isinstance(p, WeightMask):
            return p
    return None


def masked_layers(model: nn.Module) -> dict[str, torch.Tensor]:
    """{layer name: bool mask} for every masked weight."""
    out = {}
    for name, mod in model.named_modules():
        m = get_mask(mod)
        if m is not None:
            out[name] = m.mask
    return out


@torch.no_grad()
def _strip(mod: nn.Module) -> None:
    # A deep copy shares the parametrized class with its original, so torch's
    # remove_parametrizations (which edits that class) would break the original:
    # restore the plain class on this instance only.
    values = {name: getattr(mod, name).detach().clone() for name in mod.parametrizations.keys()}
    grads = {name: mod.parametrizations[name].original.requires_grad for name in values}
    mod.__class__ = mod.__class__.__bases__[0]
    del mod._modules["parametrizations"]
    for name, value in values.items():
        mod.register_parameter(name, nn.Parameter(value, requires_grad=grads[name]))


@torch.no_grad()
def realise(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Bake masks into the weights and drop the parametrizations (a plain, shippable model).

    The "realised" stage: same outputs, plain tensors, nothing that recomputes a mask.
    """
    target = model if inplace else copy.deepcopy(model)
    for mod in target.modules():
        if parametrize.is_parametrized(mod):
            _strip(mod)
    return target
