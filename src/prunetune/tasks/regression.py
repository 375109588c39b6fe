"""The `regression` task: one number per example (e.g. a rating), MSE loss, RMSE (lower is better) and MAE.

The model outputs [batch, 1] (or [batch]); targets are float. Model selection, early stopping, the
adaptive schedule and report drops all follow RMSE downwards.

Example:
    >>> import torch
    >>> Regression().loss(torch.tensor([[1.0], [3.0]]), torch.tensor([1.0, 1.0])).item()
    2.0
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import PrunetuneError
from ..registry import TASKS
from .base import Task


@TASKS.register("regression")
class Regression(Task):
    """One number per example (ratings): MSE loss, RMSE (lower is better) and MAE."""

    name = "regression"
    metric = "rmse"
    higher_is_better = False
    labels = False
    distils = False  # distillation matches class probabilities; one number has none

    @staticmethod
    def _flat(out: torch.Tensor) -> torch.Tensor:
        return out.float().reshape(out.shape[0], -1)[:, 0] if out.dim() > 1 else out.float()

    def loss(self, out: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        return F.mse_loss(self._flat(out), target.float())

    def check_outputs(self, out: torch.Tensor, bundle, where: str) -> None:
        width = out.shape[-1] if out.dim() > 1 else 1
        if width != 1:
            raise PrunetuneError(f"{where}: the model outputs {width} values per example but task regression predicts one; "
                                 "use a model with one output (e.g. recommender)")
        if not torch.is_floating_point(bundle.train.y):
            raise PrunetuneError("task: regression needs numeric targets (e.g. data.source ratings); "
                                 "for class labels use task classification")

    def prediction(self, out: torch.Tensor) -> torch.Tensor:
        return self._flat(out)

    def summed_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(pred, target.float(), reduction="sum")

    def evaluate(self, model: nn.Module, data, batch_size: int, device: torch.device, class_names: list[str]) -> dict[str, Any]:
        pred, mse = self.predict(model, data, batch_size, device)
        err = pred - data.y.float()
        return {"rmse": round(float(mse) ** 0.5, 6), "mae": round(float(err.abs().mean()), 6), "loss": float(mse)}
