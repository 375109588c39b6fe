"""Recipe checks for language models, run by `Recipe` validation (one clear line before any work)."""

from __future__ import annotations

LM_METHODS = ("full", "bitfit", "lora", "ia3")


def check_recipe(recipe, registry) -> None:
    """Raise ValueError (reported as one line naming the field) for what causal LMs do not support."""
    from ..models.hf import is_hf

    source = registry.DATA_SOURCES.get(recipe.data.source)
    lm_data = getattr(source, "task", None) == "causal_lm"
    if recipe.task == "causal_lm" and not lm_data:
        raise ValueError(f"data.source: task causal_lm reads language-model text; use data.source lm_text "
                         f"(not {recipe.data.source!r})")
    if lm_data and recipe.task != "causal_lm":
        raise ValueError(f"task: data.source {recipe.data.source} is language-model text; set task causal_lm")
    if recipe.task != "causal_lm":
        if recipe.prune.importance == "wanda" and recipe.prune.method == "structured":
            raise ValueError("prune.importance: wanda with structured pruning is supported for causal language models "
                             "(heads and MLP neurons); use l1, l2 or taylor, or wanda with unstructured or nm")
        return
    if not is_hf(recipe.model.name):
        raise ValueError(f"model.name: task causal_lm needs a Hugging Face causal language model (hf:<hub id or folder>), "
                         f"not {recipe.model.name!r}")
    if recipe.finetune.method not in LM_METHODS:
        raise ValueError(f"finetune.method: {recipe.finetune.method} is not supported for causal language models; "
                         f"choose one of: {', '.join(LM_METHODS)}")
    if recipe.finetune.distill is not None:
        raise ValueError("finetune.distill: distillation is not supported for causal language models yet; remove it")
    if not recipe.prune.keep_classifier:
        raise ValueError("prune.keep_classifier: a language model's head (tied to its token embeddings) is never pruned; "
                         "leave it true")


def refuse_lm_folder(manifest, folder, command: str) -> None:
    """predict / export / refine are for classifiers: a language-model folder gets one clear line."""
    from ..errors import PrunetuneError

    if manifest.task == "causal_lm":
        raise PrunetuneError(f"{folder}: a causal language model; `prunetune {command}` does not support language models "
                             "yet (`prunetune eval` reports its perplexity)")
