"""The recipe's pruning section: what, how and when to prune (`prune.*`), with its schedule and
depth sub-sections; split from schema.py, which re-exports it.

Example:
    >>> PruneSpec(sparsity=0.75, schedule={"kind": "iterative", "steps": 2}).schedule.steps
    2
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from .. import registry as R


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ScheduleSpec(_Section):
    """When to prune."""

    kind: str = "oneshot"
    steps: int = Field(4, ge=1, description="iterative rounds, gradual pruning events, or dynamic drop-and-grow steps")
    epochs_per_step: int = Field(1, ge=0, description="iterative: fine-tuning epochs between rounds")
    initial_sparsity: float = Field(0.0, ge=0, lt=1, description="gradual: sparsity of the first event")
    start: float = Field(0.0, ge=0, le=1, description="gradual, dynamic: first event, as a fraction of fine-tuning")
    end: float = Field(0.6, gt=0, le=1, description="gradual, dynamic: last event, as a fraction of fine-tuning")
    tolerance: float = Field(0.5, ge=0, description="adaptive: validation points the model may lose against the dense model")
    patience: int = Field(1, ge=0, description="adaptive: extra epochs a step gets to recover before the roll-back")

    @model_validator(mode="after")
    def _order(self) -> "ScheduleSpec":
        if self.end <= self.start:
            raise ValueError(f"end ({self.end}) must be after start ({self.start})")
        return self


class DepthSpec(_Section):
    """Depth pruning: whole residual blocks / transformer layers removed (pruning/depth.py)."""

    amount: float | None = Field(
        None, gt=0, lt=1, description="fraction of the removable blocks removed (x count, rounded half up), before the width "
        "method; with prune.method depth, prune.sparsity is the fraction and this stays unset")
    importance: Literal["cosine", "skip_loss"] = Field(
        "cosine", description="block ranking on calibration batches: cosine (1 - input/output cosine similarity, "
        "ShortGPT) or skip_loss (loss increase when the block is skipped)")


class PruneSpec(_Section):
    """What, how and when to prune."""

    method: str = Field("structured", description="registered pruner: structured, unstructured, nm, depth")
    importance: str | None = Field(
        None, description="registered importance (default: the method's best known for the model: structured l2, "
        "structured on transformers taylor, unstructured lamp, nm l2; `prunetune list` shows them)")
    sparsity: float = Field(0.5, ge=0, lt=1, description="fraction removed: channels (structured) or weights")
    scope: Literal["global", "layer"] | None = Field(
        None, description="rank globally or per layer (default: the method's; unstructured: global)")
    layer_sparsity: dict[str, float] = Field(
        default_factory=dict, description="layer name or fnmatch pattern -> fraction removed in that layer (an exact "
        "name wins, else the first matching pattern); other target layers use sparsity")
    n: int = Field(2, ge=1, description="N of N:M (keep N of every M weights)")
    m: int = Field(4, ge=2, description="M of N:M")
    include: list[str] = Field(default_factory=lambda: ["*"], description="layer name patterns to prune")
    exclude: list[str] = Field(default_factory=list, description="layer name patterns to keep")
    keep_classifier: bool = Field(True, description="never prune the final classifier's outputs")
    calibration_batches: int = Field(8, ge=1, description="batches for gradient-based importance")
    round_to: int | None = Field(None, ge=1, description="structured: keep channel counts multiples of this")
    recalibrate_bn: int = Field(
        0, ge=0, description="training batches (of 128) that re-estimate BatchNorm statistics after each pruning step (0: off)")
    head_sparsity: float | None = Field(
        None, ge=0, lt=1, description="structured transformers: fraction of attention heads removed (default: sparsity)")
    depth: DepthSpec | None = Field(
        None, description="remove whole blocks first (amount, importance); with prune.method depth: the ranking only")
    uniform: bool = Field(
        False, description="structured: every layer keeps the same number of heads, key/value heads and FFN neurons "
        "(per-layer ranking; grouped-query heads go in whole key/value groups), so a transformers model's folder "
        "loads with plain from_pretrained")
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    order: Literal["finetune_first", "prune_first"] = Field(
        "finetune_first", description="finetune_first: prune the trained dense model; prune_first: prune the "
        "untrained starting model (dense.epochs is taken as 0), then fine-tune")
    _defaulted: set[str] = PrivateAttr(default_factory=set)  # importance / scope not given: the method's defaults

    @field_validator("layer_sparsity")
    @classmethod
    def _amounts(cls, v: dict[str, float]) -> dict[str, float]:
        for pattern, amount in v.items():
            if not (0 <= amount < 1):
                raise ValueError(f"{pattern!r}: {amount} is outside [0, 1); give the fraction removed in that layer, "
                                 "e.g. 0.5")
        return v

    @model_validator(mode="after")
    def _method_defaults(self) -> "PruneSpec":
        """importance and scope default to the chosen method's (Pruner.default_importance / default_scope)."""
        self._defaulted = {f for f in ("importance", "scope") if getattr(self, f) is None}
        self.fill_defaults(None, final=False)
        return self

    def fill_defaults(self, family: str | None, final: bool = True) -> None:
        """Give the importance and scope the recipe left out the method's best known for model `family`
        (`Pruner.defaults_for`); what the recipe gave stays. `final` (the whole recipe's check, which
        knows the model) settles them: the spec then equals one read back from its dump."""
        pruner = R.PRUNERS.get(self.method) if self.method in R.PRUNERS else None
        imp, scope = pruner.defaults_for(family) if pruner is not None else ("l2", "layer")
        if "importance" in self._defaulted:
            self.importance = imp
        if "scope" in self._defaulted:  # per-layer amounts (and sparsegpt's per-layer reconstruction) rank per layer
            self.scope = "layer" if self.layer_sparsity or _reconstructs(self.importance) else scope
        if final:
            self._defaulted = set()

    @model_validator(mode="after")
    def _depth(self) -> "PruneSpec":
        d = self.depth
        if self.method == "depth" and d is not None and d.amount is not None:
            raise ValueError("prune.depth.amount: with prune.method depth the fraction of blocks removed is "
                             "prune.sparsity; drop prune.depth.amount")
        if self.method != "depth" and d is not None and d.amount is None:
            raise ValueError("prune.depth.amount: give the fraction of removable blocks removed before the width "
                             "method, e.g. 0.25")
        return self

    @model_validator(mode="after")
    def _uniform(self) -> "PruneSpec":
        if not self.uniform:
            return self
        if self.method != "structured":
            raise ValueError(f"uniform: only structured pruning changes layer widths ({self.method} keeps every shape); "
                             "drop prune.uniform")
        if self.scope == "global":
            raise ValueError("uniform: global ranking gives each layer its own width; use prune.scope: layer "
                             "(or drop prune.uniform)")
        if self.layer_sparsity:
            raise ValueError("uniform: prune.layer_sparsity gives layers different widths; drop one of the two")
        return self

    @model_validator(mode="after")
    def _importance_fits(self) -> "PruneSpec":
        importance = R.IMPORTANCES.get(self.importance) if self.importance in R.IMPORTANCES else None
        methods = getattr(importance, "methods", None)
        if methods and self.method not in methods:
            raise ValueError(f"prune.importance: {self.importance} works with prune.method {' or '.join(methods)}, not "
                             f"{self.method}; change prune.method or choose another importance")
        if _reconstructs(self.importance) and self.scope == "global":
            raise ValueError(f"prune.scope: {self.importance} reconstructs each layer to its own sparsity and cannot rank "
                             "weights across layers; use prune.scope layer")
        return self

    @model_validator(mode="after")
    def _nm(self) -> "PruneSpec":
        if self.method == "nm" and self.n >= self.m:
            raise ValueError(f"N:M needs n < m (got n={self.n}, m={self.m}); e.g. n=2, m=4")
        return self


def _reconstructs(importance: str | None) -> bool:
    """True for an importance that prunes each layer to its own amount while rebuilding it (sparsegpt)."""
    imp = R.IMPORTANCES.get(importance) if importance in R.IMPORTANCES else None
    return bool(getattr(imp, "reconstructs", False))
