"""What a trial is scored by: the task's validation metric (its direction, the tolerance's threshold,
the early-stop rule) and a measured cost (latency, non-zeros, gzip bytes or MACs); and the trial
itself, a normal run scored on the validation split."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .. import pipeline
from ..artifacts import load_model
from ..data import build_data
from ..errors import PrunetuneError
from ..measure import example_batch
from ..pruning.masks import realise
from ..recipe import Recipe
from ..registry import SCHEDULES
from ..reporting.format import row_speedup, short
from ..robustness import floor_accuracy
from ..tasks import Task
from ..timing import compare_models
from .compute import study_spent
from .space import validate, with_params
from .storage import optuna_module

if TYPE_CHECKING:
    from .study import Sweep


def _relative_latency(stage: dict[str, Any], dense: dict[str, Any] | None = None) -> float:
    """Latency at batch N relative to the dense model's, both measured in the same trial (so a busy
    machine's drift between trials cancels out): 1 / measured speedup."""
    if dense is None:
        return 1.0
    return stage["latency_ms"]["batch_N"]["p50"] / dense["latency_ms"]["batch_N"]["p50"]


OBJECTIVES = {
    "latency": ("latency relative to dense (batch N)", _relative_latency),
    "nonzero": ("non-zero parameters", lambda s, d=None: s["nonzero_params"]),
    "size": ("gzip bytes", lambda s, d=None: s["gzip_bytes"]),
    "macs": ("MACs", lambda s, d=None: s["macs"]),
}


def dense_cost(objective: str, stage: dict[str, Any]) -> float | None:
    """The dense model's own cost (its point on the Pareto plot); None when its stage lacks the measurement."""
    try:
        return OBJECTIVES[objective][1](stage)
    except (KeyError, TypeError):
        return None


def study_task(study) -> Task:
    """The task (metric and direction) a stored study was created with; a study from before the sweep
    followed the task's metric has no `metric` in its dense reference and maximised accuracy."""
    dense = study.user_attrs.get("dense") or {}
    return Task.of_report({"metric": dense.get("metric"), "higher_is_better": study.directions[0].name == "MAXIMIZE"})


def constraints(trial) -> tuple[float, ...]:
    """Optuna 4's `constraints_func`: the value the objective stored (> 0: below the robustness floor).
    Optuna 5 deprecates it; there the objective calls `trial.set_constraint` itself."""
    return tuple(trial.user_attrs.get("constraint", (0.0,)))


def _total_epochs(recipe: Recipe) -> int:
    phases = SCHEDULES.get(recipe.prune.schedule.kind)(recipe.prune, recipe.finetune.epochs)
    return sum(p.epochs for p in phases)


def interleaved_latency_ratio(dense_dir: Path, model_dir: Path, recipe: Recipe, masked: bool = False) -> dict[str, Any]:
    """The saved model timed against the dense model alternately at evaluate.latency_batch
    (`timing.compare_models`, evaluate.latency_rounds rounds): the speedup record (ratio dense / model,
    its 95 % interval `low`..`high`, verdict, noise flag) plus `cost` = 1 / ratio, the trial's
    latency relative to dense, with `cost_low` / `cost_high` = 1 / high, 1 / low."""
    task = Task.from_recipe(recipe)
    bundle = build_data(recipe.data, recipe.seed, recipe.model)
    x = example_batch(bundle.val, recipe.evaluate.latency_batch, recipe.evaluate.sequence_length)
    threads = recipe.evaluate.threads or torch.get_num_threads()
    dense, model = realise(load_model(dense_dir)[0]), realise(load_model(model_dir)[0])
    ev = recipe.evaluate
    rec = compare_models(dense, model, task.forward, x, threads=threads, rounds=ev.latency_rounds,
                         min_run_time=ev.min_run_time, masked=masked)
    return {**rec, "cost": 1.0 / rec["ratio"], "cost_low": 1.0 / rec["high"], "cost_high": 1.0 / max(rec["low"], 1e-6)}


def _measured_n(rep: dict[str, Any]) -> dict[str, Any]:
    """The run's fine-tuned-vs-dense record at batch N (empty for a run without latency)."""
    return ((rep.get("speedup") or {}).get("finetuned", {}).get("measured") or {}).get("batch_N") or {}


def over_budget(study, budget: float | None, times: list[float]) -> bool:
    """Whether one more fine-tuning epoch of the running trial (its mean epoch so far, in dense epochs) would take
    the study's compute past `budget` (search.budget_dense_epochs): the trial stops instead, so a budget is a
    limit, not a target a last long trial overruns."""
    per_epoch = (study.user_attrs.get("dense") or {}).get("epoch_s")
    if budget is None or not times or not per_epoch:
        return False
    return study_spent(study) + (sum(times) / len(times)) / per_epoch > budget


