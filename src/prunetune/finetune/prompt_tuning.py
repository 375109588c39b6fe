"""Prompt tuning (peft): trainable virtual tokens prepended to every input; the encoder stays frozen.
Not mergeable: the saved model keeps the prompt, and loading re-wraps it (`structure.py`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field
from torch import nn

from ..errors import PrunetuneError
from ..models.hf import is_hf
from ..registry import FINETUNE_METHODS
from .options import Options
from .peft import PeftMethod

if TYPE_CHECKING:
    from ..recipe import Recipe


class PromptTuningOptions(Options):
    """Prompt tuning: how many virtual tokens."""

    virtual_tokens: int = Field(20, ge=1, description="prompt_tuning: number of virtual tokens")


@FINETUNE_METHODS.register("prompt_tuning")
class PromptTuning(PeftMethod):
    """Trainable virtual tokens prepended to every input (peft); the encoder stays frozen."""

    name = "prompt_tuning"
    options = PromptTuningOptions

    @classmethod
    def check(cls, recipe: Recipe) -> None:
        if not is_hf(recipe.model.name):
            raise ValueError(
                f"finetune.method prompt_tuning needs a transformers model with token embeddings, not {recipe.model.name!r}; "
                "choose lora, ia3, bitfit or full"
            )

    def _config(self, model: nn.Module, targets: list[str]) -> Any:
        from peft import PromptTuningConfig, TaskType

        if getattr(model, "config", None) is None or not hasattr(model, "get_input_embeddings"):
            raise PrunetuneError("finetune.method: prompt_tuning needs a transformers model with token embeddings; "
                                 "choose lora, ia3, bitfit or full")
        return PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=self.peft.virtual_tokens)

    def prepare(self, model: nn.Module) -> nn.Module:
        wrapped = super().prepare(model)
        self.summary["virtual_tokens"] = self.peft.virtual_tokens
        return wrapped

    def finish(self, wrapped: nn.Module) -> nn.Module:
        return wrapped

    def structure(self) -> dict[str, Any]:
        return {"prompt_tuning": {"virtual_tokens": self.peft.virtual_tokens, "classifier": self.classifier}}
