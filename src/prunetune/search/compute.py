"""The compute a sweep spent, in dense-training-epoch equivalents (and `search.budget_dense_epochs`,
which launches a trial only while the compute spent plus the mean of the trials so far fits it, and
stops a running trial before a fine-tuning epoch that would take the spent compute past it:
objective.over_budget).

A trial's compute is the fine-tuning epochs it actually ran (a stopped or pruned trial's epochs up to
the stop; a killed worker's epochs as far as recorded) weighted by its cost relative to one dense
training epoch: its measured fine-tuning seconds (the trainer's `epoch_s`, summed) divided by the
dense model's seconds per training epoch in the same process (reference.py: the mean `epoch_s` of the
dense training when this sweep ran it, else a short timed slice of a dense epoch, since a cached
model's history may have been timed on another or a busier machine; both include a validation pass).
Basis "measured". A study from before this was recorded, with no dense timing, weights each epoch by the
trial's MACs over the dense model's (1 where a stopped trial's MACs are unknown): basis "macs".
The dense training counts as its epochs when the sweep itself trained the dense model.
"""

from __future__ import annotations

from typing import Any


def trial_record(t) -> dict[str, Any]:
    """What one Optuna trial recorded of its fine-tuning: epochs run, their seconds, its wall time."""
    epoch_s = list(t.user_attrs.get("epoch_s") or [])
    wall = (t.user_attrs.get("result") or {}).get("wall_s")
    if wall is None and t.datetime_start is not None and t.datetime_complete is not None:
        wall = round((t.datetime_complete - t.datetime_start).total_seconds(), 1)
    return {"epochs_run": len(epoch_s), "finetune_s": round(sum(epoch_s), 3), "wall_s": wall}


def dense_epochs(row: dict[str, Any], dense: dict[str, Any]) -> float:
    """One trial's compute in dense training epochs (see the module's docstring for the two bases)."""
    per_epoch = dense.get("epoch_s")
    if per_epoch:
        return row["finetune_s"] / per_epoch
    macs, ref = row.get("macs"), (dense.get("stage") or {}).get("macs")
    return row["epochs_run"] * (macs / ref if macs and ref else 1.0)


def spent(rows: list[dict[str, Any]], dense: dict[str, Any]) -> float:
    """Dense-epoch equivalents spent so far: every trial's plus the dense training the sweep ran."""
    return sum(dense_epochs(r, dense) for r in rows) + float(dense.get("trained_epochs") or 0)


def expected_next(rows: list[dict[str, Any]], dense: dict[str, Any]) -> float:
    """What the next trial is expected to spend: the mean of the trials that ran an epoch (0 before any)."""
    costs = [dense_epochs(r, dense) for r in rows if r["epochs_run"]]
    return sum(costs) / len(costs) if costs else 0.0


def summary(rows: list[dict[str, Any]], dense: dict[str, Any], budget: float | None) -> dict[str, Any]:
    """The compute block of sweep.json; sets each row's `dense_epochs`."""
    for r in rows:
        r["dense_epochs"] = round(dense_epochs(r, dense), 4)
    total = spent(rows, dense)
    ahead = expected_next(rows, dense)
    basis = "measured" if dense.get("epoch_s") else "macs"
    return {
        "dense_epochs": round(total, 3), "basis": basis, "dense_epoch_s": dense.get("epoch_s"),
        "dense_epoch_s_from": dense.get("epoch_s_from"),
        "dense_training_epochs": dense.get("trained_epochs") or 0,
        "trials": len(rows), "finetune_epochs": sum(r["epochs_run"] for r in rows),
        "wall_s": round(sum(r["wall_s"] or 0.0 for r in rows), 1),
        "next_trial_expected": round(ahead, 3),
        "budget_dense_epochs": budget, "budget_spent": budget is not None and total + ahead > budget,
    }


def study_spent(study, with_next: bool = False) -> float:
    """`spent` over a study's stored trials, every worker's counted; `with_next`: plus what the next trial
    is expected to spend. The budget check between trials launches one only while that fits, so a
    budget is not overrun by a whole last trial (it can be by the next trial's excess over the mean)."""
    rows = [{**trial_record(t), "macs": (t.user_attrs.get("result") or {}).get("macs")} for t in study.get_trials(deepcopy=False)]
    dense = study.user_attrs["dense"]
    return spent(rows, dense) + (expected_next(rows, dense) if with_next else 0.0)
