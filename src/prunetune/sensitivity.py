"""`prunetune sensitivity`: how much each layer can lose on its own.

For every layer a run of the recipe would prune (the same selection), prune that layer alone at a
few amounts with the recipe's prune.method and importance, score the validation split with no
fine-tuning, and count its MACs; restore the dense model, next. The scan is written to a folder
(sensitivity.json, sensitivity.png); `--write-recipe` turns it into per-layer amounts
(`pruning/allocation.py`) for a parameter budget or a MACs budget (`--budget macs`) and writes the
recipe with `prune.layer_sparsity` set.

Example:
    >>> parse_amounts("0.5, 0.25,0.5")
    [0.25, 0.5]
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import PrunetuneError
from .files import atomic_write, staged_folder
from .models import classifier_name
from .progress import progress
from .measure import example_batch, macs
from .pruning.allocation import BUDGETS, allocate, greedy, most_removable, weighted_amount
from .pruning.controller import PruningController
from .pruning.layers import layer_tensors
from .pruning.masks import realise
from .pruning.targets import select_targets
from .recipe import Recipe, ScheduleSpec, dump_recipe
from .registry import PRUNERS
from .reporting.plots import sensitivity_figure
from .session import open_session
from .tasks import to_device

DEFAULT_AMOUNTS = "0.25,0.5,0.75,0.9"
PlanMacs = Callable[[dict[str, float]], int]


def parse_amounts(text: str) -> list[float]:
    """`--amounts` as sorted, distinct fractions in [0, 1)."""
    out = []
    for item in (text or "").split(","):
        item = item.strip()
        try:
            a = float(item)
        except ValueError:
            raise PrunetuneError(f"--amounts: {item!r} is not a number; give fractions such as {DEFAULT_AMOUNTS}") from None
        if not 0 <= a < 1:
            raise PrunetuneError(f"--amounts: {a} is outside [0, 1); give fractions such as {DEFAULT_AMOUNTS}")
        out.append(a)
    return sorted(set(out))


def default_out(recipe: Recipe) -> Path:
    return Path("runs") / f"{recipe.name}-sensitivity-{time.strftime('%Y%m%d-%H%M%S')}"


def _check(recipe: Recipe, out: Path, amounts: list[float], write_recipe: Path | None, target: float | None,
           budget: str | None) -> None:
    """Everything that can be refused before the data and the dense model are loaded."""
    if not PRUNERS.get(recipe.prune.method).per_layer_amounts:
        able = [n for n in PRUNERS.names() if getattr(PRUNERS.get(n), "per_layer_amounts", False)]
        raise PrunetuneError(f"prune.method {recipe.prune.method!r} has no per-layer amount to scan; use one of: "
                             f"{', '.join(able)}")
    if out.exists():
        raise PrunetuneError(f"--out: {out} already exists; choose another folder or remove it")
    if target is not None and write_recipe is None:
        raise PrunetuneError("--target: only used with --write-recipe FILE; add it or drop --target")
    if budget is not None and write_recipe is None:
        raise PrunetuneError("--budget: only used with --write-recipe FILE; add it or drop --budget")
    if budget is not None and budget not in BUDGETS:
        raise PrunetuneError(f"--budget: {budget!r} is not one of {', '.join(BUDGETS)}")
    if write_recipe is not None:
        if write_recipe.exists():
            raise PrunetuneError(f"--write-recipe: {write_recipe} already exists; choose another file or remove it")
        t = recipe.prune.sparsity if target is None else target
        if not 0 <= t < 1:
            raise PrunetuneError(f"--target: {t} is outside [0, 1); give the overall fraction removed, e.g. 0.5")
        if t > max(amounts) and budget != "macs":
            raise PrunetuneError(f"--target: {t} is above the largest of --amounts ({max(amounts)}); scan larger "
                                 "amounts or lower --target")


def scan(recipe: Recipe, amounts: list[float], log: Callable[[str], None] = print) -> dict[str, Any]:
    """The sensitivity.json document: each target layer pruned alone at each amount, scored on validation."""
    return scan_and_plan(recipe, amounts, log)[0]


def scan_and_plan(recipe: Recipe, amounts: list[float], log: Callable[[str], None]) -> tuple[dict[str, Any], PlanMacs]:
    """The scan, and a function giving the MACs of the dense model pruned one-shot to per-layer amounts."""
    session = open_session(recipe, log)
    task, device = session.task, session.device
    bundle = session.load_data(recipe.data, recipe.model, announce=True)
    dense, _ = session.obtain_dense(recipe)
    p = recipe.prune
    keep = [classifier_name(dense)] if p.keep_classifier else []
    targets = select_targets(dense, p.include, p.exclude, [k for k in keep if k])
    modules = dict(dense.named_modules())

    def score(model) -> float:
        return float(task.evaluate(model, bundle.val, bundle.eval_batch_size, device, bundle.class_names)[task.metric])

    one = to_device(example_batch(bundle.val, 1, recipe.evaluate.sequence_length), device)
    dense_score, dense_macs = score(dense), macs(dense, one)
    log(f"sensitivity: {len(targets)} layers x {len(amounts)} amounts, {p.method} ({p.importance}); "
        f"dense validation {task.metric} {task.format(dense_score)}")
    rows = {n: {"layer": n, "params": sum(t.numel() for _, t in layer_tensors(_base(modules[n]))),
                "scores": {}, "macs": {}} for n in targets}
    for layer, a in progress([(n, a) for n in targets for a in amounts], len(targets) * len(amounts), "sensitivity"):
        # This layer alone, one-shot, to amount a; the dense model itself is never touched (a copy is pruned).
        spec = p.model_copy(update={"sparsity": a, "layer_sparsity": {}, "scope": "layer", "schedule": ScheduleSpec()})
        controller = PruningController(spec, task, bundle, device, [layer], 0, recipe.seed)
        pruned, _ = controller.one_shot_copy(dense)
        key = str(float(a))
        kept = sum(int(torch.count_nonzero(t)) for _, t in layer_tensors(_base(dict(pruned.named_modules())[layer])))
        if 1 - kept / max(1, rows[layer]["params"]) < a / 2:
            # The pruner left this layer (nearly) whole at this amount: it would have emptied it
            # (Torch-Pruning never removes every channel), or round_to kept it. Recorded as
            # unreachable (null), not as the dense model's score, which would read as a free cut.
            rows[layer]["scores"][key] = rows[layer]["macs"][key] = None
        else:
            # MACs as shipped: masks baked in (a masked layer costs its dense MACs).
            rows[layer]["scores"][key], rows[layer]["macs"][key] = score(pruned), macs(realise(pruned, inplace=True), one)
        del pruned

    def plan_macs(layer_sparsity: dict[str, float]) -> int:
        # Every layer at once, one-shot (with each ratio its own final amount: sparsity = the largest).
        if max(layer_sparsity.values(), default=0.0) <= 0:
            return dense_macs
        spec = p.model_copy(update={"sparsity": max(layer_sparsity.values()), "layer_sparsity": layer_sparsity,
                                    "scope": "layer", "schedule": ScheduleSpec()})
        pruned, _ = PruningController(spec, task, bundle, device, targets, 0, recipe.seed).one_shot_copy(dense)
        return macs(realise(pruned, inplace=True), one)

    doc = {"kind": "sensitivity", "metric": task.metric, "higher_is_better": task.higher_is_better,
           "dense": dense_score, "method": p.method, "importance": p.importance, "amounts": [float(a) for a in amounts],
           "layers": [rows[n] for n in targets], "dense_macs": dense_macs}
    return doc, plan_macs


def _base(module):
    """A PEFT-wrapped layer's own layer."""
    return getattr(module, "base_layer", module)


