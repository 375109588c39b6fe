"""The recipe: one pydantic schema, the single source of configuration (`schema.py`), read from a
YAML file plus `--set section.key=value` overrides and validated once at the edge (`loading.py`).

Each piece's own options live next to it and are validated through its registry: a data source's
(`data/`, via `data_spec.py`), a fine-tuning method's (`finetune/`).

Example:
    >>> from prunetune.recipe import Recipe, apply_overrides
    >>> r = Recipe.model_validate(apply_overrides({}, ["prune.sparsity=0.75"]))
    >>> r.prune.sparsity
    0.75
"""

from .loading import apply_overrides, dump_recipe, load_recipe, set_path, validation_error
from .schema import (AugmentSpec, DenseSpec, DepthSpec, DistillSpec, EarlyStopping, EvaluateSpec, FinetuneSpec, ModelSpec,
                     PruneSpec, Recipe, RobustnessFloor, RobustnessSpec, ScheduleSpec, SearchSpec, TrainSpec)

__all__ = ["AugmentSpec", "DenseSpec", "DistillSpec", "EarlyStopping", "EvaluateSpec", "FinetuneSpec", "ModelSpec",
           "DepthSpec", "PruneSpec", "Recipe", "RobustnessFloor", "RobustnessSpec", "ScheduleSpec", "SearchSpec", "TrainSpec",
           "apply_overrides", "dump_recipe", "load_recipe", "set_path", "validation_error"]
