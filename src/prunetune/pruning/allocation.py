"""Per-layer amounts from a sensitivity scan (`prunetune sensitivity --write-recipe`): spend the
wanted overall amount where it costs the validation metric least.

Greedy on the scan's grid (0, then its amounts): raise the layer whose next step costs the least
predicted metric drop per unit of budget removed, until the budget is met; the last step is cut short
(linear interpolation between the measured amounts) so the target is met exactly. No layer goes past
the largest amount the scan reached in that layer (an amount that would empty a layer is recorded as
unreachable, `null`). Two budgets:

- `params` (default): the target is the parameter-weighted average amount;
- `macs`: the target is the fraction of the dense model's MACs removed, from the MACs the scan
  measured for each layer pruned alone (a speed budget: a large fully connected layer holds many
  parameters but few MACs). The per-layer savings are added, which over-counts where two
  neighbouring layers both shrink (a convolution loses input and output channels);
  `sensitivity.allocated_recipe` corrects that on the real plan.

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


def _grid(scan: dict[str, Any], layer: dict[str, Any]) -> list[float]:
    """0, then the scanned amounts this layer reached (those recorded unreachable, null, left out)."""
    return [0.0] + [a for a in sorted(float(a) for a in scan["amounts"]) if layer["scores"].get(str(a)) is not None]


def _drops(scan: dict[str, Any], layer: dict[str, Any], grid: list[float]) -> list[float]:
    """The metric lost at each grid point (0 first), worse-is-positive whatever the metric's direction."""
    sign = 1.0 if scan.get("higher_is_better", True) else -1.0
    dense = float(scan["dense"])
    return [0.0] + [sign * (dense - float(layer["scores"][str(float(a))])) for a in grid[1:]]


BUDGETS = ("params", "macs")


def _removed(scan: dict[str, Any], row: dict[str, Any], grid: list[float], budget: str) -> list[float]:
    """What each grid point removes from the budget: parameters (amount x params) or the MACs measured."""
    if budget == "params":
        return [a * row["params"] for a in grid]
    return [0.0] + [float(scan["dense_macs"]) - float(row["macs"][str(float(a))]) for a in grid[1:]]


def _check_budget(scan: dict[str, Any], budget: str) -> None:
    if budget not in BUDGETS:
        raise PrunetuneError(f"--budget: {budget!r} is not one of {', '.join(BUDGETS)}")
    if budget == "macs":
        if "dense_macs" not in scan or any("macs" not in r for r in scan["layers"]):
            raise PrunetuneError("--budget macs: this sensitivity scan has no MACs (an older prunetune wrote it); "
                                 "scan again")
        if all(v is None or float(v) >= float(scan["dense_macs"]) for r in scan["layers"] for v in r["macs"].values()):
            raise PrunetuneError(f"--budget macs: prune.method {scan.get('method')!r} removes no MACs (masks keep every "
                                 "shape); use --budget params or a structured method")


def most_removable(scan: dict[str, Any], budget: str = "params") -> float:
    """The largest target `allocate` accepts: every layer at the largest amount it reached in the scan."""
    layers = [row for row in scan["layers"] if row["params"] > 0]
    total = float(sum(row["params"] for row in layers)) if budget == "params" else float(scan["dense_macs"])
    return sum(_removed(scan, row, _grid(scan, row), budget)[-1] for row in layers) / total


def allocate(scan: dict[str, Any], sparsity: float, budget: str = "params") -> dict[str, float]:
    """Layer -> amount meeting `sparsity` of the budget (the parameter-weighted average amount, or
    the fraction of MACs removed), from a sensitivity.json dict."""
    _check_budget(scan, budget)
    if not 0 <= sparsity < 1:
        raise PrunetuneError(f"--target: {sparsity} is outside [0, 1); give the overall fraction removed, e.g. 0.5")
    grid = [0.0] + sorted(float(a) for a in scan["amounts"])
    layers = [row for row in scan["layers"] if row["params"] > 0]
    if not layers:
        raise PrunetuneError("sensitivity scan: no layer with parameters to allocate amounts to; scan other layers")
    most = most_removable(scan, budget)
    if sparsity > most + 1e-9:
        what = f"the largest scanned amount {grid[-1]}" if budget == "params" and most >= grid[-1] - 1e-9 else \
            f"what the scanned amounts remove ({most:.3f} of the {'MACs' if budget == 'macs' else 'parameters'}, " \
            "each layer alone)"
        raise PrunetuneError(f"--target: {sparsity} is above {what}; scan larger --amounts or lower --target")
    return greedy(scan, sparsity, budget)


def greedy(scan: dict[str, Any], sparsity: float, budget: str = "params") -> dict[str, float]:
    """`allocate` unchecked: `sparsity` may pass 1 for a MACs budget, where the layers' added savings
    over-count (at `most_removable` every layer is at the largest scanned amount)."""
    layers = [row for row in scan["layers"] if row["params"] > 0]
    grids = {row["layer"]: _grid(scan, row) for row in layers}
    removable = {row["layer"]: _removed(scan, row, grids[row["layer"]], budget) for row in layers}
    total = float(sum(row["params"] for row in layers)) if budget == "params" else float(scan["dense_macs"])
    drops = {row["layer"]: _drops(scan, row, grids[row["layer"]]) for row in layers}
    level = {row["layer"]: 0 for row in layers}  # index into the grid
    amount = {row["layer"]: 0.0 for row in layers}
    removed = 0.0  # budget removed (summed over layers)
    need = sparsity * total
    while removed < need - 1e-9 * total:
        best, best_cost = None, float("inf")
        for row in layers:
            name, i = row["layer"], level[row["layer"]]
            gain = removable[name][i + 1] - removable[name][i] if i + 1 < len(grids[name]) else 0.0
            if gain <= 0:  # the top of the grid, or a step that saves nothing of this budget
                continue
            cost = (drops[name][i + 1] - drops[name][i]) / gain
            if cost < best_cost:
                best, best_cost = row, cost
        if best is None:  # every layer at the largest amount (only when the target is the most, up to rounding)
            break
        name, i = best["layer"], level[best["layer"]]
        gain, grid = removable[name][i + 1] - removable[name][i], grids[name]
        if removed + gain > need:  # the last step: only as far as the target needs
            amount[name] = grid[i] + (grid[i + 1] - grid[i]) * (need - removed) / gain
            removed = need
        else:
            level[name], amount[name] = i + 1, grid[i + 1]
            removed += gain
    return {name: round(a, 6) for name, a in amount.items()}


def weighted_amount(scan: dict[str, Any], amounts: dict[str, float]) -> float:
    """The parameter-weighted average of `amounts` over the scan's layers (what `allocate` aims at)."""
    rows = [row for row in scan["layers"] if row["params"] > 0]
    return sum(amounts.get(r["layer"], 0.0) * r["params"] for r in rows) / sum(r["params"] for r in rows)
