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
from our epoch hook.

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

import copy
import json
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import PrunetuneError
from .finetune.options import DROP_FOREIGN
from .recipe import Recipe, _set_path, format_validation_error
from .tasks import Task

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


@dataclass
class Dim:
    name: str
    kind: str  # float | int | choice
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None

    def describe(self) -> Any:
        return {"choices": self.choices} if self.kind == "choice" else {"low": self.low, "high": self.high, "log": self.log, "int": self.kind == "int"}

    def extremes(self) -> list[Any]:
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]

    def grid(self, points: int) -> list[Any]:
        if self.kind == "choice":
            return list(self.choices)
        lo, hi = float(self.low), float(self.high)
        vals = [math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * i / (points - 1)) if self.log else lo + (hi - lo) * i / (points - 1)
                for i in range(points)]
        return sorted({int(round(v)) for v in vals}) if self.kind == "int" else [round(v, 6) for v in vals]


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def parse_space(space: dict[str, Any], base: dict[str, Any]) -> list[Dim]:
    """Check every dimension names a recipe field and that its extreme values are valid there."""
    if not space:
        raise PrunetuneError("search.space: empty; add at least one dimension, e.g. prune.sparsity: [0.3, 0.9]")
    dims = []
    for name, v in space.items():
        where = f"search.space.{name}"
        if name.split(".")[0] in ("search", "name"):
            raise PrunetuneError(f"{where}: cannot be searched; search model, data, dense, prune, finetune or evaluate fields")
        if isinstance(v, list) and len(v) == 2 and all(_is_num(x) for x in v):
            v = {"low": v[0], "high": v[1]}
        if isinstance(v, dict) and "choices" in v and set(v) == {"choices"}:
            if not isinstance(v["choices"], list) or not v["choices"]:
                raise PrunetuneError(f"{where}: choices must be a non-empty list")
            dim = Dim(name, "choice", choices=list(v["choices"]))
        elif isinstance(v, dict) and {"low", "high"} <= set(v) <= {"low", "high", "log", "int"}:
            lo, hi = v["low"], v["high"]
            if not (_is_num(lo) and _is_num(hi)) or lo >= hi:
                raise PrunetuneError(f"{where}: a range needs numbers low < high (got {lo!r}, {hi!r})")
            if v.get("log") and lo <= 0:
                raise PrunetuneError(f"{where}: a log range needs low > 0")
            is_int = v.get("int", isinstance(lo, int) and isinstance(hi, int))
            dim = Dim(name, "int" if is_int else "float", float(lo), float(hi), bool(v.get("log")))
            if is_int:
                dim.low, dim.high = int(lo), int(hi)
        else:
            raise PrunetuneError(f"{where}: give [low, high], {{low, high, log: true}} or {{choices: [...]}}")
        for value in dim.extremes():
            data = copy.deepcopy(base)
            _set_path(data, name, value)
            _validate(data, f"{where} = {value!r}")
        dims.append(dim)
    return dims


def _validate(data: dict[str, Any], where: str) -> Recipe:
    from pydantic import ValidationError

    try:  # the base recipe was validated strictly; a trial may switch finetune.method away from its options
        return Recipe.model_validate(data, context={DROP_FOREIGN: True})
    except ValidationError as e:
        msg = format_validation_error(e, where)
        if "unknown key" in msg:
            raise PrunetuneError(f"{where}: not a recipe field; see README's recipe reference") from None
        raise PrunetuneError(msg) from None


