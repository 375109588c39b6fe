"""The dense (starting) model: loaded from the user's safetensors file, or trained and cached; and
`model_info`, what a saved model's manifest records besides its tensors.

A trained dense model is cached by a hash of the recipe's task, model, data, dense and seed
fields (`dense_key`), so repeated runs and sweeps skip training. Cache root: $PRUNETUNE_CACHE or
~/.cache/prunetune (`files.cache_root`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from .artifacts import FORMAT, load_model, save_model
from .errors import PrunetuneError
from .files import cache_root
from .models import build_model, classifier_name
from .models.hf import is_hf
from .registry import TASKS
from .tasks import Task
from .training import Trainer


# Bump when a default that changes how the dense model trains changes: keys hash only the values
# a recipe sets away from the defaults, so adding a new option does not invalidate every cache.
CACHE_DEFAULTS_VERSION = 1


def dense_key(recipe) -> str:
    """Hash of what determines the dense model: task (and its metric), seed, model, data and dense (non-default values)."""
    data = recipe.data.model_dump(mode="json", exclude_defaults=True)
    for k in ("eval_batch_size", "test_limit"):
        data.pop(k, None)
    dense = recipe.dense.model_dump(mode="json", exclude_defaults=True)
    dense.pop("cache", None)
    dense.pop("checkpoint_every_steps", None)  # fine-tuning only: does not change the dense model
    payload = {"format": FORMAT, "defaults": CACHE_DEFAULTS_VERSION, "task": recipe.task, "seed": recipe.seed,
               "model": recipe.model.model_dump(mode="json", exclude_defaults=True), "data": data, "dense": dense}
    metric = Task.from_recipe(recipe).metric
    if metric != TASKS.get(recipe.task).metric:  # the dense model's best epoch follows it; the default keeps old keys
        payload["metric"] = metric
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def split_fingerprint(bundle) -> str:
    """Hash of the training and validation labels in order: a different split of the same data changes it."""
    h = hashlib.sha256()
    for part in (bundle.train.y, bundle.val.y):
        h.update(part.detach().cpu().contiguous().numpy().tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


def model_info(recipe, bundle) -> dict[str, Any]:
    """What a saved model's manifest needs besides its tensors."""
    return {
        "task": recipe.task,
        "model": recipe.model.model_dump(mode="json"),
        "num_classes": bundle.num_classes,
        "class_names": bundle.class_names,
        "input_shape": list(bundle.input_shape),
        "preprocess": bundle.preprocess,
        "model_kwargs": bundle.model_kwargs,
        "recipe": recipe.model_dump(mode="json"),
    }


def check_outputs(model: nn.Module, task, bundle, where: str) -> None:
    with torch.no_grad():
        model.eval()
        out = task.forward(model, bundle.train.head(2))
    task.check_outputs(out, bundle, where)


def _load_user_file(model: nn.Module, path: Path, bundle) -> None:
    if not path.exists():
        raise PrunetuneError(f"dense.path: {path} not found; give a .safetensors file of trained weights")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError):
        raise PrunetuneError(
            f"dense.path: {path} is not a safetensors file (pickled .pt/.pth files are refused); "
            "convert with safetensors.torch.save_file(model.state_dict(), path)"
        ) from None
    own = model.state_dict()
    cls = classifier_name(model)
    w = f"{cls}.weight" if cls else None
    if w and w in state and w in own and state[w].shape[0] != own[w].shape[0]:
        raise PrunetuneError(
            f"dense.path: {path} has {state[w].shape[0]} output classes but the data has {bundle.num_classes}; "
            "use weights trained for these classes"
        )
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    bad = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or extra or bad:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}" if extra else
                  f"shape of {bad[0]} is {list(state[bad[0]].shape)}, model wants {list(own[bad[0]].shape)}")
        raise PrunetuneError(f"dense.path: {path} does not fit model {model.__class__.__name__} ({detail}); check model.name")
    model.load_state_dict(state)


