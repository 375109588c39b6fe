"""BitFit: only the biases and the classifier head train (Ben Zaken et al. 2022)."""

from __future__ import annotations

from torch import nn

from ..registry import FINETUNE_METHODS
from .base import Method, head_parameters


@FINETUNE_METHODS.register("bitfit")
class BitFit(Method):
    """Biases and the classifier head only (Ben Zaken et al. 2022)."""

    name = "bitfit"

    def trainable(self, model: nn.Module) -> list[nn.Parameter]:
        head = {id(p) for p in head_parameters(model, self.classifier)}
        for n, p in model.named_parameters():
            p.requires_grad_(n.endswith("bias") or id(p) in head)
        return [p for p in model.parameters() if p.requires_grad]
