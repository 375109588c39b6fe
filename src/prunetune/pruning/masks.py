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
    """Parametrization multiplying a weight by a 0/1 mask buffer.

    `straight_through`: the forward pass is the same, but the gradient reaches every entry of the
    original as if unmasked (the gradient of the masked weight); the `dynamic` schedule turns it on
    only while it measures where to grow weights.
    """

    def __init__(self, shape: torch.Size) -> None:
        super().__init__()
        self.register_buffer("mask", torch.ones(shape, dtype=torch.bool))
        self.straight_through = False

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.straight_through:  # the value w * mask exactly (w + (-w) is 0), the gradient of w itself
            return w + (w * self.mask - w).detach()
        return w * self.mask


def attach_mask(module: nn.Module, tensor: str = "weight") -> WeightMask:
    existing = get_mask(module, tensor)
    if existing is not None:
        return existing
    mask = WeightMask(getattr(module, tensor).shape).to(getattr(module, tensor).device)
    parametrize.register_parametrization(module, tensor, mask)
    if isinstance(module, nn.RNNBase):
        _copyable_rnn(type(module))
    return mask


def _copyable_rnn(cls: type) -> None:
    """A masked RNN caches its masked weights (non-leaf tensors, which cannot be deep-copied) in
    `_flat_weights` after each forward; copies start without them (forward recomputes them)."""
    if cls.__dict__.get("_prunetune_copyable"):
        return
    base = cls.__deepcopy__

    def __deepcopy__(self, memo):
        saved = self.__dict__.get("_flat_weights")
        if saved is not None:
            self.__dict__["_flat_weights"] = [None] * len(saved)
        try:
            return base(self, memo)
        finally:
            if saved is not None:
                self.__dict__["_flat_weights"] = saved

    cls.__deepcopy__ = __deepcopy__
    cls._prunetune_copyable = True


def get_mask(module: nn.Module, tensor: str = "weight") -> WeightMask | None:
    if not parametrize.is_parametrized(module, tensor):
        return None
    for p in module.parametrizations[tensor]:
        if isinstance(p, WeightMask):
            return p
    return None


def masked_layers(model: nn.Module) -> dict[str, torch.Tensor]:
    """{layer name: bool mask} for every masked `weight` (see `masked_tensors` for every masked tensor,
    LSTM / GRU gate tensors included)."""
    out = {}
    for name, mod in model.named_modules():
        m = get_mask(mod)
        if m is not None:
            out[name] = m.mask
    return out


def masked_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """{"<layer>.<tensor>": bool mask} for every masked tensor (`fc.weight`, `lstm.weight_hh_l0`, ...)."""
    out = {}
    for name, mod in model.named_modules():
        if not parametrize.is_parametrized(mod):
            continue
        for tensor in mod.parametrizations.keys():
            m = get_mask(mod, tensor)
            if m is not None:
                out[f"{name}.{tensor}" if name else tensor] = m.mask
    return out


def masked_layer_names(model: nn.Module) -> list[str]:
    """Names of the layers with at least one masked tensor, in model order."""
    seen: dict[str, None] = {}
    for key in masked_tensors(model):
        seen.setdefault(key.rsplit(".", 1)[0] if "." in key else "", None)
    return list(seen)


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


@torch.no_grad()
def baked_state(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The state dict `realise(model)` would have, without a copy of the model: each masked tensor's
    original is multiplied by its mask in place and stands under the plain name. The model computes
    the same outputs (its forward multiplies by the mask anyway, and a weight the `dynamic` schedule
    grows back starts from zero). None when
    a parametrization is not a lone WeightMask: realise a copy then."""
    plain: dict[str, str] = {}
    for prefix, mod in model.named_modules():
        if not parametrize.is_parametrized(mod):
            continue
        for t, plist in mod.parametrizations.items():
            if len(plist) != 1 or not isinstance(plist[0], WeightMask):
                return None
            plist.original.mul_(plist[0].mask)
            at = f"{prefix}." if prefix else ""
            plain[f"{at}parametrizations.{t}.original"] = f"{at}{t}"
    state = {}
    for k, v in model.state_dict().items():
        if k in plain:
            state[plain[k]] = v
        elif not (k.startswith("parametrizations.") or ".parametrizations." in k):  # the masks are not weights
            state[k] = v
    return state
