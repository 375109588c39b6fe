"""`evaluate_model`: score a saved model folder on its test set (what `prunetune eval` runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .artifacts import load_model, resolve_tokenizer
from .data_spec import DataSpec
from .errors import PrunetuneError
from .recipe import ModelSpec, apply_overrides, validation_error
from .session import open_session
from .tasks import Task


def evaluate_model(folder: str | Path, overrides: list[str] | None = None, trust_code: bool = False,
                   device: str | None = None) -> dict[str, Any]:
    """Test accuracy of a saved model on the data its recipe names (overridable with `data.key=value`)."""
    model, manifest = load_model(folder, trust_code=trust_code)
    recipe = manifest.recipe
    data = dict(recipe.get("data", {}))
    for o in overrides or []:
        if not o.startswith("data."):
            raise PrunetuneError(f"--set {o}: eval only takes data.* overrides (e.g. data.path=/my/data)")
    data = apply_overrides({"data": data}, overrides)["data"]
    try:
        spec = DataSpec.model_validate(data)
    except ValidationError as e:
        raise validation_error(e, within="data") from None
    if manifest.preprocess.get("kind") == "text" and not any(o.startswith("data.tokenizer=") for o in overrides or []):
        spec = spec.with_options(tokenizer=resolve_tokenizer(Path(folder), manifest.preprocess))
    # Sources that check the data against the model (feature width, id tables) see the saved model's
    # spec, its data-decided kwargs included.
    saved = ModelSpec.model_validate(manifest.model)
    saved = saved.model_copy(update={"kwargs": {**manifest.model_kwargs, **saved.kwargs}})
    session = open_session(seed=recipe.get("seed", 0), task=Task.from_manifest(manifest), device=device)
    bundle = session.load_data(spec, saved, saved=manifest.preprocess)
    if bundle.class_names != manifest.class_names:
        raise PrunetuneError(
            f"{folder}: the model's classes {manifest.class_names[:4]}... differ from the data's "
            f"{bundle.class_names[:4]}...; evaluate on data with the same classes"
        )
    dev, task = session.device, session.task
    result = task.evaluate(model.to(dev), bundle.test, bundle.eval_batch_size, dev, bundle.class_names)
    result["examples"] = len(bundle.test)
    return result
