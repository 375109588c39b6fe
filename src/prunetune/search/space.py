"""The search space: `search.space` parsed into dimensions, each checked against the recipe at its
extreme values before anything runs."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ..errors import PrunetuneError
from ..finetune.options import DROP_FOREIGN
from ..recipe import Recipe, set_path, validation_error


@dataclass
class Dim:
    """One searched recipe field: a float or int range (optionally log-scaled) or a list of choices."""

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

    def suggest(self, trial) -> Any:
        """This dimension's value for an Optuna trial."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, self.choices)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)


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
            set_path(data, name, value)
            validate(data, f"{where} = {value!r}")
        dims.append(dim)
    return dims


def validate(data: dict[str, Any], where: str) -> Recipe:
    """The recipe `data` describes (a searched point, a trial, the balance run), or one error line naming `where`."""
    try:  # the base recipe was validated strictly; a trial may switch finetune.method away from its options
        return Recipe.model_validate(data, context={DROP_FOREIGN: True})
    except ValidationError as e:
        if e.errors()[0]["type"] == "extra_forbidden":
            raise PrunetuneError(f"{where}: not a recipe field; see README's recipe reference") from None
        raise validation_error(e, where) from None


def with_params(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A copy of the base recipe's data with each searched field set to its value."""
    data = copy.deepcopy(base)
    for k, v in params.items():
        set_path(data, k, v)
    return data
