"""`prunetune sweep`: search pruning x fine-tuning under a tolerance on the task's metric (Optuna).

A multi-objective study over the recipe's `search.space` (any recipe field: a float or int range, or
a choice) optimises the task's validation metric in its direction (accuracy up; perplexity or RMSE
down: `Task.metric`, `Task.higher_is_better`) and minimises a measured cost (latency, non-zeros,
gzip bytes or MACs). The *balance point* is the cheapest trial whose validation metric is at most
`search.tolerance` worse than the dense model's (`Task.drop`, in the metric's units: accuracy
points, perplexity, RMSE); only it is scored on the test set (re-run as a normal run in
`OUT/balance/`): the test set never guides the search.

Stored keys follow the trainer's history rows: a trial's validation metric is `val_<metric>`
(`val_accuracy`, `val_perplexity`, `val_rmse`) and the balance point's test scores are `<metric>` and
`dense_<metric>`; the study's dense reference records `metric`. A study stored before the sweep was
generalised (accuracy only, no `metric`) opens and reports unchanged.

Trials are cheap where they can be: the dense model is trained once and cached by content hash
(cache.py) and every trial starts from it; a trial is stopped after a fine-tuning epoch once its
validation metric is so far on the wrong side of the threshold that the epochs left cannot plausibly
recover it (`search.early_stop_slack` metric units per epoch left; a trial on its last epoch always
completes). Optuna's own pruners are single-objective only, so the stop raises `optuna.TrialPruned`
from our epoch hook; `search.fidelity` halving / hyperband ranks trials per epoch in a single-objective
companion study (fidelity.py). The compute spent is stated in dense training epochs (compute.py) and
`search.budget_dense_epochs` stops launching trials; the first trials bisect prune.sparsity
(`search.bisect`, bisect.py), above the amount a sensitivity scan predicts within the tolerance when
`search.warm_start` names one (warm.py).

Storage: a SQLite file `OUT/study.db` by default; any SQLAlchemy URL (PostgreSQL) lets many
workers on many machines join one study (`--storage URL --study NAME`, the same command started N
times). Workers heartbeat; a killed worker's trial is failed after three silent heartbeats and
retried with the same parameters (Optuna's RetryFailedTrialCallback); the study stops at
`search.trials` finished (complete or stopped) trials, counted across workers.

Example recipe section:

    search:
      tolerance: 0.5
      objective: latency
      sampler: tpe
      trials: 24
      space:
        prune.method: {choices: [structured, unstructured]}
        prune.sparsity: [0.3, 0.9]
        finetune.epochs: [1, 3]
        finetune.lr: {low: 3.0e-4, high: 3.0e-3, log: true}
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from .. import pipeline
from ..errors import PrunetuneError
from ..files import atomic_dir
from ..finetune.options import DROP_FOREIGN
from ..recipe import Recipe
from ..reporting.write import write_sweep
from ..tasks import Task
from . import bisect
from .compute import study_spent, trial_record
from .compute import summary as compute_summary
from .fidelity import Rungs
from .fidelity import describe as fidelity_rule
from .objective import OBJECTIVES, constraints, dense_cost, run_trial, study_task
from .reference import dense_reference
from .space import Dim, parse_space, validate
from .storage import finished, open_storage, optuna_module, redact
from .warm import load_scan, predicted, warm_points


def sampler(spec, dims: list[Dim], seed: int | None):
    """The Optuna sampler search.sampler names; TPE and NSGA-II get the robustness floor as a constraint."""
    optuna = optuna_module()
    # TPE and NSGA-II steer away from infeasible trials (constraints); random and grid ignore them.
    con = ({"constraints_func": constraints}
           if spec.robustness_floor is not None and not hasattr(optuna.trial.Trial, "set_constraint") else {})
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(4, min(10, spec.trials // 3)), **con)
    if spec.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, spec.trials // 3)), **con)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.GridSampler({d.name: d.grid(spec.grid_points) for d in dims}, seed=seed)


def _same_signature(stored: dict[str, Any], now: dict[str, Any]) -> bool:
    """A stored study's signature equals this sweep's. The base recipe is compared as the current schema
    dumps it: a study written before an option moved (a method's or a data source's options now dump only
    their own keys) still matches the same recipe."""
    if stored == now:
        return True
    try:
        base = Recipe.model_validate(stored.get("base"), context={DROP_FOREIGN: True}).model_dump(mode="json", exclude={"search"})
    except (ValidationError, PrunetuneError):
        return False
    return {**stored, "base": base} == now


class Sweep:
    """One study: the recipe's search section, its storage and name, the parsed space; `open` creates or
    joins it, `optimize` runs trials until the study holds enough finished ones."""

    def __init__(self, recipe: Recipe, out: Path, storage: str | None, study_name: str | None,
                 log: Callable[[str], None]) -> None:
        if recipe.search is None:
            raise PrunetuneError("search: the recipe has no search section; add search.space (see README: prunetune sweep)")
        self.recipe, self.spec, self.out, self.log = recipe, recipe.search, Path(out), log
        self.task = Task.from_recipe(recipe)
        self.metric = self.task.metric
        if self.spec.robustness_floor is not None and not self.task.labels:
            raise PrunetuneError(f"search.robustness_floor: a floor on robust accuracy needs a classification task; task "
                                 f"{recipe.task!r} is scored by {self.metric}; remove search.robustness_floor")
        if self.spec.objective == "latency" and not recipe.evaluate.latency:
            raise PrunetuneError("search.objective latency needs evaluate.latency: true")
        self.base = recipe.model_dump(mode="json", exclude={"search"})
        self.dims = parse_space(self.spec.space, self.base)
        self.local = storage is None
        self.storage_url = storage or f"sqlite:///{(self.out / 'study.db').resolve()}"
        self.study_name = study_name or recipe.name
        self.rungs: Rungs | None = None  # search.fidelity halving / hyperband: opened with the study
        self.warm: list[dict[str, Any]] = []
        start, method = None, None
        if self.spec.warm_start is not None:
            if self.spec.sampler == "grid":
                raise PrunetuneError("search.warm_start: the grid sampler fixes every point; use sampler tpe, nsga2 or random")
            scan = load_scan(self.spec.warm_start)
            self.warm = warm_points(scan, self.dims, self.base, self.metric, self.spec.tolerance)
            start, method = predicted(scan, self.dims, self.spec.tolerance), scan.get("method")
        self.bisect = bisect.plan(self.dims, self.base, self.spec.bisect, self.spec.sampler, start, method)
        self.predicted = start
        if self.bisect is not None and start is not None:
            self.warm = []  # the scan's amount is the bisection's low end, not a trial

    # -- study ----------------------------------------------------------------------------
    def _signature(self) -> dict[str, Any]:
        sig = {"space": {d.name: d.describe() for d in self.dims}, "objective": self.spec.objective,
               "tolerance": self.spec.tolerance, "base": self.base}
        if self.spec.robustness_floor is not None:
            sig["robustness_floor"] = self.spec.robustness_floor.model_dump(mode="json")
        return sig

    def open(self, create: bool = True):
        """The study (created, or joined when it exists with the same signature); `create=False` only loads it."""
        optuna = optuna_module()
        self.out.mkdir(parents=True, exist_ok=True)
        storage = open_storage(self.storage_url, self.spec)
        if not create:
            try:
                return optuna.load_study(study_name=self.study_name, storage=storage)
            except KeyError:
                raise PrunetuneError(f"--study {self.study_name}: no such study in the storage; run the sweep first") from None
        seed = self.recipe.seed if self.local else None  # workers sharing a study must not draw the same points
        want = [self.task.direction, "minimize"]
        study = optuna.create_study(storage=storage, study_name=self.study_name, directions=want,
                                    sampler=sampler(self.spec, self.dims, seed), load_if_exists=True)
        sig = self._signature()
        have = study.user_attrs.get("signature")
        if have is not None and not _same_signature(have, sig):
            raise PrunetuneError(
                f"--study {self.study_name}: exists with a different search space, objective, tolerance or base recipe; "
                f"name a new study (--study {self.study_name}-2) or use another --storage")
        stored = [d.name.lower() for d in study.directions]  # Optuna's load_if_exists does not compare them
        if stored != want:
            raise PrunetuneError(
                f"--study {self.study_name}: exists with directions {stored} but task {self.recipe.task!r} "
                f"({self.metric}) needs {want}; name a new study (--study {self.study_name}-2) or use another --storage")
        if have is None:
            study.set_user_attr("signature", sig)
        if "dense" not in study.user_attrs:
            self.log("sweep: measuring the dense model on the validation split")
            study.set_user_attr("dense", dense_reference(self.recipe, self.log))
        if self.spec.fidelity != "full":
            self.rungs = Rungs(storage, self.study_name, self.spec.fidelity)
        if self.spec.warm_start is not None and "warm_start" not in study.user_attrs:  # once per study, whichever worker comes first
            for params in self.warm:
                study.enqueue_trial(params, skip_if_exists=True)
            study.set_user_attr("warm_start", {"file": str(self.spec.warm_start), "points": self.warm,
                                               "predicted": self.predicted})
            self.log(f"sweep: warm start from {self.spec.warm_start}: "
                     + (f"prune.sparsity {', '.join(str(p['prune.sparsity']) for p in self.warm)}" if self.warm else
                        f"the scan predicts prune.sparsity {self.predicted:g} within the tolerance before fine-tuning"))
        if self.bisect is not None and bisect.ATTR not in study.user_attrs:
            study.set_user_attr(bisect.ATTR, self.bisect)
            self.next_bisection(study)
        return study

    def next_bisection(self, study) -> None:
        """Enqueue the bisection's next point, if its previous trial has finished and points are left (bisect.py)."""
        bisect.enqueue_next(study, study.user_attrs["dense"][f"val_{self.metric}"], self.spec.tolerance, self.task.drop,
                            f"val_{self.metric}", self.log)

    def optimize(self, trials: int | None) -> Any:
        """Run trials until the study holds `trials` (default search.trials) finished ones, all workers together."""
        from optuna.study import MaxTrialsCallback
        from optuna.trial import TrialState

        study = self.open()
        target = self.spec.trials if trials is None else trials
        dense_val = study.user_attrs["dense"][f"val_{self.metric}"]
        done = finished(study)
        self.log(f"sweep: study {self.study_name!r} at {redact(self.storage_url)}: {done} of {target} trials finished; "
                 f"dense validation {self.metric} {self.task.format(dense_val)}, tolerance {self.spec.tolerance}")
        budget = self.spec.budget_dense_epochs
        stops = [MaxTrialsCallback(target, states=(TrialState.COMPLETE, TrialState.PRUNED))]
        if budget is not None:  # a new trial only while the spent compute plus the mean trial's fits (all workers')
            stops.append(lambda st, _t: st.stop() if study_spent(st, with_next=True) > budget else None)
            if study_spent(study, with_next=True) > budget:
                self.log(f"sweep: the compute budget ({budget:g} dense epochs) is spent or would be by the next "
                         "trial; no trial launched")
                done = target
        if self.bisect is not None:  # after the stops: no point is enqueued that no trial would run
            stops.append(lambda st, _t: self.next_bisection(st) if finished(st) < target and (
                budget is None or study_spent(st, with_next=True) <= budget) else None)
        if done < target:
            study.optimize(lambda t: run_trial(self, t, dense_val), n_trials=target, callbacks=stops,
                           catch=(), gc_after_trial=True)
        return study


