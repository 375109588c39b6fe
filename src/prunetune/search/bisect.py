"""Bisection of the sparsity boundary (`search.bisect`): the sweep's first trials bisect `prune.sparsity`.

The balance point lies where the validation metric crosses the tolerance, and for one pruning method
the metric worsens as sparsity rises. A sampler that does not know this (TPE starts with random
points) needs many trials to find that crossing; a bisection needs one trial per halving of the
interval. So while `search.bisect` trials are left, the next trial is the midpoint of the bracket
[lo, hi]:

- lo is the largest amount a bisection trial reached within the tolerance, and at least the start:
  the range's low end, or with `search.warm_start` the amount the sensitivity scan predicts within the
  tolerance *before* fine-tuning (fine-tuning recovers part of that drop, so the scan's amount is taken
  as reached, not run: the trials go above it).
- hi is the smallest amount above lo a bisection trial missed (a complete trial outside the tolerance or
  below search.robustness_floor, or a trial stopped early by search.early_stop_slack or search.fidelity),
  at most the range's high end.

Trials whose recipe is refused ("invalid"), stopped by the compute budget or that failed count for
neither; a failed trial is retried with the same point. The other searched fields keep the recipe's own values where the space holds them
(`prune.method`: the scan's, with a warm start), so one thing changes between bisection trials; fields
whose recipe value is outside the space are left to the sampler. The bisection stops early when the
bracket is narrower than a fortieth of the range. Then the sampler takes over, seeing every bisection
trial. With several workers the next point is enqueued when the previous bisection trial finishes;
other workers take sampled points meanwhile. The grid sampler fixes every point: no bisection there.
"""

from __future__ import annotations

from typing import Any, Callable

from .space import Dim

ATTR = "bisect"  # the study's and each bisection trial's user attribute


def _get(data: dict[str, Any], path: str) -> Any:
    cur: Any = data
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _holds(dim: Dim, value: Any) -> bool:
    if dim.kind == "choice":
        return value in dim.choices
    return isinstance(value, (int, float)) and not isinstance(value, bool) and dim.low <= value <= dim.high


def plan(dims: list[Dim], base: dict[str, Any], steps: int, sampler: str, start: float | None = None,
         method: str | None = None) -> dict[str, Any] | None:
    """The bisection's settings for this sweep (stored in the study), or None when it does not apply: no
    steps, the grid sampler, or prune.sparsity not searched as a float range. `start`: the warm start's
    predicted amount; `method`: the scan's pruning method, fixed when prune.method is searched."""
    by_name = {d.name: d for d in dims}
    sp = by_name.get("prune.sparsity")
    if steps <= 0 or sampler == "grid" or sp is None or sp.kind != "float":
        return None
    fixed: dict[str, Any] = {}
    for d in dims:
        if d.name == "prune.sparsity":
            continue
        value = method if d.name == "prune.method" and method is not None else _get(base, d.name)
        if _holds(d, value):
            fixed[d.name] = value
    low, high = float(sp.low), float(sp.high)
    begin = low if start is None else min(max(float(start), low), high)
    return {"steps": steps, "range": [low, high], "start": begin, "start_from": "range" if start is None else "warm_start",
            "fixed": fixed, "points": []}


def outcome(trial, dense_val: float, tolerance: float, drop: Callable[[float, float], float], key: str) -> bool | None:
    """Whether a finished bisection trial reached the tolerance (True), missed it (False), or says nothing (None)."""
    from optuna.trial import TrialState

    if trial.state == TrialState.PRUNED:  # stopped for its metric: missed; refused or out of budget: no verdict
        return None if trial.user_attrs.get("invalid") or trial.user_attrs.get("pruned_by") == "budget" else False
    if trial.state != TrialState.COMPLETE:
        return None
    result = trial.user_attrs.get("result") or {}
    if result.get(key) is None:
        return None
    if (trial.user_attrs.get("constraint") or [0.0])[0] > 0:  # below search.robustness_floor
        return False
    return drop(result[key], dense_val) <= tolerance


def bracket(state: dict[str, Any], results: list[tuple[float, bool]]) -> tuple[float, float]:
    """The interval the boundary lies in: (largest amount reached, at least the start; smallest missed above it)."""
    low, high = state["range"]
    lo = max([state["start"]] + [a for a, ok in results if ok])
    hi = min([high] + [a for a, ok in results if not ok and a > lo])
    return lo, hi


def next_amount(state: dict[str, Any], results: list[tuple[float, bool]]) -> float | None:
    """The next bisection point, or None when the steps are spent or the bracket is narrower than a fortieth of the range."""
    if len(state["points"]) >= state["steps"]:
        return None
    lo, hi = bracket(state, results)
    low, high = state["range"]
    if hi - lo < (high - low) / 40:
        return None
    return round((lo + hi) / 2, 4)


def results_of(study, state: dict[str, Any], dense_val: float, tolerance: float, drop, key: str) -> tuple[list, bool]:
    """The finished bisection trials' (amount, reached) and whether any bisection trial is still waiting or running."""
    from optuna.trial import TrialState

    out, pending = [], False
    for t in study.get_trials(deepcopy=False):
        if ATTR not in t.user_attrs:
            continue
        if t.state in (TrialState.WAITING, TrialState.RUNNING):
            pending = True
            continue
        ok = outcome(t, dense_val, tolerance, drop, key)
        if ok is not None:
            out.append((float(t.params["prune.sparsity"]), ok))
    return out, pending


def enqueue_next(study, dense_val: float, tolerance: float, drop, key: str, log: Callable[[str], None]) -> float | None:
    """Enqueue the next bisection point when the previous one has finished; the amount, or None."""
    state = study.user_attrs.get(ATTR)
    if not state or state.get("done"):
        return None
    results, pending = results_of(study, state, dense_val, tolerance, drop, key)
    if pending:
        return None
    amount = next_amount(state, results)
    if amount is None:
        lo, hi = bracket(state, results)
        study.set_user_attr(ATTR, {**state, "done": True})  # the bracket is derived from the trials (summary)
        log(f"sweep: bisection done: the boundary lies in prune.sparsity [{lo:g}, {hi:g}]; the sampler takes over")
        return None
    if amount in state["points"]:  # another worker enqueued it meanwhile
        return None
    points = [*state["points"], amount]
    study.enqueue_trial({**state["fixed"], "prune.sparsity": amount}, user_attrs={ATTR: len(points)}, skip_if_exists=True)
    lo, hi = bracket(state, results)
    study.set_user_attr(ATTR, {**state, "points": points})
    log(f"sweep: bisection {len(points)} of {state['steps']}: prune.sparsity {amount:g} (bracket [{lo:g}, {hi:g}])")
    return amount


def summary(study, dense_val: float, tolerance: float, drop, key: str) -> dict[str, Any] | None:
    """The sweep.json record: the settings, each bisection trial's point and verdict, and the bracket now."""
    from optuna.trial import TrialState

    state = study.user_attrs.get(ATTR)
    if not state:
        return None
    word = {True: "within", False: "outside", None: None}
    trials, results = [], []
    for t in study.get_trials(deepcopy=False):
        if ATTR in t.user_attrs and t.state not in (TrialState.WAITING, TrialState.RUNNING):
            ok = outcome(t, dense_val, tolerance, drop, key)
            trials.append({"trial": t.number, "prune.sparsity": float(t.params["prune.sparsity"]), "outcome": word[ok]})
            if ok is not None:
                results.append((float(t.params["prune.sparsity"]), ok))
    return {**state, "trials": trials, "bracket": list(bracket(state, results))}

