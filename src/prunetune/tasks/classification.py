"""The `classification` task (images and text): cross-entropy loss; accuracy, per-class precision,
recall and F1, macro-F1 and the confusion matrix.

The recipe picks the metric that model selection, early stopping, the adaptive schedule and the
sweep follow (`evaluate.metric`): `accuracy` (default) or `macro_f1`, the mean F1 over classes, which
a lost minority class pulls down where accuracy hides it.

Rates are percentages rounded to 4 decimals, like accuracy. A ratio with nothing to divide by (a class
never predicted, or absent from the data) counts as 0, as scikit-learn's `zero_division=0`; macro-F1
averages over the classes in the data or the predictions (scikit-learn's default labels), and a class
in neither gets None.

Example:
    >>> import torch
    >>> m = class_metrics(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1]), ["a", "b"])
    >>> m["confusion_matrix"], m["per_class"]["b"]["precision"], m["macro_f1"]
    ([[1, 1], [0, 2]], 66.6667, 73.3333)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..registry import TASKS
from .base import Task


def _pct(x: float) -> float:
    return round(x * 100, 4)


def class_metrics(target: torch.Tensor, pred: torch.Tensor, class_names: list[str]) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support, macro-F1 and the confusion matrix (rows: true class,
    columns: predicted class, both in `class_names` order)."""
    n = len(class_names)
    cm = torch.bincount(target.long() * n + pred.long(), minlength=n * n).reshape(n, n)
    tp, support, predicted = cm.diag().double(), cm.sum(1).double(), cm.sum(0).double()
    zero = torch.zeros_like(tp)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), zero)
    recall = torch.where(support > 0, tp / support.clamp(min=1), zero)
    # 2 tp / (2 tp + fp + fn), scikit-learn's form: no rounding of precision and recall first.
    f1 = torch.where(support + predicted > 0, 2 * tp / (support + predicted).clamp(min=1), zero)
    seen = (support + predicted) > 0
    per_class = {}
    for i, name in enumerate(class_names):
        per_class[name] = ({"precision": _pct(float(precision[i])), "recall": _pct(float(recall[i])),
                            "f1": _pct(float(f1[i])), "support": int(support[i])} if seen[i] else
                           {"precision": None, "recall": None, "f1": None, "support": 0})
    macro = float(f1[seen].mean()) if bool(seen.any()) else 0.0
    return {"macro_f1": _pct(macro), "per_class": per_class, "confusion_matrix": cm.tolist()}


@TASKS.register("classification")
class Classification(Task):
    """Single-label classification: cross-entropy loss, accuracy, per-class precision / recall / F1, macro-F1."""

    name = "classification"
    metric = "accuracy"
    metrics = ("accuracy", "macro_f1")
    percent = True
    short_names = {"accuracy": "acc", "macro_f1": "macro-F1"}

    def loss(self, logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)

    def summed_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(pred, target, reduction="sum")

    def evaluate(self, model: nn.Module, data, batch_size: int, device: torch.device, class_names: list[str]) -> dict[str, Any]:
        logits, loss = self.predict(model, data, batch_size, device)
        pred = logits.argmax(1)
        correct = pred == data.y
        per_class = {}
        for i, name in enumerate(class_names):
            sel = data.y == i
            per_class[name] = round(float(correct[sel].float().mean()) * 100, 4) if sel.any() else None
        return {"accuracy": round(float(correct.float().mean()) * 100, 4), "per_class_accuracy": per_class,
                **class_metrics(data.y, pred, class_names), "loss": float(loss)}