def summarise(study, spec) -> dict[str, Any]:
    """Everything the outputs show, from the study storage alone."""
    from optuna.trial import TrialState

    task = study_task(study)
    key = f"val_{task.metric}"
    dense = study.user_attrs["dense"]
    threshold = task.threshold(dense[key], spec.tolerance)
    rows, complete = [], []
    for t in study.get_trials(deepcopy=False, states=[s for s in TrialState if s != TrialState.WAITING]):  # not run yet
        r = t.user_attrs.get("result") or {}
        row = {"trial": t.number, "state": t.state.name.lower(), "params": t.params,
               key: r.get(key), "cost": r.get("cost"), "speedup": r.get("speedup"),
               "nonzero_params": r.get("nonzero_params"), "gzip_bytes": r.get("gzip_bytes"),
               "macs": r.get("macs"), "masked": r.get("masked", False), **trial_record(t)}
        row.update({k: r[k] for k in INTERVAL_KEYS if k in r})  # latency: the cost's interval (older studies: none)
        if t.state == TrialState.PRUNED:
            by = f" ({t.user_attrs['pruned_by']})" if t.user_attrs.get("pruned_by") else ""
            row["note"] = t.user_attrs.get("invalid") or f"stopped after epoch {t.user_attrs.get('stopped_at_epoch')}{by}"
        if t.state == TrialState.FAIL:
            row["note"] = "failed (worker died or error)"
        if spec.robustness_floor is not None:
            row["robust_accuracy"] = r.get("robust_accuracy")
            row["meets_floor"] = r.get("robust_accuracy") is not None and (t.user_attrs.get("constraint") or [0.0])[0] <= 0
            if r and not row["meets_floor"]:
                row["note"] = f"below the robustness floor ({r.get('robust_accuracy')} < {spec.robustness_floor.min_accuracy})"
        retry_of = t.system_attrs.get("failed_trial")
        if retry_of is not None:
            row["retry_of"] = retry_of
        rows.append(row)
        if t.state == TrialState.COMPLETE and r:
            complete.append(row)
    complete = [r for r in complete if r.get("meets_floor", True)]  # infeasible under search.robustness_floor
    front = pareto(complete, key, task.higher_is_better)
    feasible = [r for r in complete if task.drop(r[key], dense[key]) <= spec.tolerance]
    balance = choose_balance(feasible, key, task.higher_is_better)
    for r in rows:
        r["pareto"] = r in front
        r["balance"] = balance is not None and r["trial"] == balance["trial"]
    states = [r["state"] for r in rows]
    return {
        "kind": "sweep", "study": study.study_name, "metric": task.metric, "higher_is_better": task.higher_is_better,
        "objective": spec.objective, "objective_label": OBJECTIVES[spec.objective][0],
        "tolerance": spec.tolerance, "dense": dense, "threshold": threshold, "rows": rows,
        "robustness_floor": spec.robustness_floor.model_dump(mode="json") if spec.robustness_floor else None,
        "front": [r["trial"] for r in front], "balance_trial": balance["trial"] if balance else None,
        "counts": {s: states.count(s) for s in sorted(set(states))},
        "compute": compute_summary(rows, dense, spec.budget_dense_epochs), "fidelity": fidelity_rule(spec.fidelity),
        "warm_start": study.user_attrs.get("warm_start"),
        "bisect": bisect.summary(study, dense[key], spec.tolerance, task.drop, key),
    }


