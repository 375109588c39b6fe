"""The study's dense reference: the dense model measured on the validation split, and the seconds one
dense training epoch takes, the unit of the compute a sweep spends (compute.py)."""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from typing import Any, Callable

import torch

from ..measure import measure_stage, reference_counts
from ..recipe import Recipe
from ..session import open_session
from ..training import Trainer

CALIBRATION_STEPS = 20  # timed training steps when the dense model was not trained here
WARMUP_STEPS = 3  # untimed steps before them


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
    trained = info.get("source") == "train"
    timed = [row["epoch_s"] for row in history if row.get("epoch_s")]
    if trained and timed:  # trained by this process: its own epochs are the unit
        epoch_s, how = sum(timed) / len(timed), "the dense training epochs of this sweep"
    else:  # a cached model's history may come from another machine, or a busier one: timed here instead
        epoch_s, how = epoch_seconds_here(dense, task, bundle, recipe, device), \
            f"{CALIBRATION_STEPS} dense training steps timed here, scaled to an epoch, plus a validation pass"
    return {"metric": task.metric, task.key: stage[task.metric],
            "stage": {k: v for k, v in stage.items() if k not in per_example}, "cache": info.get("cache"),
            "epoch_s": epoch_s, "epoch_s_from": how, "dense_source": info.get("source"),
            "trained_epochs": len(history) if trained else 0}


def epoch_seconds_here(dense, task, bundle, recipe: Recipe, device) -> float:
    """Seconds one dense training epoch takes in this process now: CALIBRATION_STEPS steps of a copy of the
    dense model with the dense recipe's batch size, optimizer and augmentation (after WARMUP_STEPS
    untimed ones), scaled to the epoch's steps, plus one validation pass (a fine-tuning epoch's `epoch_s`
    includes one too). On the 2-core benchmark host the cached small CNN's history said 199 s per epoch, recorded
    while other jobs ran; the same epoch took 55.6 s on the idle machine."""
    spec = recipe.dense
    steps = math.ceil(len(bundle.train) / spec.batch_size)
    k = min(CALIBRATION_STEPS, steps)

    def part(n_steps: int):
        n = min(len(bundle.train), n_steps * spec.batch_size)
        return dataclasses.replace(bundle, train=bundle.train.subset(torch.arange(n)), val=bundle.val.subset(torch.arange(1)))

    trainer = Trainer(copy.deepcopy(dense), task, part(WARMUP_STEPS), spec, device, recipe.seed, desc="calibrate",
                      log=lambda m: None)
    trainer.fit(1)  # warms allocations and caches up, untimed
    trainer.bundle = part(k)
    trainer.fit(1)
    t0 = time.perf_counter()
    task.evaluate(dense, bundle.val, bundle.eval_batch_size, device, bundle.class_names)
    return trainer.history[-1]["epoch_s"] * steps / k + (time.perf_counter() - t0)
