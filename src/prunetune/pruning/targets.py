"""Which layers to prune: one rule (include / exclude name patterns) shared by every method.

Example:
    >>> from torch import nn
    >>> m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> select_targets(m, include=["*"], exclude=[], keep=["2"])
    ['0']
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from torch import nn

from ..errors import PrunetuneError
from .layers import prunable_layers


def select_targets(model: nn.Module, include: list[str], exclude: list[str], keep: list[str] | None = None) -> list[str]:
    """Names of prunable layers matching any `include` and no `exclude` pattern (fnmatch).

    A pattern that matches no prunable layer, or a selection that is empty, is an error that
    lists the available layer names (a silent no-op is the most common pruning bug).
    """
    names = [n for n, _ in prunable_layers(model)]
    if not names:
        raise PrunetuneError("model: no prunable layers (Linear/Conv) found; this model cannot be pruned")
    available = ", ".join(names)
    for field, patterns in (("prune.include", include), ("prune.exclude", exclude)):
        for p in patterns:
            if not any(fnmatchcase(n, p) for n in names):
                raise PrunetuneError(f"{field}: pattern {p!r} matches no prunable layer; available: {available}")
    chosen = [
        n for n in names
        if any(fnmatchcase(n, p) for p in include)
        and not any(fnmatchcase(n, p) for p in exclude)
        and n not in (keep or [])
    ]
    if not chosen:
        raise PrunetuneError(
            f"prune.include/exclude: the patterns select no layer to prune (the classifier is kept); available: {available}"
        )
    return chosen


def layer_amounts(targets: list[str], layer_sparsity: dict[str, float]) -> dict[str, float]:
    """The amount `prune.layer_sparsity` sets for each target layer it matches: an exact name wins,
    else the first matching pattern (recipe order); layers it does not match are left out (they use
    `prune.sparsity`). A pattern that matches no target layer is an error listing a few of them.

    Example:
        >>> layer_amounts(["features.0", "features.4", "head.0"], {"features.*": 0.25, "features.4": 0.75})
        {'features.0': 0.25, 'features.4': 0.75}
    """
    for p in layer_sparsity:
        if p not in targets and not any(fnmatchcase(n, p) for n in targets):
            few = ", ".join(targets[:8]) + (", ..." if len(targets) > 8 else "")
            raise PrunetuneError(f"prune.layer_sparsity: pattern {p!r} matches no layer selected for pruning; "
                                 f"target layers: {few}")
    out: dict[str, float] = {}
    for n in targets:
        if n in layer_sparsity:
            out[n] = float(layer_sparsity[n])
            continue
        hit = next((p for p in layer_sparsity if fnmatchcase(n, p)), None)
        if hit is not None:
            out[n] = float(layer_sparsity[hit])
    return out