INTERVAL_KEYS = ("cost_low", "cost_high", "speedup_low", "speedup_high", "verdict", "noisy", "reasons")


def _cost_interval(r: dict[str, Any]) -> tuple[float, float]:
    """A row's cost interval: its measured `cost_low`..`cost_high` (a point for costs without one). A
    masked trial's latency interval is stretched to include 1.0 (the dense model's cost): masked weights
    run on dense kernels, so any gain it shows over dense is noise."""
    lo, hi = r.get("cost_low"), r.get("cost_high")
    lo, hi = (r["cost"], r["cost"]) if lo is None or hi is None else (lo, hi)
    if r.get("masked") and r.get("cost_low") is not None:
        lo, hi = min(lo, 1.0), max(hi, 1.0)
    return lo, hi


def choose_balance(feasible: list[dict[str, Any]], key: str = "val_accuracy",
                   higher_is_better: bool = True) -> dict[str, Any] | None:
    """The balance point among `feasible` rows: the cheapest, where costs whose intervals overlap the
    cheapest row's interval tie (a measured difference inside the noise decides nothing); ties go to fewer
    MACs, then fewer non-zeros, then the better metric, then the lower cost. So a masked trial never
    beats a structurally smaller trial on latency by noise."""
    if not feasible:
        return None
    sign = -1.0 if higher_is_better else 1.0
    best = min(feasible, key=lambda r: (r["cost"], sign * r[key]))
    b_lo, b_hi = _cost_interval(best)
    ties = [r for r in feasible if _cost_interval(r)[0] <= b_hi and b_lo <= _cost_interval(r)[1]]
    big = float("inf")
    return min(ties, key=lambda r: (big if r.get("macs") is None else r["macs"],
                                    big if r.get("nonzero_params") is None else r["nonzero_params"],
                                    sign * r[key], r["cost"]))


