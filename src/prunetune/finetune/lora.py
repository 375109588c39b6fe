"""LoRA (peft): low-rank adapters merged into the weights at the end. On a masked (unstructured or
N:M pruned) layer the update is trained through the mask, base(x) + x @ ((s * B @ A) * mask).T, so
the merge keeps every pruned weight zero (see `peft.py`)."""

from __future__ import annotations

import types
from typing import Any

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from ..pruning.hf_conv1d import is_hf_conv1d
from ..pruning.masks import get_mask
from ..registry import FINETUNE_METHODS
from .options import TargetOptions
from .peft import MergeablePeftMethod


class LoraOptions(TargetOptions):
    """LoRA: the adapted layers, rank, scaling and dropout."""

    r: int = Field(8, ge=1, description="lora: rank")
    alpha: float = Field(16.0, gt=0, description="lora: scaling alpha (update scaled by alpha / r)")
    dropout: float = Field(0.0, ge=0, lt=1, description="lora: dropout on the adapter input (each adapted layer then keeps a copy of its input for backward)")


def _masked_lora_forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """A LoRA layer whose base weight is masked: the low-rank update is masked too."""
    result = self.base_layer(x, *args, **kwargs)
    mask = get_mask(self.base_layer).mask
    for name in self.active_adapters:
        if name not in self.lora_A.keys() or self.disable_adapters or self.merged:
            continue
        delta = (self.lora_B[name].weight @ self.lora_A[name].weight) * self.scaling[name]
        m = mask.t() if getattr(self, "fan_in_fan_out", False) else mask  # Conv1D (GPT-2) stores [in, out]
        result = result + F.linear(self.lora_dropout[name](x), delta * m)
    return result


@FINETUNE_METHODS.register("lora")
class LoRA(MergeablePeftMethod):
    """Low-rank adapters (peft), merged into the weights at the end; masks kept through the merge."""

    name = "lora"
    options = LoraOptions

    def _config(self, model: nn.Module, targets: list[str]) -> Any:
        from peft import LoraConfig

        p = self.peft
        mods = dict(model.named_modules())
        conv = bool(targets) and all(is_hf_conv1d(mods[t]) for t in targets)  # GPT-2's Conv1D: weights [in, out]
        return LoraConfig(r=p.r, lora_alpha=p.alpha, lora_dropout=p.dropout, target_modules=targets, bias="none",
                          fan_in_fan_out=conv)

    def prepare(self, model: nn.Module) -> nn.Module:
        wrapped = super().prepare(model)
        from peft.tuners.lora import Linear as LoraLinear

        for mod in wrapped.modules():
            if isinstance(mod, LoraLinear) and get_mask(mod.base_layer) is not None:
                mod.forward = types.MethodType(_masked_lora_forward, mod)
        return wrapped
