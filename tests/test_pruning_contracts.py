"""The contract table: every importance x pruner x schedule on tiny models.

Checks: forward runs; masked weights are exactly zero after every optimizer step; masks reach
the planned sparsity (N:M groups hold); structured pruning shrinks tensors and MACs as planned;
save/load gives identical outputs.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from prunetune.artifacts import load_model, save_model
from prunetune.measure import macs
from prunetune.models import build_model, classifier_name
from prunetune.pruning.controller import PruningController
from prunetune.pruning.layers import layer_type_of
from prunetune.pruning.masks import masked_layers, realise
from prunetune.pruning.targets import select_targets
from prunetune.recipe import Recipe
from prunetune.registry import IMPORTANCES, PRUNERS, SCHEDULES
from prunetune.tasks import Classification
from prunetune.training import Trainer

from conftest import make_bundle

CASES = [(m, p, i, s) for m in ("tiny_mlp", "tiny_cnn") for p in PRUNERS.names() for i in IMPORTANCES.names() for s in SCHEDULES.names()]


def _recipe(model: str, method: str, importance: str, schedule: str) -> Recipe:
    return Recipe.model_validate({
        "model": {"name": model},
        "prune": {"method": method, "importance": importance, "sparsity": 0.5, "calibration_batches": 2,
                  "schedule": {"kind": schedule, "steps": 2, "epochs_per_step": 1}},
        "finetune": {"epochs": 2, "batch_size": 16, "lr": 1e-2},
    })


def _check_masks(model: torch.nn.Module) -> None:
    for name, mod in model.named_modules():
        if hasattr(mod, "parametrizations"):
            orig_masked = mod.weight[~mod.parametrizations.weight[0].mask]
            assert torch.count_nonzero(orig_masked) == 0, f"{name}: a masked weight is non-zero"


@pytest.mark.parametrize("model_name,method,importance,schedule", CASES)
def test_contract(model_name, method, importance, schedule):
    if schedule not in PRUNERS.get(method).schedules:
        with pytest.raises(ValueError, match="not supported by prune.method"):
            _recipe(model_name, method, importance, schedule)
        return
    recipe = _recipe(model_name, method, importance, schedule)
    bundle = make_bundle()
    task = Classification()
    torch.manual_seed(0)
    dense = build_model(recipe.model, bundle.num_classes, bundle.input_shape)
    targets = select_targets(dense, ["*"], [], [classifier_name(dense)])
    ctl = PruningController(recipe.prune, task, bundle, torch.device("cpu"), targets, recipe.finetune.epochs, 0)
    model = copy.deepcopy(dense)
    pruner = ctl.make_pruner(model, ctl.sparsities)
    trainer = Trainer(model, task, bundle, recipe.finetune, torch.device("cpu"), 0, log=lambda m: None)

    steps = []
    handle = register_optimizer_step_post_hook(lambda opt, a, k: (_check_masks(model), steps.append(1)))
    try:
        ctl.finetune(model, pruner, trainer, already_pruned=False, log=lambda m: None)
    finally:
        handle.remove()
    assert steps, "fine-tuning made no optimizer step"

    x = bundle.test.x[:5]
    model.eval()
    out = model(x)
    assert out.shape == (5, bundle.num_classes) and torch.isfinite(out).all()

    mods = dict(model.named_modules())
    dense_mods = dict(dense.named_modules())
    if pruner.masked:
        masks = masked_layers(model)
        assert set(masks) == set(pruner.targets)
        for name, mask in masks.items():
            w = mods[name].weight
            if method == "nm":
                rows = layer_type_of(mods[name]).to_rows(w.detach())
                groups = rows.reshape(rows.shape[0], -1, recipe.prune.m)
                assert (torch.count_nonzero(groups, dim=2) <= recipe.prune.n).all()
            elif recipe.prune.scope == "layer":
                assert abs(1 - mask.float().mean().item() - 0.5) < 0.02, name
        assert macs(realise(model), x[:1]) == macs(dense, x[:1])  # masks do not change dense MACs
    else:
        for name in targets:
            before, after = dense_mods[name].weight.shape[0], mods[name].weight.shape[0]
            assert after == before - int(before * 0.5), f"{name}: {before} -> {after} channels"
        assert mods[classifier_name(model)].weight.shape[0] == bundle.num_classes
        assert macs(model, x[:1]) < 0.5 * macs(dense, x[:1])

    info = {"task": "classification", "model": recipe.model.model_dump(), "num_classes": bundle.num_classes,
            "class_names": bundle.class_names, "input_shape": list(bundle.input_shape), "preprocess": bundle.preprocess}
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        save_model(model, Path(d) / "m", info)
        loaded, manifest = load_model(Path(d) / "m")
        assert torch.equal(loaded(x), model(x))
        assert set(masked_layers(loaded)) == set(masked_layers(model))


def test_round_to_keeps_channel_multiples():
    bundle = make_bundle()
    recipe = Recipe.model_validate({"model": {"name": "tiny_cnn"}, "prune": {"sparsity": 0.3, "round_to": 4}})
    dense = build_model(recipe.model, bundle.num_classes, bundle.input_shape)
    targets = select_targets(dense, ["*"], [], ["classifier"])
    ctl = PruningController(recipe.prune, Classification(), bundle, torch.device("cpu"), targets, 1, 0)
    model, _ = ctl.one_shot_copy(dense)
    widths = [dict(model.named_modules())[n].weight.shape[0] for n in targets]
    assert all(w % 4 == 0 for w in widths) and widths != [8, 16, 32]
