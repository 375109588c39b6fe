"""Prunable layer types (registered) and the shape bookkeeping structural pruning needs.

A layer type says which tensor holds its prunable weight and how to lay that weight out as
[rows, inputs] for N:M grouping. `sync_attributes` restores a module's size attributes from
its tensors after structural pruning or when a pruned model is rebuilt from its manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..registry import LAYER_TYPES


@dataclass(frozen=True)
class LayerType:
    module_type: type
    weight: str = "weight"
    # [out, in, *k] -> [rows, in-group dim] (N:M groups run along the last dim) and back.
    to_rows: Callable[[torch.Tensor], torch.Tensor] = lambda w: w
    from_rows: Callable[[torch.Tensor, torch.Size], torch.Tensor] = lambda r, shape: r.reshape(shape)
    # Layers with several prunable tensors (LSTM / GRU gates): module -> their names (else just `weight`).
    weights: Callable[[nn.Module], tuple[str, ...]] | None = None
    # The shape the plan shows (default: the weight's), e.g. [hidden units, inputs] for an RNN.
    shape: Callable[[nn.Module], list[int]] | None = None

    def tensors(self, module: nn.Module) -> tuple[str, ...]:
        """Names of the module's prunable tensors (each masked on its own by the masked pruners)."""
        return tuple(self.weights(module)) if self.weights is not None else (self.weight,)


def _conv_rows(w: torch.Tensor) -> torch.Tensor:
    # Group along input channels, as NVIDIA's ASP does: [out, in, k...] -> [out * k..., in].
    dims = list(range(w.dim()))
    return w.permute(0, *dims[2:], 1).reshape(-1, w.shape[1])


def _conv_from_rows(r: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    perm_shape = (shape[0], *shape[2:], shape[1])
    dims = list(range(len(shape)))
    inv = [0, len(shape) - 1, *dims[1:-1]]
    return r.reshape(perm_shape).permute(*inv).contiguous()


LAYER_TYPES.register("linear", "nn.Linear: output neurons / input features")(LayerType(nn.Linear))
LAYER_TYPES.register("conv2d", "nn.Conv2d: filters / input channels")(LayerType(nn.Conv2d, "weight", _conv_rows, _conv_from_rows))
LAYER_TYPES.register("conv1d", "nn.Conv1d: filters / input channels")(LayerType(nn.Conv1d, "weight", _conv_rows, _conv_from_rows))


def layer_type_of(module: nn.Module) -> LayerType | None:
    for name in LAYER_TYPES.names():
        lt = LAYER_TYPES.get(name)
        if isinstance(module, lt.module_type):
            return lt
    return None


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every (name, module) of a registered prunable type, in model order.

    The embeddings of a transformers model are not prunable layers: they own its hidden size (and are
    often tied to the output layer)."""
    hf = _is_transformers(model)
    return [(n, m) for n, m in model.named_modules()
            if n and layer_type_of(m) is not None and not (hf and isinstance(m, nn.Embedding))]


def _is_transformers(model: nn.Module) -> bool:
    """Whether the model is (or wraps) a transformers model."""
    return any(type(m).__module__.startswith("transformers.") for m in model.modules())


def layer_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) of every prunable tensor of a layer (masked tensors as masked)."""
    lt = layer_type_of(module)
    names = lt.tensors(module) if lt is not None else ("weight",)
    return [(t, getattr(module, t)) for t in names]


def layer_weight(module: nn.Module) -> torch.Tensor:
    """The layer's prunable weights as one tensor: the weight itself, or every gate tensor flattened."""
    parts = layer_tensors(module)
    if len(parts) == 1:
        return parts[0][1].detach()
    return torch.cat([t.detach().flatten() for _, t in parts])


def layer_shape(module: nn.Module) -> list[int]:
    lt = layer_type_of(module)
    if lt is not None and lt.shape is not None:
        return list(lt.shape(module))
    return list(layer_weight(module).shape)


def _sync_conv(m: nn.Module) -> None:
    w = m.weight
    if 1 < m.groups == m.in_channels == m.out_channels and w.shape[1] == 1:
        m.groups = w.shape[0]  # a depthwise conv stays one filter per channel (as Torch-Pruning prunes it)
    m.out_channels = w.shape[0]
    m.in_channels = w.shape[1] * m.groups


def _sync_linear(m: nn.Linear) -> None:
    m.out_features, m.in_features = m.weight.shape


def _sync_bn(m: nn.Module) -> None:
    ref = m.weight if m.weight is not None else m.running_mean
    m.num_features = ref.shape[0]


def _sync_ln(m: nn.LayerNorm) -> None:
    ref = m.weight if m.weight is not None else None
    if ref is not None:
        m.normalized_shape = tuple(ref.shape)


# Module type -> function restoring its size attributes from its tensors. Later layer types
# (attention, LSTM, embeddings) add entries next to their implementation.
SHAPE_SYNC: dict[type, Callable[[nn.Module], None]] = {
    nn.Linear: _sync_linear,
    nn.Conv1d: _sync_conv,
    nn.Conv2d: _sync_conv,
    nn.BatchNorm1d: _sync_bn,
    nn.BatchNorm2d: _sync_bn,
    nn.LayerNorm: _sync_ln,
}


def sync_attributes(module: nn.Module) -> None:
    for t, fn in SHAPE_SYNC.items():
        if isinstance(module, t):
            fn(module)
            return