def pareto(rows: list[dict[str, Any]], key: str = "val_accuracy", higher_is_better: bool = True) -> list[dict[str, Any]]:
    """Rows no other row beats on both the metric (`key`, in its direction) and cost (lower)."""
    sign = 1.0 if higher_is_better else -1.0
    out = []
    for r in rows:
        dominated = any(sign * o[key] >= sign * r[key] and o["cost"] <= r["cost"]
                        and (sign * o[key] > sign * r[key] or o["cost"] < r["cost"]) for o in rows)
        if not dominated:
            out.append(r)
    return sorted(out, key=lambda r: r["cost"])


def write_outputs(sweep: Sweep, study, score: bool) -> dict[str, Any]:
    """sweep.json / sweep.md / pareto.png / report.html; with `score`, the balance point is re-run
    as a normal run in OUT/balance (scored on the test set) unless that folder exists."""
    doc = summarise(study, sweep.spec)
    task = Task.of_report(doc)
    metric, key = task.metric, task.key
    out = sweep.out
    bal_dir = out / "balance"
    if doc["balance_trial"] is not None:
        trial = next(t for t in study.get_trials(deepcopy=False) if t.number == doc["balance_trial"])
        row = next(r for r in doc["rows"] if r["trial"] == doc["balance_trial"])
        doc["balance"] = {"params": trial.params, key: row[key], "cost": row["cost"],
                          **{k: row[k] for k in INTERVAL_KEYS if k in row}}
        if score and not bal_dir.exists():
            data = dict(trial.user_attrs["recipe"])
            data["name"] = f"{sweep.recipe.name}-balance"
            sweep.log(f"sweep: scoring the balance point (trial {trial.number}) on the test set -> {bal_dir}")
            try:
                pipeline.run(validate(data, "balance"), bal_dir, log=lambda m: sweep.log(f"balance: {m}"))
            except PrunetuneError as e:
                if not bal_dir.exists():
                    raise
                sweep.log(f"sweep: {e}")  # another worker scored it meanwhile
        rep_path = bal_dir / "report.json"
        if rep_path.exists():
            rep = json.loads(rep_path.read_text())
            if rep.get("recipe", {}).get("name") == f"{sweep.recipe.name}-balance":
                f, d = rep["stages"]["finetuned"], rep["stages"]["dense"]
                doc["balance"]["folder"] = str(bal_dir)
                doc["balance"]["test"] = {metric: f[metric], f"dense_{metric}": d[metric],
                                          "nonzero_params": f["nonzero_params"], "params": f["params"], "gzip_bytes": f["gzip_bytes"],
                                          "size_bytes": f["size_bytes"], "macs": f["macs"], **rep["speedup"]["finetuned"]}
    tmp = atomic_dir(out / "report")
    try:
        for name in write_sweep(doc, tmp, dense_cost(doc["objective"], doc["dense"]["stage"])):
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return doc


def sweep(recipe: Recipe, out: str | Path, *, trials: int | None = None, storage: str | None = None,
          study: str | None = None, report_only: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or join) the study, then write its outputs; `report_only` rebuilds outputs from storage."""
    s = Sweep(recipe, Path(out), storage, study, log)
    t0 = time.time()
    st = s.open(create=False) if report_only else s.optimize(trials)
    doc = write_outputs(s, st, score=not report_only)
    doc["wall_s_this_worker"] = round(time.time() - t0, 1)
    log(f"sweep: {finished(st)} trials finished; outputs in {s.out} (sweep.md, pareto.png, report.html)")
    return doc