def run_trial(s: Sweep, trial, dense_val: float) -> tuple[float, float]:
    """One trial of sweep `s`: a run of the searched point, scored on validation, stopped early when
    hopeless; (validation metric, cost), and the details in the trial's user attributes."""
    optuna = optuna_module()
    params = {d.name: d.suggest(trial) for d in s.dims}
    data = with_params(s.base, params)
    data["name"] = f"{s.recipe.name}-trial{trial.number}"
    try:
        recipe = validate(data, "trial")
    except PrunetuneError as e:  # an invalid combination (e.g. N:M with a gradual schedule)
        trial.set_user_attr("invalid", str(e))
        s.log(f"trial {trial.number}: skipped, invalid combination ({e})")
        raise optuna.TrialPruned() from None
    trial.set_user_attr("recipe", data)
    m, key = s.metric, f"val_{s.metric}"
    threshold = s.task.threshold(dense_val, s.spec.tolerance)
    total, seen, curve, times = _total_epochs(recipe), [0], [], []
    rung = s.rungs.start(trial.number) if s.rungs is not None else None  # search.fidelity: fidelity.py

    def check(row: dict[str, Any]) -> None:
        seen[0] += 1
        curve.append(row[key])
        times.append(float(row.get("epoch_s") or 0.0))
        trial.set_user_attr("epoch_s", times)  # the compute spent (compute.py), kept however the trial ends
        stop = s.task.hopeless(row[key], dense_val, s.spec.tolerance, s.spec.early_stop_slack, max(0, total - seen[0]))
        if not stop and rung is not None and rung.report(s.task.drop(row[key], dense_val), s.spec.tolerance, seen[0],
                                                         last=seen[0] >= total):
            stop = True
            trial.set_user_attr("pruned_by", s.spec.fidelity)
            trial.set_user_attr("recovery_credit", round(rung.credit, 4))
        if not stop and seen[0] < total and over_budget(trial.study, s.spec.budget_dense_epochs, times):
            stop = True  # the next epoch would take the sweep past search.budget_dense_epochs
            trial.set_user_attr("pruned_by", "budget")
        if stop:
            trial.set_user_attr("val_curve", curve)
            trial.set_user_attr("stopped_at_epoch", seen[0])
            raise optuna.TrialPruned(f"validation {m} {s.task.format(row[key])} after epoch {seen[0]}")

    folder = s.out / "trials" / f"trial-{trial.number:04d}"
    if folder.exists():
        shutil.rmtree(folder)
    shown = ", ".join(f"{k}={short(v)}" for k, v in params.items())
    s.log(f"trial {trial.number}: {shown}")
    t0 = time.time()
    try:
        rep = pipeline.run(recipe, folder, log=lambda m: None, score_on="val", save=s.spec.objective == "latency",
                           on_finetune_epoch=check, checkpoint=False)
    except optuna.TrialPruned:
        if rung is not None:
            rung.close("pruned")
        by = (" by the compute budget" if trial.user_attrs.get("pruned_by") == "budget" else
              f" by {s.spec.fidelity}, {s.task.format(trial.user_attrs['recovery_credit'])} of later recovery credited"
              if trial.user_attrs.get("pruned_by") else "")
        s.log(f"trial {trial.number}: stopped early{by} (validation {m} {s.task.format(curve[-1])}, "
              f"threshold {s.task.format(threshold)})")
        raise
    except BaseException:
        if rung is not None:
            rung.close("fail")
        raise
    if rung is not None:
        rung.close("complete")
    f, d = rep["stages"]["finetuned"], rep["stages"]["dense"]
    cost = float(OBJECTIVES[s.spec.objective][1](f, d))
    timed = _measured_n(rep)  # the run's own alternating timing of the fine-tuned model against dense
    if s.spec.objective == "latency" and (folder / "model").exists() and rep["dense"].get("cache"):
        # Dense and pruned timed back to back, alternately: a busy machine's drift cancels out.
        timed = interleaved_latency_ratio(Path(rep["dense"]["cache"]), folder / "model", recipe, bool(timed.get("masked")))
        shutil.rmtree(folder / "model", ignore_errors=True)  # only the balance point's model is kept (OUT/balance)
    elif s.spec.objective == "latency" and timed:
        timed = {**timed, "cost_low": 1.0 / timed["high"], "cost_high": 1.0 / max(timed["low"], 1e-6)}
    if s.spec.objective == "latency" and timed.get("cost_low") is not None:
        cost = 1.0 / timed["ratio"]
    # The speedup's interval whatever the objective (the speedup column never shows noise as a number);
    # the cost's interval when the cost is latency.
    interval = ({"speedup_low": timed["low"], "speedup_high": timed["high"], "verdict": timed["verdict"],
                 "noisy": timed["noisy"], "reasons": timed["reasons"]} if timed.get("low") is not None else {})
    if s.spec.objective == "latency" and timed.get("cost_low") is not None:
        interval.update({"cost_low": round(timed["cost_low"], 4), "cost_high": round(timed["cost_high"], 4)})
    result = {
        key: f[m], "cost": cost, "params": f["params"], "nonzero_params": f["nonzero_params"],
        "sparsity": f["sparsity"], "macs": f["macs"], "gzip_bytes": f["gzip_bytes"],
        "latency_ms": (f.get("latency_ms") or {}).get("batch_N", {}).get("p50"),
        "speedup": (round(1.0 / cost, 3) if s.spec.objective == "latency" and cost > 0
                    else rep["speedup"]["finetuned"].get("speedup_batch_N")),
        "dense_latency_ms": (d.get("latency_ms") or {}).get("batch_N", {}).get("p50"),
        "masked": bool(_measured_n(rep).get("masked")), **interval,
        "wall_s": round(time.time() - t0, 1), "val_curve": curve,
    }
    floor = s.spec.robustness_floor
    if floor is not None:  # feasible when robust validation accuracy >= the floor (constraint <= 0)
        result["robust_accuracy"] = floor_accuracy(f, floor)
        constraint = float(floor.min_accuracy - result["robust_accuracy"])
        trial.set_user_attr("constraint", [constraint])
        if hasattr(trial, "set_constraint"):
            trial.set_constraint("robustness_floor", constraint)
    trial.set_user_attr("result", result)
    s.log(f"trial {trial.number}: val {s.task.format(f[m])} (dense {s.task.format(dense_val)}), {s.spec.objective} "
          f"{short(cost)}" + (f", speedup {row_speedup(result)}" if result["speedup"] else "")
          + ("" if not result.get("noisy") else f" (noisy: {'; '.join(result['reasons'])})") + f" ({result['wall_s']:.0f}s)")
    return f[m], cost
