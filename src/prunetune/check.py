"""`check_recipe`: what a run of a recipe would use, built and shown without training anything.

The recipe is validated; the data loaded (examples per split and per class); the dense model built
(the dense.path file or the cached trained dense model when there is one, else its initial or
pretrained weights: the report says which); and the pruning plan made by pruning a copy once to the
final sparsity (which layers, their shapes and amounts, the parameters and MACs left). No training,
no latency timing, nothing written. Bad input fails as a run would, with the same one-line errors.

Example:
    >>> # doc = check_recipe(load_recipe("examples/recipes/default.yaml")); print(check_text(doc))  # doctest: +SKIP
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

from .dense import untrained_dense
from .errors import PrunetuneError
from .measure import count_params, example_batch, macs, plan_rows, reference_counts
from .models import classifier_name
from .pipeline import format_plan
from .pruning.controller import PruningController
from .pruning.masks import realise
from .pruning.targets import select_targets
from .recipe import Recipe
from .session import open_session
from .tasks import to_device


def _counts(model: torch.nn.Module, example: Any) -> dict[str, int]:
    shipped = realise(model).eval()
    params, nonzero = count_params(shipped)
    return {"params": params, "nonzero_params": nonzero, "macs": macs(shipped, example)}


def check_recipe(recipe: Recipe, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Validate and build everything the recipe names; return what `check_text` prints."""
    t0 = time.perf_counter()
    session = open_session(recipe, log, device="cpu")
    task = session.task
    bundle = session.load_data(recipe.data, recipe.model, robustness=recipe.evaluate.robustness)
    splits = {}
    for name, part in (("train", bundle.train), ("val", bundle.val), ("test", bundle.test)):
        row: dict[str, Any] = {"examples": len(part)}
        if task.labels:
            counts = torch.bincount(part.y.long().flatten(), minlength=bundle.num_classes).tolist()
            row["per_class"] = dict(zip(bundle.class_names, counts))
        splits[name] = row

    dense, weights = untrained_dense(recipe, bundle, task)
    dense.eval()
    p = recipe.prune
    keep = [k for k in ([classifier_name(dense)] if p.keep_classifier else []) if k]
    targets = select_targets(dense, p.include, p.exclude, keep)
    controller = PruningController(p, task, bundle, torch.device("cpu"), targets, recipe.finetune.epochs, recipe.seed)
    pruned, pruner = controller.one_shot_copy(dense)
    plan = plan_rows(dense, pruned, targets)
    if not any(row["sparsity"] > 0 for row in plan):  # as the run refuses it
        raise PrunetuneError(f"prune.sparsity: {p.sparsity} prunes nothing in the selected layers ({', '.join(targets)}); "
                             "raise it")
    one = to_device(example_batch(bundle.test, 1, recipe.evaluate.sequence_length), torch.device("cpu"))
    before, after = _counts(dense, one), _counts(pruned, one)
    ref = reference_counts(dense, targets)
    return {
        "kind": "check",
        "recipe": recipe.name,
        "task": task.name,
        "data": {"source": recipe.data.source, "splits": splits, "classes": bundle.class_names if task.labels else None,
                 "input_shape": list(bundle.input_shape)},
        "model": {"name": recipe.model.name, "weights": weights, **before},
        "prune": {"method": p.method, "importance": p.importance, "scope": p.scope, "sparsity": p.sparsity,
                  "schedule": p.schedule.kind, "final_sparsity": controller.final_sparsity,
                  "targets": len(targets), "target_params": ref["target_numel"], "notes": list(pruner.notes)},
        "plan": plan,
        "pruned": after,
        "wall_s": round(time.perf_counter() - t0, 2),
    }


def _ratio(a: int, b: int) -> str:
    return f"÷{a / b:.2f}" if b else "-"


def check_text(doc: dict[str, Any]) -> str:
    """The check as aligned text: recipe, data per split (and per class), model, plan, after pruning."""
    d, m, p, a = doc["data"], doc["model"], doc["prune"], doc["pruned"]
    s = d["splits"]
    lines = [f"recipe {doc['recipe']}: valid (task {doc['task']})",
             f"data: {d['source']}, inputs {d['input_shape']}: " + " / ".join(f"{s[k]['examples']:,} {k}" for k in s)]
    if d["classes"]:
        width = max(len("class"), *(len(c) for c in d["classes"]))
        lines.append(f"  {'class':<{width}}  {'train':>8}  {'val':>8}  {'test':>8}")
        for c in d["classes"]:
            lines.append(f"  {c:<{width}}  " + "  ".join(f"{s[k]['per_class'][c]:>8,}" for k in ("train", "val", "test")))
    lines += [f"model: {m['name']}, {m['params']:,} parameters, {m['macs']:,} MACs per example",
              f"  weights: {m['weights']}",
              f"prune: {p['method']} to {p['final_sparsity']:.3f} ({p['importance']}, scope {p['scope']}, schedule "
              f"{p['schedule']}), {p['targets']} target layers ({p['target_params']:,} weights)",
              format_plan(doc["plan"]),
              f"after pruning: {a['params']:,} parameters ({a['nonzero_params']:,} non-zero, {_ratio(m['nonzero_params'], a['nonzero_params'])}), "
              f"{a['macs']:,} MACs ({_ratio(m['macs'], a['macs'])})"]
    lines += [f"note: {n}" for n in p["notes"]]
    lines.append(f"checked in {doc['wall_s']:.1f} s; nothing trained, timed or written")
    return "\n".join(lines)
