"""IA3 (peft): learned rescaling vectors, merged into the weights at the end (see `peft.py`)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..pruning.hf_conv1d import in_out
from ..registry import FINETUNE_METHODS
from .options import TargetOptions
from .peft import MergeablePeftMethod


@FINETUNE_METHODS.register("ia3")
class IA3(MergeablePeftMethod):
    """Learned rescaling vectors (peft IA3); down-projections scale their inputs, others their outputs."""

    name = "ia3"
    options = TargetOptions

    def _config(self, model: nn.Module, targets: list[str]) -> Any:
        from peft import IA3Config

        mods = dict(model.named_modules())
        ff = [n for n in targets if in_out(mods[n])[0] > in_out(mods[n])[1]]
        return IA3Config(target_modules=targets, feedforward_modules=ff)
