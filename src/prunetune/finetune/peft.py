"""Methods built on `peft` (lora, ia3, prompt_tuning), and the merge that keeps the pruning of LoRA
and IA3 when their updates are folded into the weights at `finish`:

- unstructured / N:M masks: LoRA's update is trained *through the mask* (see `lora.py`), so the
  merged weight (W + s * B @ A) * mask gives the same logits as the adapter did; after PEFT's merge
  the masks are re-applied and re-attached. IA3 scales rows or columns, which keeps zeros zero by
  construction; the masks are re-applied anyway.
- structured pruning: the merged weights keep the pruned widths.

`finish` reports non-zero counts before and after the merge and the largest logit difference on a
probe batch.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ..errors import PrunetuneError
from ..models.hf import is_lm_head
from ..pruning.masks import attach_mask, get_mask, masked_layers, realise
from .base import Method
from .options import TargetOptions


class PeftMethod(Method):
    """A method built on `peft`: the model is wrapped by get_peft_model; the classifier is trained fully."""

    follows_rollback = False
    resizable = False

    def _config(self, model: nn.Module, targets: list[str]) -> Any:
        """The peft config for `model` adapting the `targets` layers."""
        raise NotImplementedError

    def prepare(self, model: nn.Module) -> nn.Module:
        try:
            import peft  # noqa: F401
        except ImportError:
            raise PrunetuneError(f"finetune.method: {self.name} needs peft; pip install 'prunetune[text]'") from None
        from peft import get_peft_model

        self.base = model
        self.probe = None
        targets = self.targets(model) if issubclass(self.options, TargetOptions) else []
        self.summary["targets"] = len(targets)
        cfg = self._config(model, targets)
        if self.classifier and not is_lm_head(model, self.classifier):  # a language model's head stays frozen
            cfg.modules_to_save = [self.classifier]
        warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
        try:
            wrapped = get_peft_model(model, cfg)
        except (ValueError, TypeError, AttributeError, NotImplementedError) as e:
            raise PrunetuneError(f"finetune.method: {self.name} is not supported for {type(model).__name__} "
                                 f"({str(e).splitlines()[0][:100]}); choose lora, ia3, bitfit or full") from None
        return wrapped

    def trainable(self, model: nn.Module) -> list[nn.Parameter]:
        return [p for p in model.parameters() if p.requires_grad]


class MergeablePeftMethod(PeftMethod):
    """A peft method whose updates are merged into the weights at `finish`, masks kept."""

    mergeable = True

    def probe_with(self, inputs: Any) -> None:
        """Inputs on which logits before and after the merge are compared."""
        self.probe = inputs

    @torch.no_grad()
    def _logits(self, model: nn.Module) -> torch.Tensor | None:
        if self.probe is None:
            return None
        was = model.training
        model.eval()
        out = model(**self.probe) if isinstance(self.probe, dict) else model(self.probe)
        model.train(was)
        return getattr(out, "logits", out).float()

    def finish(self, wrapped: nn.Module) -> nn.Module:
        before_logits = self._logits(wrapped)
        masks = {n.removeprefix("base_model.model."): m.clone() for n, m in masked_layers(wrapped).items()}
        before_nz = _nonzeros(realise(wrapped.get_base_model()), skip=("lora_", "ia3_l", "original_module"))
        # Bake the masks into the weights, let peft merge, then mask again and re-attach.
        base = wrapped.get_base_model()
        for mod in base.modules():
            if get_mask(mod) is not None:
                realise(mod, inplace=True)
        merged = wrapped.merge_and_unload()
        mods = dict(merged.named_modules())
        with torch.no_grad():
            for name, mask in masks.items():
                name = name.removesuffix(".base_layer")
                mod = mods[name]
                mod.weight.mul_(mask)
                attach_mask(mod).mask.copy_(mask)
        plain = realise(merged)
        after_nz = _nonzeros(plain)
        after_logits = self._logits(merged)
        pmods = dict(plain.named_modules())
        leaked = sum(int(torch.count_nonzero(pmods[n.removesuffix(".base_layer")].weight[~m])) for n, m in masks.items())
        self.summary["merge"] = {
            "nonzero_before": before_nz, "nonzero_after": after_nz, "nonzero_gained": after_nz - before_nz,
            "masked_layers": len(masks), "pruned_weights_nonzero_after": leaked,
            "max_logit_diff": None if before_logits is None else float((before_logits - after_logits).abs().max()),
        }
        return merged


def _nonzeros(model: nn.Module, skip: tuple[str, ...] = ()) -> int:
    """Non-zero weights; `skip` leaves out adapter tensors (and peft's frozen copy of the head)."""
    return sum(int(torch.count_nonzero(p)) for n, p in model.named_parameters() if not any(k in n for k in skip))
