"""Per-layer amounts from a sensitivity scan (`prunetune sensitivity --write-recipe`): spend the
wanted overall amount where it costs the validation metric least.

Greedy on the scan's grid (0, then its amounts): raise the layer whose next step costs the least
predicted metric drop per removed parameter, until the parameter-weighted average amount reaches the
target; the last step is cut short (linear interpolation between the measured amounts) so the target
is met exactly. No layer goes past the largest scanned amount.

Example:
    >>> scan = {"higher_is_better": True, "dense": 90.0, "amounts": [0.5],
    ...         "layers": [{"layer": "a", "params": 100, "scores": {"0.5": 89.0}},
    ...                    {"layer": "b", "params": 100, "scores": {"0.5": 60.0}}]}
    >>> allocate(scan, 0.25)
    {'a': 0.5, 'b': 0.0}
"""

from __future__ import annotations

from typing import Any

from ..errors import PrunetuneError


def _drops(scan: dict[str, Any], layer: dict[str, Any]) -> list[float]:
    """The metric lost at each grid point (0 first), worse-is-positive whatever the metric's direction."""
    sign = 1.0 if scan.get("higher_is_better", True) else -1.0
    dense = float(scan["dense"])
    return [0.0] + [sign * (dense - float(layer["scores"][str(float(a))])) for a in scan["amounts"]]


def allocate(scan: dict[str, Any], sparsity: float) -> dict[str, float]:
    """Layer -> amount whose parameter-weighted average is `sparsity`, from a sensitivity.json dict."""
    if not 0 <= sparsity < 1:
        raise PrunetuneError(f"--target: {sparsity} is outside [0, 1); give the overall fraction removed, e.g. 0.5")
    grid = [0.0] + sorted(float(a) for a in scan["amounts"])
    if sparsity > grid[-1]:
        raise PrunetuneError(f"--target: {sparsity} is above the largest scanned amount {grid[-1]}; scan larger "
                             "--amounts or lower --target")
    layers = [row for row in scan["layers"] if row["params"] > 0]
    if not layers:
        raise PrunetuneError("sensitivity scan: no layer with parameters to allocate amounts to; scan other layers")
    total = float(sum(row["params"] for row in layers))
    drops = {row["layer"]: _drops({**scan, "amounts": grid[1:]}, row) for row in layers}
    level = {row["layer"]: 0 for row in layers}  # index into the grid
    amount = {row["layer"]: 0.0 for row in layers}
    removed = 0.0  # parameters removed (amount x params, summed)
    need = sparsity * total
    while removed < need - 1e-9:
        best, best_cost = None, float("inf")
        for row in layers:
            name, i = row["layer"], level[row["layer"]]
            if i + 1 >= len(grid):
                continue
            cost = (drops[name][i + 1] - drops[name][i]) / (row["params"] * (grid[i + 1] - grid[i]))
            if cost < best_cost:
                best, best_cost = row, cost
        if best is None:  # every layer at the largest amount (only when sparsity == grid[-1], up to rounding)
            break
        name, i = best["layer"], level[best["layer"]]
        step = (grid[i + 1] - grid[i]) * best["params"]
        if removed + step > need:  # the last step: only as far as the target needs
            amount[name] = grid[i] + (need - removed) / best["params"]
            removed = need
        else:
            level[name], amount[name] = i + 1, grid[i + 1]
            removed += step
    return {name: round(a, 6) for name, a in amount.items()}


def weighted_amount(scan: dict[str, Any], amounts: dict[str, float]) -> float:
    """The parameter-weighted average of `amounts` over the scan's layers (what `allocate` aims at)."""
    rows = [row for row in scan["layers"] if row["params"] > 0]
    return sum(amounts.get(r["layer"], 0.0) * r["params"] for r in rows) / sum(r["params"] for r in rows)
