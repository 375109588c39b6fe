"""Fine-tuning methods' options (`finetune.peft` in a recipe): the base models, and how the recipe
validates the key through the options model of the chosen method.

Each method declares its options model as `Method.options` (an empty `Options` for methods that take
none); after validation `finetune.peft` is that model's instance.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from ..registry import FINETUNE_METHODS

# Validation context key (`Recipe.model_validate(data, context={DROP_FOREIGN: True})`) for recipes read
# back from a run's records (manifest, checkpoint) and for sweep trials that vary finetune.method:
# options of other methods are then dropped whatever their value.
DROP_FOREIGN = "drop_foreign_options"


class Options(BaseModel):
    """A method's options (`finetune.peft`); this one, empty, for methods that take none."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class TargetOptions(Options):
    """Which linear layers a method adapts."""

    include: list[str] | None = Field(None, description="linear-layer patterns to adapt (default: all; adapter: *output.dense)")
    exclude: list[str] = Field(default_factory=list, description="linear-layer patterns not to adapt")


def method_options(method: str, value: Any, drop_foreign: bool = False) -> Options:
    """`finetune.peft` as the options of the registered fine-tuning `method`.

    Recipes written before each method had its own options dump every method's options, so a key of
    another method's options is dropped when it has that method's default (or always, with
    `drop_foreign`), and refused otherwise: a user's option for the wrong method is caught. Keys that
    no method knows are refused by the options model, as unknown."""
    options = FINETUNE_METHODS.get(method).options
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if not isinstance(value, dict):
        return options.model_validate(value)  # its one-line type error
    others = {n: FINETUNE_METHODS.get(n).options.model_fields for n in FINETUNE_METHODS.names() if n != method}
    kept, refused = {}, []
    for key, v in value.items():
        owners = sorted(n for n, fields in others.items() if key in fields)
        if key in options.model_fields or not owners:
            kept[key] = v
        elif not (drop_foreign or any(v == others[n][key].get_default(call_default_factory=True) for n in owners)):
            refused.append(InitErrorDetails(type=PydanticCustomError(
                "foreign_option", "not an option of finetune.method {method}; remove it (an option of {owners})",
                {"method": method, "owners": ", ".join(owners)}), loc=(key,), input=v))
    if refused:
        # Raised from the recipe's field validator, pydantic nests these under finetune.peft.
        raise ValidationError.from_exception_data("finetune.peft", refused)
    return options.model_validate(kept)
