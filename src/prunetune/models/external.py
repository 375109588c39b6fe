"""Models from outside: torchvision / timm by name (optional extra), a user's factory by import path."""

from __future__ import annotations

import importlib

from torch import nn

from ..errors import PrunetuneError


def torchvision_model(name: str, num_classes: int, input_shape, **kwargs) -> nn.Module:
    try:
        import torchvision.models as tvm
    except ImportError:
        raise PrunetuneError(
            f"model.name: torchvision:{name} needs torchvision; install the extra: pip install 'prunetune[vision]'"
        ) from None
    try:
        return tvm.get_model(name, num_classes=num_classes, weights=kwargs.pop("weights", None), **kwargs)
    except ValueError:
        raise PrunetuneError(f"model.name: torchvision has no model {name!r}; see torchvision.models.list_models()") from None


def timm_model(name: str, num_classes: int, input_shape, **kwargs) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise PrunetuneError(f"model.name: timm:{name} needs timm; install the extra: pip install 'prunetune[vision]'") from None
    try:
        return timm.create_model(name, num_classes=num_classes, in_chans=input_shape[0], **kwargs)
    except RuntimeError:
        raise PrunetuneError(f"model.name: timm has no model {name!r}; see timm.list_models()") from None


def import_path_model(path: str, trust_code: bool, num_classes: int, input_shape, **kwargs) -> nn.Module:
    """`package.module:function`, called as function(num_classes=..., input_shape=..., **kwargs)."""
    if not trust_code:
        raise PrunetuneError(
            f"model.name: {path!r} imports and runs your code; set model.trust_code: true if you trust it"
        )
    mod_name, _, fn_name = path.partition(":")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise PrunetuneError(f"model.name: cannot import {path!r} ({e}); check the module is on PYTHONPATH") from None
    model = fn(num_classes=num_classes, input_shape=tuple(input_shape), **kwargs)
    if not isinstance(model, nn.Module):
        raise PrunetuneError(f"model.name: {path!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model
