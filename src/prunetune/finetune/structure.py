"""Re-insert what a fine-tuning method added to a model (bottleneck adapters, a tuned prompt) before
a saved model's weights are loaded: the manifest's `modules` (see `Method.structure`)."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

from torch import nn

from ..errors import PrunetuneError
from .adapter import insert_adapters
from .prompt_tuning import PromptTuning, PromptTuningOptions

_MODULE_NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")


def _checked_modules(model: nn.Module, modules: Any, where: str) -> dict[str, Any]:
    """A manifest's `modules`, checked before anything in it is used: adapter names must be distinct
    linear layers of the model (they are set with setattr), sizes and token counts small positive ints."""

    def bad(field: str, why: str) -> PrunetuneError:
        return PrunetuneError(f"{where}: modules.{field}: {why}; re-save the model")

    def count(value: Any, field: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1 << 16:
            raise bad(field, f"{value!r} is not a whole number from 1 to {1 << 16}")
        return value

    if not isinstance(modules, dict):
        raise bad("", "not a mapping")
    unknown = sorted(set(modules) - {"adapters", "prompt_tuning"})
    if unknown:
        raise bad(unknown[0], "unknown kind of module (known: adapters, prompt_tuning)")
    layers = dict(model.named_modules())
    out: dict[str, Any] = {}
    if "adapters" in modules:
        cfg = modules["adapters"]
        names = cfg.get("names") if isinstance(cfg, dict) else None
        if not isinstance(names, list) or not names:
            raise bad("adapters.names", "missing or not a list of layer names")
        for name in names:
            if not isinstance(name, str) or not _MODULE_NAME.fullmatch(name):
                raise bad("adapters.names", f"{str(name)[:60]!r} is not a layer name (letters, digits, '_' and '.')")
            if not isinstance(layers.get(name), nn.Linear):
                raise bad("adapters.names", f"{name!r} is not a linear layer of the model")
        if len(set(names)) != len(names):
            raise bad("adapters.names", "a layer is named twice")
        out["adapters"] = {"names": names, "size": count(cfg.get("size"), "adapters.size")}
    if "prompt_tuning" in modules:
        cfg = modules["prompt_tuning"]
        if not isinstance(cfg, dict):
            raise bad("prompt_tuning", "not a mapping")
        classifier = cfg.get("classifier")
        if classifier is not None and (not isinstance(classifier, str) or classifier not in layers or not classifier):
            raise bad("prompt_tuning.classifier", f"{str(classifier)[:60]!r} is not a layer of the model")
        out["prompt_tuning"] = {"virtual_tokens": count(cfg.get("virtual_tokens"), "prompt_tuning.virtual_tokens"),
                                "classifier": classifier}
    return out


def restore_structure(model: nn.Module, modules: dict[str, Any], where: str = "manifest.json") -> nn.Module:
    """Re-insert what a fine-tuning method added (adapters, a prompt) before saved weights are loaded."""
    modules = _checked_modules(model, modules, where)
    if "adapters" in modules:
        insert_adapters(model, list(modules["adapters"]["names"]), int(modules["adapters"]["size"]))
    if "prompt_tuning" in modules:
        cfg = modules["prompt_tuning"]
        spec = SimpleNamespace(peft=PromptTuningOptions(virtual_tokens=int(cfg["virtual_tokens"])))
        model = PromptTuning(spec, cfg.get("classifier")).prepare(model)
    return model