def untrained_dense(recipe, bundle, task) -> tuple[nn.Module, str]:
    """The dense model as far as it exists without training (what `prunetune check` inspects), and which
    weights it has: the dense.path file, the cached trained model, or the initial (untrained) weights."""
    folder = cache_root() / "dense" / dense_key(recipe)
    if recipe.dense.source == "file":
        model = build_model(recipe.model, bundle.num_classes, bundle.input_shape, bundle.model_kwargs)
        check_outputs(model, task, bundle, "model")
        _load_user_file(model, Path(recipe.dense.path), bundle)
        return model, f"trained, from dense.path {recipe.dense.path}"
    if recipe.dense.cache and (folder / "manifest.json").exists():
        return load_model(folder, trust_code=recipe.model.trust_code)[0], f"trained, the cached dense model {folder}"
    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model, bundle.num_classes, bundle.input_shape, bundle.model_kwargs)
    check_outputs(model, task, bundle, "model")
    start = "pretrained, before task training" if is_hf(recipe.model.name) else "initial (untrained)"
    return model, (f"{start}: no cached dense model yet (the run trains it for {recipe.dense.epochs} epochs first; "
                   "the plan ranks these weights)")


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # the cache's file itself: no second copy on disk
    except OSError:
        shutil.copy2(src, dst)  # another file system (or no hard links): a copy


def write_run_dense(folder: Path, dense: nn.Module, info: dict[str, Any], stage: dict[str, Any],
                    meta: dict[str, Any]) -> None:
    """A run folder's `dense/`: `model/`, the run's dense model (the cached folder's files hard-linked, or
    copied across file systems; else saved from `dense`, with `meta` as the manifest's model info), and
    `measured.json`: how it was obtained (`info`, the report's `dense`) and its measured stage."""
    folder.mkdir(parents=True, exist_ok=True)
    cached = Path(info["cache"]) if info.get("cache") else None
    if cached is not None and (cached / "manifest.json").is_file():
        shutil.copytree(cached, folder / "model", copy_function=_link_or_copy)
    else:
        save_model(dense, folder / "model", {**meta, "dense": {k: v for k, v in info.items() if k != "history"}})
    doc = {"obtained": info, "stage": stage, "model": "model/"}
    (folder / "measured.json").write_text(json.dumps(doc, indent=2) + "\n")


def obtain_dense(recipe, bundle, task, device: torch.device, log: Callable[[str], None],
                 on_epoch: Callable[[dict[str, Any]], None] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Return the dense model and how it was obtained (source, cache path, training history).

    `on_epoch` gets each training epoch's history row (only when the model is trained here)."""
    spec = recipe.dense
    if spec.source == "file":
        model = build_model(recipe.model, bundle.num_classes, bundle.input_shape, bundle.model_kwargs)
        check_outputs(model, task, bundle, "model")
        _load_user_file(model, Path(spec.path), bundle)
        return model.to(device), {"source": "file", "path": str(spec.path), "history": []}
    folder = cache_root() / "dense" / dense_key(recipe)
    split = split_fingerprint(bundle)
    stale = False
    if spec.cache and (folder / "manifest.json").exists():
        model, manifest = load_model(folder, trust_code=recipe.model.trust_code)
        info = json.loads((folder / "manifest.json").read_text()).get("dense", {})
        # The same recipe can mean other inputs or other splits when the data code changed (an unset
        # data.image_size once meant 32; held-out splits once took equal counts per class): a model
        # trained on what is now validation data must not be reused. Caches from before the split was
        # recorded are reused as they are.
        if list(manifest.input_shape) != list(bundle.input_shape):
            log(f"dense: cached model {folder} takes inputs {manifest.input_shape}, the data has "
                f"{list(bundle.input_shape)}; training a new one")
            stale = True
        elif info.get("split", split) != split:
            log(f"dense: cached model {folder} was trained on another train/validation split; training a new one")
            stale = True
        else:
            log(f"dense: loaded from cache {folder}")
            return model.to(device), {**info, "source": "cache", "cache": str(folder)}
    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model, bundle.num_classes, bundle.input_shape, bundle.model_kwargs)
    check_outputs(model, task, bundle, "model")
    log(f"dense: training {recipe.model.name} for {spec.epochs} epochs")
    trainer = Trainer(model, task, bundle, spec, device, recipe.seed, desc="dense", log=log, on_epoch=on_epoch)
    history = trainer.fit(spec.epochs)
    info = {"source": "train", "history": history, "best_epoch": trainer.best_epoch, "wall_s": round(trainer.wall_s, 2),
            "split": split}
    if spec.cache:
        try:
            if stale:  # replaced, so the next run loads the model that fits
                shutil.rmtree(folder, ignore_errors=True)
            save_model(model, folder, {**model_info(recipe, bundle), "dense": info})
            info["cache"] = str(folder)
        except PrunetuneError:
            pass  # another process cached the same model meanwhile
        except OSError as e:
            log(f"dense: could not cache the trained model ({e.strerror}); continuing")
    return model, info