def table(doc: dict[str, Any]) -> str:
    """The scan as aligned text: one row per layer, one column per amount, the dense score on top."""
    width = max([len("layer")] + [len(r["layer"]) for r in doc["layers"]])
    keys = [str(float(a)) for a in doc["amounts"]]
    head = f"{'layer':<{width}}  {'params':>10}  " + "  ".join(f"{k:>8}" for k in keys)
    lines = [f"validation {doc['metric']} by amount pruned (dense {doc['dense']:.4g}), {doc['method']} ({doc['importance']})",
             head]
    for r in doc["layers"]:
        cells = (f"{'-':>8}" if r["scores"][k] is None else f"{r['scores'][k]:>8.4g}" for k in keys)  # -: unreachable
        lines.append(f"{r['layer']:<{width}}  {r['params']:>10,}  " + "  ".join(cells))
    return "\n".join(lines)


def allocated_recipe(recipe: Recipe, doc: dict[str, Any], target: float, budget: str = "params",
                     plan_macs: PlanMacs | None = None) -> tuple[Recipe, dict[str, float]]:
    """The recipe with per-layer amounts from the scan (prune.scope layer). Budget `params`: the
    parameter-weighted amount is `target` (prune.sparsity). Budget `macs`: `target` of the dense MACs
    removed; with `plan_macs` (the MACs of a real one-shot plan) the amounts are raised until the
    plan itself meets it, since adding each layer's savings over-counts where neighbours both shrink;
    prune.sparsity is then the plan's parameter-weighted amount."""
    amounts = allocate(doc, target, budget)
    if budget == "macs" and plan_macs is not None and target > 0:
        amounts = _meet_macs(doc, target, amounts, plan_macs)
    sparsity = target if budget == "params" else round(weighted_amount(doc, amounts), 4)
    prune = recipe.prune.model_copy(update={"layer_sparsity": amounts, "scope": "layer", "sparsity": sparsity})
    return Recipe.model_validate(recipe.model_copy(update={"prune": prune}).model_dump(mode="json")), amounts