def _optuna():
    try:
        import optuna
    except ImportError:
        raise PrunetuneError("prunetune sweep needs optuna; pip install optuna") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def open_storage(url: str, spec):
    """An Optuna RDB storage with heartbeats and retry of failed (killed) trials."""
    _optuna()
    from optuna.storages import RDBStorage, RetryFailedTrialCallback

    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 60}  # concurrent workers on one machine wait for the lock
    else:
        kwargs["connect_args"] = {"connect_timeout": 10}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # heartbeats are marked experimental in Optuna
            return RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=spec.heartbeat_s, grace_period=3 * spec.heartbeat_s,
                              heartbeat_stale_trial_callback=RetryFailedTrialCallback(max_retry=spec.retries))
    except ImportError as e:
        raise PrunetuneError(f"--storage: the database driver is missing ({e}); for PostgreSQL: pip install 'prunetune[postgres]'") from None
    except Exception as e:  # sqlalchemy raises many types for a bad or unreachable URL
        from sqlalchemy.engine import make_url

        try:
            u = make_url(url)
            where = f"{u.host or 'localhost'}:{u.port or 'default port'}" if u.drivername.split("+")[0] != "sqlite" else u.database
        except Exception:
            where = url.split("@")[-1]
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0][:160]
        raise PrunetuneError(f"--storage: cannot open the study storage at {where} ({first}); check the URL and that the server runs") from None


def _constraints(trial) -> tuple[float, ...]:
    """Optuna 4's `constraints_func`: the value the objective stored (> 0: below the robustness floor).
    Optuna 5 deprecates it; there the objective calls `trial.set_constraint` itself."""
    return tuple(trial.user_attrs.get("constraint", (0.0,)))


