"""The Task base class: what every task gives the pipeline (loss, metric, example inputs), and how its
metric reads (units, formatting, direction).

A task is built from a recipe with `Task.from_recipe` (the recipe's `task`, following its
`evaluate.metric`), from a saved model with `Task.from_manifest`, and from a stored report or sweep
document with `Task.of_report` (by the metric name it records).

Example:
    >>> from prunetune.tasks import Task
    >>> t = Task.of_report({"metric": "rmse"})
    >>> (t.name, t.direction, t.units, t.format(0.91234), t.threshold(0.5, 0.25))
    ('regression', 'minimize', 'rmse', '0.9123', 0.75)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import nn

from ..data.base import batches
from ..errors import PrunetuneError
from ..registry import DATA_SOURCES, TASKS

if TYPE_CHECKING:
    from ..artifacts import Manifest
    from ..recipe import Recipe


def to_device(inputs: Any, device: torch.device) -> Any:
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device, non_blocking=True)
    if isinstance(inputs, dict):
        return {k: to_device(v, device) for k, v in inputs.items()}
    return inputs


class Task:
    """What every task gives the pipeline.

    `metric` names the key of `evaluate()`'s result that decides model selection, early stopping,
    the adaptive schedule and the sweep's tolerance (the class attribute is the task's default; a
    recipe may pick another of `metrics` with `evaluate.metric`); `higher_is_better` says which way it
    points. `score(result)` turns it into one number where higher is always better. `labels` says
    whether the data has class names (classification) or not (language modelling, regression).
    `percent`: the metric is a percentage (tolerances read in points). `distils`: a teacher's
    logits can be distilled into the student (`finetune.distill`).
    """

    name = "task"
    metric = "accuracy"
    metrics: tuple[str, ...] = ()  # the metrics evaluate.metric may name besides `metric`
    higher_is_better = True
    labels = True
    percent = False
    distils = True
    structured_wanda = False  # Wanda scores for structured pruning (a decoder's heads and MLP neurons)
    data_kind = "labelled data"  # what a data source made for this task only holds (in error messages)
    short_names: dict[str, str] = {}  # metric -> its name in table headers ("acc")

    # -- building -----------------------------------------------------------------------------

    @classmethod
    def choices(cls) -> tuple[str, ...]:
        """The metrics `evaluate.metric` may name for this task, its default first."""
        return (cls.metric, *(m for m in cls.metrics if m != cls.metric))

    @staticmethod
    def named(name: str, metric: str | None = None) -> "Task":
        """The registered task `name`, following `metric` (None: the task's default)."""
        task = TASKS.get(name, "task")()
        if metric is not None:
            task.metric = metric
        return task

    @staticmethod
    def from_recipe(recipe: "Recipe") -> "Task":
        """The recipe's task, following its `evaluate.metric`."""
        return Task.named(recipe.task, recipe.evaluate.metric)

    @staticmethod
    def from_manifest(manifest: "Manifest") -> "Task":
        """A saved model's task, following the metric of the recipe it was made with."""
        return Task.named(manifest.task, ((manifest.recipe or {}).get("evaluate") or {}).get("metric"))

    @staticmethod
    def of_report(doc: Mapping[str, Any]) -> "Task":
        """The task that scored a stored report, sweep document or dense reference, found by the metric
        it records (`metric`; a report from before reports named it is accuracy). An unknown metric (a
        plugin's task that is not installed) gets a plain Task in the recorded direction."""
        metric = doc.get("metric") or "accuracy"
        for name in TASKS.names():
            cls = TASKS.get(name)
            if metric in cls.choices():
                return Task.named(name, metric)
        task = Task()
        task.metric, task.higher_is_better = metric, bool(doc.get("higher_is_better", True))
        return task

    @classmethod
    def check_recipe(cls, recipe: "Recipe") -> None:
        """Raise ValueError (one line naming the field) for what `recipe` asks of this task that it cannot
        do; the recipe's validation calls it, before any work."""
        source = recipe.data.source
        feeds = getattr(DATA_SOURCES.get(source), "task", None)  # a source made for one task only (lm_text)
        if feeds is not None and feeds != cls.name:
            raise ValueError(f"task: data.source {source} is {TASKS.get(feeds).data_kind}; set task {feeds}")
        if recipe.prune.importance == "wanda" and recipe.prune.method == "structured" and not cls.structured_wanda:
            raise ValueError("prune.importance: wanda with structured pruning is supported for causal language models "
                             "(heads and MLP neurons); use l1, l2 or taylor, or wanda with unstructured or nm")
        metric = recipe.evaluate.metric
        if metric is not None and metric not in cls.choices():
            raise ValueError(f"evaluate.metric: task {cls.name} has no metric {metric!r}; choose one of: "
                             f"{', '.join(cls.choices())}")
        if recipe.finetune.distill_section is not None and not cls.distils:
            raise ValueError(f"finetune.distill: task {cls.name} cannot be distilled (the student learns the teacher's "
                             "class probabilities); remove finetune.distill")

    # -- the model ----------------------------------------------------------------------------

    def forward(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        """The model's output tensor for a batch: keyword inputs (text) or one tensor; HF outputs give `.logits`."""
        out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
        return getattr(out, "logits", out)

    def stage_extras(self, model: nn.Module, bundle, spec, device: torch.device) -> dict[str, Any]:
        """Task-specific records added to every measured stage (`spec`: the recipe's evaluate section)."""
        return {}

    def check_outputs(self, out: torch.Tensor, bundle, where: str) -> None:
        """Refuse a model whose output does not fit the data (one clear line, before any training)."""
        if out.shape[-1] != bundle.num_classes:
            raise PrunetuneError(
                f"{where}: the model outputs {out.shape[-1]} classes but the data has {bundle.num_classes}; "
                "match the model's classifier to the data"
            )

    def prediction(self, out: torch.Tensor) -> torch.Tensor:
        """What `predict` keeps of a batch's model output (classification: the logits)."""
        return out.float()

    def summed_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of a batch of `prediction`s, summed over its examples (`predict` averages it)."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, model: nn.Module, data, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Every example's prediction, in order, and the mean loss over `data`."""
        was_training = model.training
        model.eval()
        outs, total = [], 0.0
        for x, y in batches(data, batch_size):
            pred = self.prediction(self.forward(model, to_device(x, device))).cpu()
            total += float(self.summed_loss(pred, y))
            outs.append(pred)
        model.train(was_training)
        return torch.cat(outs), torch.tensor(total / max(1, len(data)))

    # -- the metric ---------------------------------------------------------------------------

    def score(self, result: dict[str, Any]) -> float:
        v = float(result[self.metric])
        return v if self.higher_is_better else -v

    def drop(self, result: dict[str, Any] | float, reference: dict[str, Any] | float) -> float:
        """How much worse `result` is than `reference`, in the metric's units (positive = worse)."""
        r = result if isinstance(result, (int, float)) else float(result[self.metric])
        ref = reference if isinstance(reference, (int, float)) else float(reference[self.metric])
        return ref - r if self.higher_is_better else r - ref

    def threshold(self, dense: float, tolerance: float) -> float:
        """The worst metric still within `tolerance` of `dense`: dense - tol (higher is better) or dense + tol."""
        return dense - tolerance if self.higher_is_better else dense + tolerance

    def hopeless(self, value: float, dense: float, tolerance: float, slack: float, epochs_left: int) -> bool:
        """Whether a run at `value` after an epoch should stop: it is worse than the dense model by more
        than the tolerance plus `slack` (metric units) per epoch left. Never with no epochs left: a
        finished run is kept (it still belongs on a sweep's Pareto front)."""
        return epochs_left > 0 and self.drop(value, dense) > tolerance + slack * epochs_left

    @property
    def key(self) -> str:
        """The metric's key in a training history row and a sweep trial: `val_<metric>`."""
        return f"val_{self.metric}"

    @property
    def direction(self) -> str:
        """The Optuna direction of the metric."""
        return "maximize" if self.higher_is_better else "minimize"

    @property
    def units(self) -> str:
        """How a tolerance reads: '3.0 pt' for a percentage, '0.05 rmse' otherwise."""
        return "pt" if self.percent else self.metric

    @property
    def label(self) -> str:
        """The metric's short name in table headers ('acc' for accuracy)."""
        return self.short_names.get(self.metric, self.metric)

    @property
    def headline(self) -> str:
        """What precedes the numbers of a one-line summary: nothing for the task's default percentage
        (classification accuracy: 'dense 91.20% -> ...'), else the metric ('rmse dense 0.9512 -> ...')."""
        return "" if self.percent and self.metric == type(self).metric else f"{self.label} "

    def format(self, value: float | None, signed: bool = False) -> str:
        """Two decimals for percentages (and large values such as perplexity); four for small ones such
        as RMSE; '' for no value. `signed`: with its sign (a difference)."""
        if value is None:
            return ""
        sign = "+" if signed else ""
        return f"{value:{sign}.2f}" if self.percent or abs(value) >= 10 else f"{value:{sign}.4f}"

    def show(self, value: float) -> str:
        """A value with its unit, as a one-line summary shows it ('91.20%', '0.9512')."""
        return self.format(value) + ("%" if self.percent else "")