def _meet_macs(doc: dict[str, Any], target: float, amounts: dict[str, float], plan_macs: PlanMacs) -> dict[str, float]:
    """The allocation for the smallest nominal MACs target whose real plan removes `target` of the
    MACs, within 1 % of the MACs kept (bisection: the real saving grows with the nominal target)."""
    dense, tolerance = float(doc["dense_macs"]), 0.01 * (1 - target)

    def real(a: dict[str, float]) -> float:
        return 1.0 - plan_macs(a) / dense

    if real(amounts) >= target - tolerance:
        return amounts
    most = most_removable(doc, "macs")  # every layer at the largest scanned amount (may pass 1: over-counted)
    top = greedy(doc, most, "macs")
    if real(top) < target - tolerance:
        raise PrunetuneError(f"--target: the scanned amounts together remove at most {real(top):.3f} of the MACs, "
                             f"less than {target}; scan larger --amounts or lower --target")
    lo, hi, best = target, most, top
    for _ in range(12):
        mid = (lo + hi) / 2
        a = greedy(doc, mid, "macs")
        if real(a) >= target - tolerance:
            hi, best = mid, a
        else:
            lo = mid
    return best


def sensitivity(recipe: Recipe, out: str | Path | None = None, amounts: list[float] | None = None, *,
                write_recipe: str | Path | None = None, target: float | None = None, budget: str | None = None,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Scan, write OUT/sensitivity.json and OUT/sensitivity.png (the folder appears whole or not at
    all), and with `write_recipe` the recipe with per-layer amounts for overall amount `target`
    (default prune.sparsity) of the `budget` (params, default, or macs: the fraction of MACs removed).
    Returns the scan, with `allocation` (and for a MACs budget `allocation_macs`, the plan's) added
    when a recipe was written."""
    amounts = parse_amounts(DEFAULT_AMOUNTS) if amounts is None else sorted(set(float(a) for a in amounts))
    if not amounts:
        raise PrunetuneError(f"--amounts: give at least one fraction, e.g. {DEFAULT_AMOUNTS}")
    for a in amounts:
        if not 0 <= a < 1:
            raise PrunetuneError(f"--amounts: {a} is outside [0, 1); give fractions such as {DEFAULT_AMOUNTS}")
    out = Path(out) if out else default_out(recipe)
    write_recipe = Path(write_recipe) if write_recipe is not None else None
    _check(recipe, out, amounts, write_recipe, target, budget)
    budget = budget or "params"
    with staged_folder(out) as tmp:
        doc, plan_macs = scan_and_plan(recipe, amounts, log)
        atomic_write(tmp / "sensitivity.json", (json.dumps(doc, indent=2) + "\n").encode())
        atomic_write(tmp / "sensitivity.png", sensitivity_figure(doc))
        if write_recipe is not None:
            t = recipe.prune.sparsity if target is None else float(target)
            new, alloc = allocated_recipe(recipe, doc, t, budget, plan_macs)
            real = plan_macs(alloc) if budget == "macs" else None
            text = dump_recipe(new).encode()
    log(f"done: {out}")
    if write_recipe is None:
        return doc
    atomic_write(write_recipe, text)
    removed = "" if real is None else f", MACs removed {1 - real / doc['dense_macs']:.3f}"
    log(f"sensitivity: per-layer amounts for overall {t} of the {budget} (parameter-weighted "
        f"{weighted_amount(doc, alloc):.3f}{removed}) written to {write_recipe}")
    return {**doc, "allocation": alloc, **({"allocation_macs": real} if real is not None else {})}
