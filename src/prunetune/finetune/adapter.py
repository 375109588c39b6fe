"""Bottleneck adapters (Houlsby et al. 2019) after the attention and FFN output projections.

Our own small module: `peft` has none, and the `adapters` library pins transformers 4.57 (we use
5.x). An adapter is not mergeable, so it stays in the saved model (the manifest records where, and
loading re-inserts it, `structure.py`)."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from ..registry import FINETUNE_METHODS
from .base import Method, head_parameters
from .options import TargetOptions


class AdapterOptions(TargetOptions):
    """Bottleneck adapters: the adapted layers and the bottleneck width."""

    adapter_size: int = Field(64, ge=1, description="adapter: bottleneck width")


class Adapter(nn.Module):
    """Bottleneck adapter after a projection: h + up(gelu(down(h))), `up` initialised to zero."""

    def __init__(self, base: nn.Linear, size: int) -> None:
        super().__init__()
        self.base = base
        self.down = nn.Linear(base.out_features, size)
        self.up = nn.Linear(size, base.out_features)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    @property
    def weight(self) -> torch.Tensor:  # the wrapped layer's, so per-layer reports see through the adapter
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base(x)
        return h + self.up(F.gelu(self.down(h)))


def insert_adapters(model: nn.Module, names: list[str], size: int) -> None:
    """Wrap each named linear layer of `model` in an `Adapter` of bottleneck width `size`."""
    mods = dict(model.named_modules())
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = mods[parent_name] if parent_name else model
        base = getattr(parent, child)
        setattr(parent, child, Adapter(base, size).to(base.weight.device))


@FINETUNE_METHODS.register("adapter")
class Bottleneck(Method):
    """Bottleneck adapters after the attention and FFN output projections (our module; see docs)."""

    name = "adapter"
    options = AdapterOptions
    follows_rollback = False
    resizable = False
    default_include = ("*output.dense",)

    def prepare(self, model: nn.Module) -> nn.Module:
        names = self.targets(model)
        insert_adapters(model, names, self.peft.adapter_size)
        self.summary.update({"targets": len(names), "adapters": {"names": names, "size": self.peft.adapter_size}})
        return model

    def trainable(self, model: nn.Module) -> list[nn.Parameter]:
        head = {id(p) for p in head_parameters(model, self.classifier)}
        for n, p in model.named_parameters():
            p.requires_grad_(".down." in n or ".up." in n or id(p) in head)
        return [p for p in model.parameters() if p.requires_grad]

    def structure(self) -> dict[str, Any]:
        return {"adapters": self.summary["adapters"]}
