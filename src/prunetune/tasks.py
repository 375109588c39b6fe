"""Tasks: the head-independent part of a job (loss, metrics, example inputs), registered by name.

Image and text classification share one task; later tasks (causal LM, regression) register beside it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .registry import TASKS


def to_device(inputs: Any, device: torch.device) -> Any:
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device, non_blocking=True)
    if isinstance(inputs, dict):
        return {k: to_device(v, device) for k, v in inputs.items()}
    return inputs


class Task:
    """What every task gives the pipeline.

    `metric` names the key of `evaluate()`'s result that decides model selection, early stopping,
    the adaptive schedule and the sweep's tolerance; `higher_is_better` says which way it points.
    `score(result)` turns it into one number where higher is always better. `labels` says whether
    the data has class names (classification) or not (language modelling, regression).
    """

    name = "task"
    metric = "accuracy"
    higher_is_better = True
    labels = True

    def forward(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        """The model's output tensor for a batch: keyword inputs (text) or one tensor; HF outputs give `.logits`."""
        out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
        return getattr(out, "logits", out)

    def score(self, result: dict[str, Any]) -> float:
        v = float(result[self.metric])
        return v if self.higher_is_better else -v

    def stage_extras(self, model: nn.Module, bundle, spec, device: torch.device) -> dict[str, Any]:
        """Task-specific records added to every measured stage (`spec`: the recipe's evaluate section)."""
        return {}

    def check_outputs(self, out: torch.Tensor, bundle, where: str) -> None:
        """Refuse a model whose output does not fit the data (one clear line, before any training)."""
        from .errors import PrunetuneError

        if out.shape[-1] != bundle.num_classes:
            raise PrunetuneError(
                f"{where}: the model outputs {out.shape[-1]} classes but the data has {bundle.num_classes}; "
                "match the model's classifier to the data"
            )

    def drop(self, result: dict[str, Any] | float, reference: dict[str, Any] | float) -> float:
        """How much worse `result` is than `reference`, in the metric's units (positive = worse)."""
        r = result if isinstance(result, (int, float)) else float(result[self.metric])
        ref = reference if isinstance(reference, (int, float)) else float(reference[self.metric])
        return ref - r if self.higher_is_better else r - ref


@TASKS.register("classification")
class Classification(Task):
    """Single-label classification: cross-entropy loss, accuracy and per-class accuracy."""

    name = "classification"

    def loss(self, logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)

    @torch.no_grad()
    def predict(self, model: nn.Module, data, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits for the whole dataset (in order) and the mean loss."""
        from .data.base import batches

        was_training = model.training
        model.eval()
        outs, total = [], 0.0
        for x, y in batches(data, batch_size):
            logits = self.forward(model, to_device(x, device)).float().cpu()
            total += float(F.cross_entropy(logits, y, reduction="sum"))
            outs.append(logits)
        model.train(was_training)
        return torch.cat(outs), torch.tensor(total / max(1, len(data)))

    def evaluate(self, model: nn.Module, data, batch_size: int, device: torch.device, class_names: list[str]) -> dict[str, Any]:
        logits, loss = self.predict(model, data, batch_size, device)
        pred = logits.argmax(1)
        correct = pred == data.y
        per_class = {}
        for i, name in enumerate(class_names):
            sel = data.y == i
            per_class[name] = round(float(correct[sel].float().mean()) * 100, 4) if sel.any() else None
        return {"accuracy": round(float(correct.float().mean()) * 100, 4), "per_class_accuracy": per_class, "loss": float(loss)}
