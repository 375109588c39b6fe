"""The recipe's `data:` section: the keys every data source shares, and each source's own options.

A source registers the pydantic model of its own keys with it (`data.base.data_source`); the YAML
keeps them flat under `data:` and `DataSpec` validates them with that model (`spec.options`).
Kept apart from `data/` so reading a recipe imports no torch.

Example:
    >>> spec = DataSpec.model_validate({"source": "trec", "path": "/t", "trec_labels": "fine"})
    >>> spec.options.trec_labels, spec.model_dump()["trec_labels"]
    ('fine', 'fine')
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator, model_serializer,
                      model_validator)
from pydantic_core import PydanticCustomError

from .errors import PrunetuneError
from .registry import DATA_SOURCES


class SourceOptions(BaseModel):
    """A data source's own `data:` keys (this base has none). Each source's subclass sits next to the
    source and is registered with it (`data.base.data_source`); the recipe keeps them flat under `data:`."""

    model_config = ConfigDict(extra="forbid")


# The keys of the one flat DataSpec every source shared before each got its own options, with their
# defaults. Saved recipes (run folders, manifests, checkpoints) list all of them: one that is not an
# option of the recipe's source is dropped when it holds this default, and refused otherwise.
FORMER_DATA_DEFAULTS: dict[str, Any] = {
    "image_size": None, "grayscale": None, "stream": None, "format": "auto", "train_file": None, "val_file": None,
    "test_file": None, "text_column": None, "label_column": None, "prompt_column": None, "completion_column": None,
    "max_length": 128, "tokenizer": None, "trec_labels": "coarse", "encoding": None,
}


def _refuse(key: str, value: Any, message: str) -> ValidationError:
    """A validation error at `data.<key>` (raised inside DataSpec's validator, pydantic adds `data.`)."""
    return ValidationError.from_exception_data(
        "DataSpec", [{"type": PydanticCustomError("not_an_option", message), "loc": (key,), "input": value}])


class DataSpec(BaseModel):
    """Where the labelled data comes from and how it is split: the keys every source shares, plus the
    source's own options (`options`, validated by the model registered with the source)."""

    model_config = ConfigDict(extra="forbid")

    source: str = "fashion_mnist"
    path: str | None = Field(None, description="data folder; each source has a default")
    val_size: float | None = Field(
        None, gt=0, description="validation split carved from train: a count (>=1) or a fraction (<1); default min(5000, 10%)"
    )
    limit: int | None = Field(
        None, gt=0, description="a seeded subset of the training data, taken before the validation split is carved "
        "from it (3000 -> 2700 train / 300 validation); classes as data.limit_classes says")
    test_limit: int | None = Field(None, gt=0, description="a seeded subset of the test set (classes as data.limit_classes)")
    limit_classes: Literal["equal", "proportional"] = Field(
        "equal", description="limit / test_limit: equal counts per class (as far as each class has examples) or "
        "the original class proportions")
    eval_batch_size: int = Field(
        128, gt=0, description="examples per batch when evaluating and predicting (not training); 128 ran the small CNN and "
        "ResNet-20 two to three times as fast as 512 on 2 CPU cores (benchmarks/results/eval_batch.md); raise it on a GPU")
    options: SerializeAsAny[SourceOptions] = Field(
        default_factory=SourceOptions, description="the source's own keys (written flat under data:)")

    @field_validator("source")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in DATA_SOURCES:
            raise PydanticCustomError("unknown_source", "unknown {kind} {name}; choose one of: {names}",
                                      {"kind": DATA_SOURCES.kind, "name": repr(v), "names": ", ".join(DATA_SOURCES.names())})
        return v

    @model_validator(mode="wrap")
    @classmethod
    def _source_options(cls, data: Any, handler: Any) -> "DataSpec":
        """Shared keys first, then the rest through the options model of `source`."""
        if not isinstance(data, dict):
            return handler(data)  # an instance (already validated), or a non-mapping pydantic reports
        shared = [k for k in cls.model_fields if k != "options"]
        spec = handler({k: v for k, v in data.items() if k in shared})
        model = source_options(spec.source)
        rest = {}
        for key, value in data.items():
            if key in shared:
                continue
            if key not in model.model_fields:
                if key in FORMER_DATA_DEFAULTS and value == FORMER_DATA_DEFAULTS[key]:
                    continue  # an older saved recipe's unused key
                owners = [n for n in DATA_SOURCES.names() if key in source_options(n).model_fields]
                if owners or key in FORMER_DATA_DEFAULTS:
                    raise _refuse(key, value, f"not an option of data.source {spec.source}; it belongs to "
                                  f"{', '.join(owners) or 'no installed source'}: remove it or change data.source")
            rest[key] = value  # an unknown key is refused by the options model
        spec.options = model.model_validate(rest)
        return spec

    @model_serializer(mode="wrap")
    def _flat(self, handler: Any) -> dict[str, Any]:
        out = handler(self)
        options = out.pop("options", None) or {}
        return {**out, **options}

    def with_options(self, **changes: Any) -> "DataSpec":
        """A copy with some of the source's own options changed, validated like the recipe's `data:`."""
        try:
            return DataSpec.model_validate({**self.model_dump(), **changes})
        except ValidationError as e:
            err = e.errors()[0]
            raise PrunetuneError(f"data.{'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def source_options(source: str) -> type[SourceOptions]:
    """The options model registered with data source `source` (none: `SourceOptions`, no keys)."""
    return getattr(DATA_SOURCES.get(source, "data.source"), "options", SourceOptions)
