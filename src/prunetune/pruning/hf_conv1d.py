"""transformers' `Conv1D` (GPT-2, GPT-J-era models) as a prunable layer type.

`Conv1D` is a linear layer whose weight is stored transposed, [in, out], and computed with
`addmm(bias, x, weight)`. It is registered without importing transformers (a second of start-up):
`HFConv1D` is a stand-in type whose `isinstance` check recognises the class by name and module, so
the registry, `sync_attributes` and the per-layer plan treat GPT-2's projections like `nn.Linear`.

Example:
    >>> import torch
    >>> from torch import nn
    >>> isinstance(nn.Linear(2, 2), HFConv1D)
    False
    >>> w = torch.arange(6.0).reshape(3, 2)           # Conv1D weight: 3 inputs, 2 outputs
    >>> _rows(w).shape                                 # N:M groups run along the 3 inputs of each output
    torch.Size([2, 3])
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import LAYER_TYPES
from .layers import SHAPE_SYNC, LayerType


class _Conv1DCheck(type):
    def __instancecheck__(cls, obj: object) -> bool:
        return is_hf_conv1d(obj)

    def __subclasscheck__(cls, sub: type) -> bool:
        return any(c.__name__ == "Conv1D" and c.__module__.startswith("transformers.") for c in getattr(sub, "__mro__", ()))


class HFConv1D(metaclass=_Conv1DCheck):
    """Stands for `transformers.pytorch_utils.Conv1D` in isinstance checks (never instantiated)."""


def is_hf_conv1d(obj: object) -> bool:
    """True for transformers' Conv1D and its subclasses (a parametrized, i.e. masked, one included)."""
    return isinstance(obj, nn.Module) and any(
        c.__name__ == "Conv1D" and c.__module__.startswith("transformers.") for c in type(obj).__mro__)


def in_out(module: nn.Module) -> tuple[int, int]:
    """(input features, output features) of an nn.Linear or a Conv1D."""
    if is_hf_conv1d(module):
        i, o = module.weight.shape
        return int(i), int(o)
    return int(module.in_features), int(module.out_features)


def _rows(w: torch.Tensor) -> torch.Tensor:
    return w.t()  # [in, out] -> [out, in]: one row per output neuron, N:M groups along its inputs


def _from_rows(r: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    return r.t().reshape(shape).contiguous()


def _sync(m: nn.Module) -> None:
    m.nx, m.nf = (int(s) for s in m.weight.shape)


LAYER_TYPES.register("hf_conv1d", "transformers Conv1D (GPT-2): a linear layer with its weight stored [in, out]")(
    LayerType(HFConv1D, "weight", _rows, _from_rows))
SHAPE_SYNC[HFConv1D] = _sync
