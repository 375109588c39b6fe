"""The fine-tuning method every method extends, and what the methods share (the choice of layers to
adapt, the classifier head's parameters, the trainable summary).

A method wraps the model for training (`prepare`), says which parameters train (`trainable`), and
gives back the plain model to measure and save (`finish`). Each method declares its options model
(`options`): the recipe validates `finetune.peft` through it, and the method reads the validated
instance as `self.peft`.

Example:
    >>> from prunetune.registry import FINETUNE_METHODS
    >>> FINETUNE_METHODS.names()
    ['adapter', 'bitfit', 'full', 'ia3', 'lora', 'prompt_tuning']
    >>> FINETUNE_METHODS.get("lora").options().r
    8
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from torch import nn

from ..errors import PrunetuneError
from ..models.hf import is_lm_head
from ..pruning.hf_conv1d import is_hf_conv1d
from .options import Options

if TYPE_CHECKING:
    from ..recipe import Recipe


class Method:
    """Fine-tuning of every parameter; the base every method extends."""

    name = "full"
    options: type[Options] = Options
    mergeable = False
    # False for methods that wrap the model or add modules: the adaptive schedule's roll-back restores
    # a copy of the plain model, and structured pruning during fine-tuning cannot resize added modules.
    follows_rollback = True
    resizable = True
    default_include: tuple[str, ...] = ("*",)

    def __init__(self, spec: Any, classifier: str | None = None) -> None:
        self.spec = spec
        peft = getattr(spec, "peft", None)  # a dense model's TrainSpec has no fine-tuning options
        self.peft = peft if peft is not None else self.options()
        self.classifier = classifier
        self.summary: dict[str, Any] = {"method": type(self).name}

    @classmethod
    def check(cls, recipe: Recipe) -> None:
        """Raise ValueError (one line naming the field) when the recipe asks what the method cannot do."""

    def prepare(self, model: nn.Module) -> nn.Module:
        return model

    def trainable(self, model: nn.Module) -> list[nn.Parameter]:
        for p in model.parameters():
            p.requires_grad_(True)
        return list(model.parameters())

    def finish(self, model: nn.Module) -> nn.Module:
        return model

    def structure(self) -> dict[str, Any]:
        """What a saved model needs rebuilt besides its base architecture (see `structure.restore_structure`)."""
        return {}

    def targets(self, model: nn.Module) -> list[str]:
        """Linear layers chosen by finetune.peft.include / exclude (methods whose options are
        `TargetOptions`; the classifier is trained fully)."""
        include = list(self.peft.include) if self.peft.include else list(self.default_include)
        exclude = list(self.peft.exclude)
        names = [n for n, m in model.named_modules() if (isinstance(m, nn.Linear) or is_hf_conv1d(m)) and n]
        for field, pats in (("finetune.peft.include", include), ("finetune.peft.exclude", exclude)):
            for p in pats:
                if not any(fnmatchcase(n, p) for n in names):
                    raise PrunetuneError(f"{field}: pattern {p!r} matches no linear layer; available: {', '.join(names[:8])}, ...")
        chosen = [n for n in names if any(fnmatchcase(n, p) for p in include)
                  and not any(fnmatchcase(n, p) for p in exclude)
                  and n != self.classifier and not n.endswith("pooler.dense")]
        if not chosen:
            raise PrunetuneError("finetune.peft.include/exclude: the patterns select no layer to adapt; widen include")
        return chosen


def head_parameters(model: nn.Module, classifier: str | None) -> list[nn.Parameter]:
    """The classifier head's parameters (none for a language model's head, tied to the embeddings)."""
    if not classifier or is_lm_head(model, classifier):
        return []
    mod = dict(model.named_modules()).get(classifier)
    return list(mod.parameters()) if mod is not None else []


def trainable_summary(model: nn.Module) -> dict[str, Any]:
    total = sum(p.numel() for p in model.parameters())
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_params": train, "total_params": total, "trainable_fraction": round(train / max(1, total), 6)}
