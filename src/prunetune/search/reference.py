"""The study's dense reference: the dense model measured on the validation split."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from ..cache import obtain_dense
from ..data import build_data
from ..measure import measure_stage, reference_counts
from ..pipeline import seed_everything
from ..recipe import Recipe
from ..registry import TASKS
from ..robustness import check_inputs as check_robustness
from ..training import pick_device


def dense_reference(recipe: Recipe, log: Callable[[str], None]) -> dict[str, Any]:
    """The dense model's validation metric and costs (the tolerance's and the plot's reference)."""
    seed_everything(recipe.seed)
    device = pick_device(recipe.evaluate.device)
    task = TASKS.get(recipe.task, "task")()
    bundle = build_data(recipe.data, recipe.seed, recipe.model)
    check_robustness(bundle, recipe.evaluate.robustness, task)
    bundle = dataclasses.replace(bundle, test=bundle.val)
    dense, info = obtain_dense(recipe, bundle, task, device, log)
    stage = measure_stage(dense, task, bundle, recipe.evaluate, device, reference_counts(dense, []))
    return {"metric": task.metric, f"val_{task.metric}": stage[task.metric],
            "stage": {k: v for k, v in stage.items() if k not in ("per_class_accuracy", "samples")}, "cache": info.get("cache")}
