"""Name registries, filled by a decorator next to each implementation.

Example:
    >>> from prunetune.registry import Registry
    >>> shapes = Registry("shape")
    >>> @shapes.register("square")
    ... def square(n): return n * n
    >>> shapes.get("square")(3)
    9
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, Callable, Generic, TypeVar

from .errors import PrunetuneError

# Third-party packages add pieces by naming a module in this entry-point group; importing it registers them.
PLUGIN_GROUP = "prunetune.plugins"

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping name -> implementation with a clear error for unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._docs: dict[str, str] = {}

    def register(self, name: str, doc: str | None = None) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            self._docs[name] = doc or first_paragraph(getattr(obj, "__doc__", None))
            return obj

        return deco

    def get(self, name: str, field: str | None = None) -> T:
        load_builtins()
        if name not in self._items:
            where = f"{field}: " if field else ""
            raise PrunetuneError(
                f"{where}unknown {self.kind} {name!r}; choose one of: {', '.join(sorted(self._items))}"
            )
        return self._items[name]

    def names(self) -> list[str]:
        load_builtins()
        return sorted(self._items)

    def describe(self) -> dict[str, str]:
        return {n: self._docs.get(n, "") for n in self.names()}

    def __contains__(self, name: Any) -> bool:
        load_builtins()
        return name in self._items


def first_paragraph(doc: str | None) -> str:
    """A docstring's first paragraph as one line (what `prunetune list` shows)."""
    para = (doc or "").strip().split("\n\n", 1)[0]
    return " ".join(para.split())


# The project's registries, in one place so `prunetune list` can show them all.
DATA_SOURCES: Registry = Registry("data source")
MODELS: Registry = Registry("model")
TASKS: Registry = Registry("task")
IMPORTANCES: Registry = Registry("importance")
PRUNERS: Registry = Registry("pruner")
SCHEDULES: Registry = Registry("schedule")
FINETUNE_METHODS: Registry = Registry("fine-tuning method")
OPTIMIZERS: Registry = Registry("optimizer")
LR_SCHEDULES: Registry = Registry("learning-rate schedule")
LAYER_TYPES: Registry = Registry("prunable layer type")
TRACKERS: Registry = Registry("tracker")
EXPORTERS: Registry = Registry("export format")

ALL = {
    "data sources": DATA_SOURCES,
    "models": MODELS,
    "tasks": TASKS,
    "importance": IMPORTANCES,
    "pruners": PRUNERS,
    "schedules": SCHEDULES,
    "fine-tuning methods": FINETUNE_METHODS,
    "optimizers": OPTIMIZERS,
    "learning-rate schedules": LR_SCHEDULES,
    "prunable layer types": LAYER_TYPES,
    "trackers": TRACKERS,
    "export formats": EXPORTERS,
}


_loaded = False


def load_builtins() -> None:
    """Fill the registries, once per process, on the first lookup: prunetune's own pieces (the modules
    `prunetune.builtins` lists) and every installed plugin of the `prunetune.plugins` entry-point group.

    Kept lazy so `import prunetune` stays fast, and called by the registries themselves, so no caller
    has to remember it."""
    global _loaded
    if _loaded:
        return
    _loaded = True  # first: modules being imported may look names up (they then see what is registered so far)
    importlib.import_module("prunetune.builtins")
    for ep in entry_points(group=PLUGIN_GROUP):
        ep.load()
