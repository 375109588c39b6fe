"""Warm start (`search.warm_start`): the first trials of a sweep at informed points of its
`prune.sparsity` range, read off a `prunetune sensitivity` scan (sensitivity.json).

The scan holds, per prunable layer, the validation metric with only that layer pruned to each amount
(no fine-tuning). Assumption, stated in the report: layer drops are *additive*; the predicted drop of
pruning every layer to amount a is the sum over layers of (dense - score_l(a)) (mirrored when lower is
better), each interpolated linearly in a between the scanned amounts, with no drop at amount 0. The
prediction is not extrapolated past the largest scanned amount. The predicted amount is the largest
of the range whose predicted drop is within `search.tolerance` (the low end when none is). With
`search.bisect` (the default) it is where the bisection of prune.sparsity starts (bisect.py): fine-tuning
recovers part of the drop, so the trials go above it. With `search.bisect: 0` the warm points are that
amount and one step of a tenth of the range either side of it, clipped to the range and deduplicated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import PrunetuneError

WHERE = "search.warm_start"


def load_scan(path: str | Path) -> dict[str, Any]:
    """The sensitivity scan at `path`, checked; one error line naming search.warm_start otherwise."""
    p = Path(path)
    try:
        scan = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PrunetuneError(f"{WHERE}: {p} not found; give the sensitivity.json that prunetune sensitivity wrote") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PrunetuneError(f"{WHERE}: cannot read {p} ({e.__class__.__name__}); give a readable sensitivity.json") from None
    except json.JSONDecodeError as e:
        raise PrunetuneError(f"{WHERE}: {p} is not valid JSON ({e.msg}, line {e.lineno}); give a sensitivity.json") from None
    if not isinstance(scan, dict) or scan.get("kind") != "sensitivity":
        raise PrunetuneError(f"{WHERE}: {p} is not a sensitivity scan (kind must be \"sensitivity\"); "
                             "give the sensitivity.json that prunetune sensitivity wrote")
    try:
        amounts = [float(a) for a in scan["amounts"]]
        float(scan["dense"])
        for layer in scan["layers"]:
            for a in scan["amounts"]:
                v = _score(layer, a)
                if v is not None:  # None: an amount the pruner could not reach in that layer
                    float(v)
        ok = bool(amounts) and bool(scan["layers"]) and all(0 < a < 1 for a in amounts)
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise PrunetuneError(f"{WHERE}: {p} lacks dense, amounts in (0, 1) or layers with a score per amount; "
                             "re-run prunetune sensitivity")
    return scan


def _score(layer: dict[str, Any], amount: Any) -> float:
    scores = layer["scores"]
    for key in (str(amount), str(float(amount)), f"{float(amount):g}"):
        if key in scores:
            return scores[key]
    raise KeyError(amount)


def predicted_drop(scan: dict[str, Any], amount: float) -> float:
    """The predicted drop versus dense of pruning every scanned layer to `amount` (additive, linear in
    between; past a layer's last reachable amount, that amount's drop)."""
    knots = [0.0] + sorted(float(a) for a in scan["amounts"])
    sign = 1.0 if scan.get("higher_is_better", True) else -1.0
    total = 0.0
    for layer in scan["layers"]:
        drops = [0.0]
        for a in sorted(scan["amounts"], key=float):  # an unreachable amount keeps the last reachable drop
            v = _score(layer, a)
            drops.append(drops[-1] if v is None else sign * (float(scan["dense"]) - float(v)))
        a = min(max(amount, 0.0), knots[-1])
        i = max(j for j in range(len(knots) - 1) if knots[j] <= a) if a < knots[-1] else len(knots) - 2
        k0, k1 = knots[i], knots[i + 1]
        total += drops[i] + (drops[i + 1] - drops[i]) * (a - k0) / (k1 - k0)
    return total


def best_amount(scan: dict[str, Any], low: float, high: float, tolerance: float) -> float:
    """The largest amount in [low, min(high, largest scanned)] whose predicted drop is <= tolerance (low if none)."""
    top = min(high, max(float(a) for a in scan["amounts"]))
    if top <= low:
        return low
    knots = sorted({low, top, *(float(a) for a in scan["amounts"] if low < float(a) < top)})
    for s0, s1 in reversed(list(zip(knots, knots[1:]))):
        p0, p1 = predicted_drop(scan, s0), predicted_drop(scan, s1)
        if p1 <= tolerance:
            return s1
        if p0 <= tolerance:  # the drop crosses the tolerance inside this segment (linear there)
            return s0 + (tolerance - p0) * (s1 - s0) / (p1 - p0)
    return low


def warm_amounts(scan: dict[str, Any], low: float, high: float, tolerance: float) -> list[float]:
    """The warm points, best first: the predicted best amount and a tenth of the range either side (clipped, deduplicated)."""
    best = best_amount(scan, low, high, tolerance)
    step = (high - low) / 10
    out: list[float] = []
    for a in (best, best - step, best + step):
        a = round(min(max(a, low), high), 4)
        if a not in out:
            out.append(a)
    return out


def warm_points(scan: dict[str, Any], dims: list, base: dict[str, Any], metric: str, tolerance: float) -> list[dict[str, Any]]:
    """The parameters to enqueue: prune.sparsity at each warm amount (and prune.method fixed to the scan's when
    it is searched); one error line naming search.warm_start when the scan does not fit this sweep."""
    by_name = {d.name: d for d in dims}
    sp = by_name.get("prune.sparsity")
    if sp is None or sp.kind != "float":
        raise PrunetuneError(f"{WHERE}: needs prune.sparsity searched as a [low, high] range in search.space; add it or remove {WHERE}")
    if scan.get("metric") != metric:
        raise PrunetuneError(f"{WHERE}: the scan measured {scan.get('metric')!r} but this task is scored by {metric!r}; "
                             "scan the same task or remove search.warm_start")
    fixed: dict[str, Any] = {}
    method = by_name.get("prune.method")
    if method is not None:
        if scan.get("method") not in (method.choices or []):
            raise PrunetuneError(f"{WHERE}: the scan pruned with {scan.get('method')!r}, not one of search.space prune.method "
                                 f"{method.choices}; scan with one of them or remove search.warm_start")
        fixed["prune.method"] = scan["method"]
    elif scan.get("method") != base["prune"]["method"]:
        raise PrunetuneError(f"{WHERE}: the scan pruned with {scan.get('method')!r} but prune.method is "
                             f"{base['prune']['method']!r}; scan with {base['prune']['method']!r} or remove search.warm_start")
    return [{**fixed, "prune.sparsity": a} for a in warm_amounts(scan, float(sp.low), float(sp.high), tolerance)]


def predicted(scan: dict[str, Any], dims: list, tolerance: float) -> float:
    """The amount of the searched prune.sparsity range the scan predicts within the tolerance before fine-tuning
    (call after `warm_points`, which checks that the scan fits the sweep)."""
    sp = next(d for d in dims if d.name == "prune.sparsity")
    return round(best_amount(scan, float(sp.low), float(sp.high), tolerance), 4)
