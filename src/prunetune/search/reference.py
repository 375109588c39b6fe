"""The study's dense reference: the dense model measured on the validation split."""

from __future__ import annotations

from typing import Any, Callable

from ..measure import measure_stage, reference_counts
from ..recipe import Recipe
from ..session import open_session


def dense_reference(recipe: Recipe, log: Callable[[str], None]) -> dict[str, Any]:
    """The dense model's validation metric and costs (the tolerance's and the plot's reference), and its
    seconds per training epoch (the compute's unit) with the epochs the sweep trained it for."""
    session = open_session(recipe, log)
    task, device = session.task, session.device
    bundle = session.load_data(recipe.data, recipe.model, robustness=recipe.evaluate.robustness, score_on="val")
    dense, info = session.obtain_dense(recipe)
    stage = measure_stage(dense, task, bundle, recipe.evaluate, device, reference_counts(dense, []))
    per_example = ("per_class_accuracy", "per_class", "confusion_matrix", "samples")  # the study keeps the scalars
    history = info.get("history") or []
    timed = [row["epoch_s"] for row in history if row.get("epoch_s")]
    return {"metric": task.metric, task.key: stage[task.metric],
            "stage": {k: v for k, v in stage.items() if k not in per_example}, "cache": info.get("cache"),
            # The compute's unit (compute.py): seconds per dense training epoch, and the epochs trained here.
            "epoch_s": sum(timed) / len(timed) if timed else None, "dense_source": info.get("source"),
            "trained_epochs": len(history) if info.get("source") == "train" else 0}