def _sampler(spec, dims: list[Dim], seed: int | None):
    optuna = _optuna()
    # TPE and NSGA-II steer away from infeasible trials (constraints); random and grid ignore them.
    con = ({"constraints_func": _constraints}
           if spec.robustness_floor is not None and not hasattr(optuna.trial.Trial, "set_constraint") else {})
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(4, min(10, spec.trials // 3)), **con)
    if spec.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, spec.trials // 3)), **con)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.GridSampler({d.name: d.grid(spec.grid_points) for d in dims}, seed=seed)


def _suggest(trial, d: Dim) -> Any:
    if d.kind == "choice":
        return trial.suggest_categorical(d.name, d.choices)
    if d.kind == "int":
        return trial.suggest_int(d.name, int(d.low), int(d.high), log=d.log)
    return trial.suggest_float(d.name, d.low, d.high, log=d.log)


def _total_epochs(recipe: Recipe) -> int:
    from .registry import SCHEDULES

    phases = SCHEDULES.get(recipe.prune.schedule.kind)(recipe.prune, recipe.finetune.epochs)
    return sum(p.epochs for p in phases)


def dense_reference(recipe: Recipe, log: Callable[[str], None]) -> dict[str, Any]:
    """The dense model's validation metric and costs (the tolerance's and the plot's reference)."""
    import dataclasses

    from .cache import obtain_dense
    from .data import build_data
    from .measure import measure_stage, reference_counts
    from .pipeline import seed_everything
    from .registry import TASKS
    from .robustness import check_inputs as check_robustness
    from .training import pick_device

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


def interleaved_latency_ratio(dense_dir: Path, model_dir: Path, recipe: Recipe, rounds: int = 2) -> float:
    """p50 latency at evaluate.latency_batch of the saved model over the dense model's, measured in
    alternation (dense, model, dense, model, ...) and taking each one's best round."""
    import torch

    from .artifacts import load_model
    from .data import build_data
    from .measure import example_batch, latency_ms
    from .pruning.masks import realise
    from .registry import TASKS

    task = TASKS.get(recipe.task)()
    bundle = build_data(recipe.data, recipe.seed, recipe.model)
    x = example_batch(bundle.val, recipe.evaluate.latency_batch, recipe.evaluate.sequence_length)
    threads = recipe.evaluate.threads or torch.get_num_threads()
    dense, model = realise(load_model(dense_dir)[0]), realise(load_model(model_dir)[0])
    best = {"d": float("inf"), "m": float("inf")}
    for _ in range(rounds):
        for key, m in (("d", dense), ("m", model)):
            best[key] = min(best[key], latency_ms(m, task.forward, x, threads, recipe.evaluate.min_run_time)["p50"])
    return best["m"] / best["d"]


# -- the task's metric -------------------------------------------------------------------------


def direction(task: Task) -> str:
    """The Optuna direction of the study's first objective (the validation metric)."""
    return "maximize" if task.higher_is_better else "minimize"


def threshold_of(task: Task, dense: float, tolerance: float) -> float:
    """The worst validation metric still within the tolerance: dense - tol (higher is better) or dense + tol."""
    return dense - tolerance if task.higher_is_better else dense + tolerance


def hopeless(task: Task, value: float, dense: float, tolerance: float, slack: float, epochs_left: int) -> bool:
    """Whether a trial at `value` after an epoch should stop: it is worse than the dense model by more
    than the tolerance plus `slack` (metric units) per epoch left. Never with no epochs left: a
    finished trial is kept (it still belongs on the Pareto front)."""
    return epochs_left > 0 and task.drop(value, dense) > tolerance + slack * epochs_left


def study_task(study) -> Task:
    """The metric and direction a stored study was created with; a study from before the sweep followed
    the task's metric has no `metric` in its dense reference and maximised accuracy."""
    from optuna.study import StudyDirection

    t = Task()
    t.metric = (study.user_attrs.get("dense") or {}).get("metric", "accuracy")
    t.higher_is_better = study.directions[0] == StudyDirection.MAXIMIZE
    return t


def metric_units(metric: str) -> str:
    """How a tolerance reads: '3.0 pt' for accuracy, '0.05 rmse' otherwise."""
    return "pt" if metric == "accuracy" else metric


def fmt_metric(v: float | None, metric: str) -> str:
    """Two decimals for accuracy (and large values such as perplexity); four for small ones such as RMSE."""
    if v is None:
        return ""
    return f"{v:.2f}" if metric == "accuracy" or abs(v) >= 10 else f"{v:.4f}"


def short_label(metric: str) -> str:
    """The trial table's column header."""
    return "val acc" if metric == "accuracy" else f"val {metric}"


class Sweep:
    def __init__(self, recipe: Recipe, out: Path, storage: str | None, study_name: str | None,
                 log: Callable[[str], None]) -> None:
        if recipe.search is None:
            raise PrunetuneError("search: the recipe has no search section; add search.space (see README: prunetune sweep)")
        self.recipe, self.spec, self.out, self.log = recipe, recipe.search, Path(out), log
        from .registry import TASKS

        self.task = TASKS.get(recipe.task, "task")()
        self.metric = self.task.metric
        if self.spec.robustness_floor is not None and self.metric != "accuracy":
            raise PrunetuneError(f"search.robustness_floor: a floor on robust accuracy needs a classification task; task "
                                 f"{recipe.task!r} is scored by {self.metric}; remove search.robustness_floor")
        if self.spec.objective == "latency" and not recipe.evaluate.latency:
            raise PrunetuneError("search.objective latency needs evaluate.latency: true")
        self.base = recipe.model_dump(mode="json", exclude={"search"})
        self.dims = parse_space(self.spec.space, self.base)
        self.local = storage is None
        self.storage_url = storage or f"sqlite:///{(self.out / 'study.db').resolve()}"
        self.study_name = study_name or recipe.name

    # -- study ----------------------------------------------------------------------------
    def _signature(self) -> dict[str, Any]:
        sig = {"space": {d.name: d.describe() for d in self.dims}, "objective": self.spec.objective,
               "tolerance": self.spec.tolerance, "base": self.base}
        if self.spec.robustness_floor is not None:
            sig["robustness_floor"] = self.spec.robustness_floor.model_dump(mode="json")
        return sig

    def open(self, create: bool = True):
        optuna = _optuna()
        self.out.mkdir(parents=True, exist_ok=True)
        storage = open_storage(self.storage_url, self.spec)
        if not create:
            try:
                return optuna.load_study(study_name=self.study_name, storage=storage)
            except KeyError:
                raise PrunetuneError(f"--study {self.study_name}: no such study in the storage; run the sweep first") from None
        seed = self.recipe.seed if self.local else None  # workers sharing a study must not draw the same points
        want = [direction(self.task), "minimize"]
        study = optuna.create_study(storage=storage, study_name=self.study_name, directions=want,
                                    sampler=_sampler(self.spec, self.dims, seed), load_if_exists=True)
        sig = self._signature()
        have = study.user_attrs.get("signature")
        if have is not None and have != sig:
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
        return study

    # -- one trial ------------------------------------------------------------------------
    def objective(self, trial, dense_val: float) -> tuple[float, float]:
        optuna = _optuna()
        from .pipeline import run

        params = {d.name: _suggest(trial, d) for d in self.dims}
        data = copy.deepcopy(self.base)
        for k, v in params.items():
            _set_path(data, k, v)
        data["name"] = f"{self.recipe.name}-trial{trial.number}"
        try:
            recipe = _validate(data, "trial")
        except PrunetuneError as e:  # an invalid combination (e.g. N:M with a gradual schedule)
            trial.set_user_attr("invalid", str(e))
            self.log(f"trial {trial.number}: skipped, invalid combination ({e})")
            raise optuna.TrialPruned() from None
        trial.set_user_attr("recipe", data)
        m, key = self.metric, f"val_{self.metric}"
        threshold = threshold_of(self.task, dense_val, self.spec.tolerance)
        total, seen, curve = _total_epochs(recipe), [0], []

        def check(row: dict[str, Any]) -> None:
            seen[0] += 1
            curve.append(row[key])
            if hopeless(self.task, row[key], dense_val, self.spec.tolerance, self.spec.early_stop_slack, max(0, total - seen[0])):
                trial.set_user_attr("val_curve", curve)
                trial.set_user_attr("stopped_at_epoch", seen[0])
                raise optuna.TrialPruned(f"validation {m} {fmt_metric(row[key], m)} after epoch {seen[0]}")

        folder = self.out / "trials" / f"trial-{trial.number:04d}"
        if folder.exists():
            shutil.rmtree(folder)
        shown = ", ".join(f"{k}={_short(v)}" for k, v in params.items())
        self.log(f"trial {trial.number}: {shown}")
        t0 = time.time()
        try:
            rep = run(recipe, folder, log=lambda m: None, score_on="val", save=self.spec.objective == "latency",
                      on_finetune_epoch=check, checkpoint=False)
        except optuna.TrialPruned:
            self.log(f"trial {trial.number}: stopped early (validation {m} {fmt_metric(curve[-1], m)}, "
                     f"threshold {fmt_metric(threshold, m)})")
            raise
        f, d = rep["stages"]["finetuned"], rep["stages"]["dense"]
        cost = float(OBJECTIVES[self.spec.objective][1](f, d))
        if self.spec.objective == "latency" and (folder / "model").exists() and rep["dense"].get("cache"):
            # Dense and pruned timed back to back, alternately: a busy machine's drift cancels out.
            cost = interleaved_latency_ratio(Path(rep["dense"]["cache"]), folder / "model", recipe)
            shutil.rmtree(folder / "model", ignore_errors=True)  # only the balance point's model is kept (OUT/balance)
        result = {
            key: f[m], "cost": cost, "params": f["params"], "nonzero_params": f["nonzero_params"],
            "sparsity": f["sparsity"], "macs": f["macs"], "gzip_bytes": f["gzip_bytes"],
            "latency_ms": (f.get("latency_ms") or {}).get("batch_N", {}).get("p50"),
            "speedup": (round(1.0 / cost, 3) if self.spec.objective == "latency" and cost > 0
                        else rep["speedup"]["finetuned"].get("speedup_batch_N")),
            "dense_latency_ms": (d.get("latency_ms") or {}).get("batch_N", {}).get("p50"),
            "wall_s": round(time.time() - t0, 1), "val_curve": curve,
        }
        floor = self.spec.robustness_floor
        if floor is not None:  # feasible when robust validation accuracy >= the floor (constraint <= 0)
            from .robustness import floor_accuracy

            result["robust_accuracy"] = floor_accuracy(f, floor)
            constraint = float(floor.min_accuracy - result["robust_accuracy"])
            trial.set_user_attr("constraint", [constraint])
            if hasattr(trial, "set_constraint"):
                trial.set_constraint("robustness_floor", constraint)
        trial.set_user_attr("result", result)
        self.log(f"trial {trial.number}: val {fmt_metric(f[m], m)} (dense {fmt_metric(dense_val, m)}), {self.spec.objective} "
                 f"{_short(cost)}" + (f", speedup {result['speedup']:.2f}x" if result["speedup"] else "") + f" ({result['wall_s']:.0f}s)")
        return f[m], cost

    def optimize(self, trials: int | None) -> Any:
        from optuna.study import MaxTrialsCallback
        from optuna.trial import TrialState

        study = self.open()
        target = self.spec.trials if trials is None else trials
        dense_val = study.user_attrs["dense"][f"val_{self.metric}"]
        done = _finished(study)
        self.log(f"sweep: study {self.study_name!r} at {_redact(self.storage_url)}: {done} of {target} trials finished; "
                 f"dense validation {self.metric} {fmt_metric(dense_val, self.metric)}, tolerance {self.spec.tolerance}")
        if done < target:
            study.optimize(lambda t: self.objective(t, dense_val), n_trials=target,
                           callbacks=[MaxTrialsCallback(target, states=(TrialState.COMPLETE, TrialState.PRUNED))],
                           catch=(), gc_after_trial=True)
        return study


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def _finished(study) -> int:
    from optuna.trial import TrialState

    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.get_trials(deepcopy=False))


# -- outputs ------------------------------------------------------------------------------------


def summarise(study, spec) -> dict[str, Any]:
    """Everything the outputs show, from the study storage alone."""
    from optuna.trial import TrialState

    task = study_task(study)
    key = f"val_{task.metric}"
    dense = study.user_attrs["dense"]
    threshold = threshold_of(task, dense[key], spec.tolerance)
    rows, complete = [], []
    for t in study.get_trials(deepcopy=False):
        r = t.user_attrs.get("result") or {}
        row = {"trial": t.number, "state": t.state.name.lower(), "params": t.params,
               key: r.get(key), "cost": r.get("cost"), "speedup": r.get("speedup"),
               "nonzero_params": r.get("nonzero_params"), "gzip_bytes": r.get("gzip_bytes"), "wall_s": r.get("wall_s")}
        if t.state == TrialState.PRUNED:
            row["note"] = t.user_attrs.get("invalid") or f"stopped after epoch {t.user_attrs.get('stopped_at_epoch')}"
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
    front = _pareto(complete, key, task.higher_is_better)
    feasible = [r for r in complete if task.drop(r[key], dense[key]) <= spec.tolerance]
    # The cheapest feasible trial; of equally cheap ones, the better metric.
    balance = min(feasible, key=lambda r: (r["cost"], -task.score({task.metric: r[key]}))) if feasible else None
    for r in rows:
        r["pareto"] = r in front
        r["balance"] = balance is not None and r["trial"] == balance["trial"]
    states = [r["state"] for r in rows]
    return {
        "study": study.study_name, "metric": task.metric, "higher_is_better": task.higher_is_better,
        "objective": spec.objective, "objective_label": OBJECTIVES[spec.objective][0],
        "tolerance": spec.tolerance, "dense": dense, "threshold": threshold, "rows": rows,
        "robustness_floor": spec.robustness_floor.model_dump(mode="json") if spec.robustness_floor else None,
        "front": [r["trial"] for r in front], "balance_trial": balance["trial"] if balance else None,
        "counts": {s: states.count(s) for s in sorted(set(states))},
    }


def _pareto(rows: list[dict[str, Any]], key: str = "val_accuracy", higher_is_better: bool = True) -> list[dict[str, Any]]:
    """Rows no other row beats on both the metric (`key`, in its direction) and cost (lower)."""
    sign = 1.0 if higher_is_better else -1.0
    out = []
    for r in rows:
        dominated = any(sign * o[key] >= sign * r[key] and o["cost"] <= r["cost"]
                        and (sign * o[key] > sign * r[key] or o["cost"] < r["cost"]) for o in rows)
        if not dominated:
            out.append(r)
    return sorted(out, key=lambda r: r["cost"])


def doc_metric(doc: dict[str, Any]) -> tuple[str, str, bool]:
    """(metric, row key, higher is better) of a sweep document; a document from before the sweep
    followed the task's metric is accuracy."""
    metric = doc.get("metric", "accuracy")
    return metric, f"val_{metric}", doc.get("higher_is_better", True)


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, key, higher = doc_metric(doc)
    dense_val, thr = doc["dense"][key], doc["threshold"]
    done = [r for r in doc["rows"] if r.get(key) is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ax.scatter([r["cost"] for r in done], [r[key] for r in done], s=18, color="#9aa5b1", label="trials")
    front = sorted((r for r in done if r["pareto"]), key=lambda r: r["cost"])
    if front:
        ax.plot([r["cost"] for r in front], [r[key] for r in front], "-o", color="#1f6feb", ms=5, label="Pareto front")
    stage = doc["dense"]["stage"]
    try:
        dense_cost = OBJECTIVES[doc["objective"]][1](stage)
        ax.scatter([dense_cost], [dense_val], marker="*", s=160, color="black", label="dense", zorder=5)
    except (KeyError, TypeError):
        pass
    ax.axhline(thr, ls="--", color="#d1242f", lw=1,
               label=f"dense {'−' if higher else '+'} {doc['tolerance']} {metric_units(metric)}")
    bal = next((r for r in done if r["balance"]), None)
    if bal:
        ax.scatter([bal["cost"]], [bal[key]], s=140, facecolors="none", edgecolors="#d1242f", lw=2,
                   label=f"balance point (trial {bal['trial']})", zorder=6)
    if doc["objective"] == "latency":
        ax.axvline(1.0, color="black", lw=0.6, alpha=0.4)
    ax.set_xlabel(doc["objective_label"])
    ax.set_ylabel("validation accuracy (%)" if metric == "accuracy"
                  else f"validation {metric} ({'higher' if higher else 'lower'} is better)")
    if doc["objective"] != "latency":
        ax.set_xscale("log")
    vals = [r[key] for r in done]
    if metric == "accuracy":
        lo, hi = min(vals + [thr]), max(vals + [dense_val])
        ax.set_ylim(max(lo - 1, thr - 8), hi + 1)  # far-off trials fall below the frame
    else:
        # Far-off trials (a perplexity that exploded) fall outside the frame: it reaches at most four
        # times the dense-to-threshold distance beyond the threshold.
        sign = 1.0 if higher else -1.0
        best = max(vals + [dense_val], key=lambda v: sign * v)
        worst = min(vals + [thr], key=lambda v: sign * v)
        reach = 4 * max(abs(best - thr), abs(doc["tolerance"]), 1e-9)
        worst = max(worst, thr - reach) if higher else min(worst, thr + reach)
        pad = 0.05 * max(abs(best - worst), 1e-9)
        ax.set_ylim(min(best, worst) - pad, max(best, worst) + pad)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right" if higher else "upper right")
    ax.set_title(f"sweep {doc['study']}: {metric} against {doc['objective_label']}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def to_markdown(doc: dict[str, Any]) -> str:
    metric, key, higher = doc_metric(doc)
    lines = [f"# Sweep `{doc['study']}`", "",
             f"Objective: validation {metric} ({'max' if higher else 'min'}) against {doc['objective_label']} (min). "
             f"Dense validation {metric} {fmt_metric(doc['dense'][key], metric)}; tolerance {doc['tolerance']} "
             f"{metric_units(metric)} (threshold {fmt_metric(doc['threshold'], metric)}). "
             f"Trials: {', '.join(f'{n} {s}' for s, n in doc['counts'].items())}.", ""]
    if doc.get("robustness_floor"):
        from .robustness import floor_accuracy, floor_label

        try:
            dense = f" (dense {floor_accuracy(doc['dense']['stage'], doc['robustness_floor']):.2f})"
        except PrunetuneError:  # a study whose dense reference predates the floor
            dense = ""
        lines += [f"Robustness floor: validation accuracy under {floor_label(doc['robustness_floor'])}{dense}; trials "
                  "below it are infeasible (off the Pareto front, never the balance point).", ""]
    b = doc.get("balance")
    if b:
        t = b.get("test") or {}
        if t:
            speed = (f"measured speedup {_short(t.get('speedup_batch_N'))}× at batch N, {_short(t.get('speedup_batch_1'))}× at batch 1, "
                     if t.get("speedup_batch_N") is not None else "latency not measured, ")
            scored = (f"; test {fmt_metric(t[metric], metric)} (dense {fmt_metric(t['dense_' + metric], metric)}), {speed}"
                      f"non-zeros {t['nonzero_params']:,}, gzip {t['gzip_bytes']:,} bytes; run folder `{b.get('folder')}`")
        else:
            scored = " (not yet scored on the test set)"
        lines += [f"**Balance point: trial {doc['balance_trial']}** — " + ", ".join(f"{k}={_short(v)}" for k, v in b["params"].items()),
                  "", f"validation {fmt_metric(b[key], metric)}{scored}", ""]
    else:
        lines += ["No trial is within the tolerance" + (" and above the robustness floor" if doc.get("robustness_floor") else "")
                  + " yet.", ""]
    lines += [f"| trial | state | params | {short_label(metric)} | cost | speedup | Pareto | note |",
              "|---:|---|---|---:|---:|---:|---|---|"]
    for r in doc["rows"]:
        p = ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in r["params"].items())
        val = fmt_metric(r.get(key), metric)
        cost = "" if r["cost"] is None else _short(r["cost"])
        sp = "" if not r.get("speedup") else f"{r['speedup']:.2f}×"
        mark = "balance" if r["balance"] else ("yes" if r["pareto"] else "")
        lines.append(f"| {r['trial']} | {r['state']} | {p} | {val} | {cost} | {sp} | {mark} | {r.get('note', '')} |")
    return "\n".join(lines) + "\n"


def write_outputs(sweep: Sweep, study, score: bool) -> dict[str, Any]:
    """sweep.json / sweep.md / pareto.png / report.html; with `score`, the balance point is re-run
    as a normal run in OUT/balance (scored on the test set) unless that folder exists."""
    from .artifacts import atomic_dir
    from .html_report import render_sweep

    doc = summarise(study, sweep.spec)
    metric, key, _ = doc_metric(doc)
    out = sweep.out
    bal_dir = out / "balance"
    if doc["balance_trial"] is not None:
        trial = next(t for t in study.get_trials(deepcopy=False) if t.number == doc["balance_trial"])
        row = next(r for r in doc["rows"] if r["trial"] == doc["balance_trial"])
        doc["balance"] = {"params": trial.params, key: row[key], "cost": row["cost"]}
        if score and not bal_dir.exists():
            from .pipeline import run

            data = dict(trial.user_attrs["recipe"])
            data["name"] = f"{sweep.recipe.name}-balance"
            sweep.log(f"sweep: scoring the balance point (trial {trial.number}) on the test set -> {bal_dir}")
            try:
                run(_validate(data, "balance"), bal_dir, log=lambda m: sweep.log(f"balance: {m}"))
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
        (tmp / "sweep.json").write_text(json.dumps(doc, indent=2))
        (tmp / "sweep.md").write_text(to_markdown(doc))
        plot(doc, tmp / "pareto.png")
        (tmp / "report.html").write_text(render_sweep(doc, tmp), encoding="utf-8")
        for name in ("sweep.json", "sweep.md", "pareto.png", "report.html"):
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
    log(f"sweep: {_finished(st)} trials finished; outputs in {s.out} (sweep.md, pareto.png, report.html)")
    return doc
