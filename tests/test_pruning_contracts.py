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
from prunetune.errors import PrunetuneError
from prunetune.measure import macs
from prunetune.models import build_model, classifier_name
from prunetune.pruning.controller import PruningController
from prunetune.pruning.layers import layer_type_of
from prunetune.pruning.masks import masked_layers, realise
from prunetune.pruning.targets import select_targets
from prunetune.recipe import Recipe
from prunetune.registry import IMPORTANCES, PRUNERS, SCHEDULES
from prunetune.tasks.classification import Classification
from prunetune.training import Trainer

from conftest import make_bundle

CASES = [(m, p, i, s) for m in ("tiny_mlp", "tiny_cnn") for p in PRUNERS.names() for i in IMPORTANCES.names() for s in SCHEDULES.names()]


def _recipe(model: str, method: str, importance: str, schedule: str) -> Recipe:
    return Recipe.model_validate({
        "model": {"name": model},
        "prune": {"method": method, "importance": importance, "sparsity": 0.5,
                  "calibration_batches": 1 if importance == "sparsegpt" else 2,  # the tiny training split is one batch
                  "schedule": {"kind": schedule, "steps": 2, "epochs_per_step": 1}},
        "finetune": {"epochs": 2, "batch_size": 16, "lr": 1e-2},
    })


def _check_masks(model: torch.nn.Module) -> None:
    for name, mod in model.named_modules():
        if hasattr(mod, "parametrizations"):
            orig_masked = mod.weight[~mod.parametrizations.weight[0].mask]
            assert torch.count_nonzero(orig_masked) == 0, f"{name}: a masked weight is non-zero"


def _prune_and_finetune(recipe: Recipe, bundle, check_masks):
    """Build the dense model, prune it by the recipe's schedule during fine-tuning, and call
    `check_masks(model)` after every optimizer step. Returns (dense, model, pruner, targets)."""
    torch.manual_seed(0)
    dense = build_model(recipe.model, bundle.num_classes, bundle.input_shape)
    targets = select_targets(dense, ["*"], [], [classifier_name(dense)])
    task = Classification()
    ctl = PruningController(recipe.prune, task, bundle, torch.device("cpu"), targets, recipe.finetune.epochs, 0)
    model = copy.deepcopy(dense)
    pruner = ctl.make_pruner(model, ctl.sparsities)
    trainer = Trainer(model, task, bundle, recipe.finetune, torch.device("cpu"), 0, log=lambda m: None)
    steps = []
    handle = register_optimizer_step_post_hook(lambda opt, a, k: (check_masks(model), steps.append(1)))
    try:
        ctl.finetune(model, pruner, trainer, already_pruned=False, log=lambda m: None)
    finally:
        handle.remove()
    assert steps, "fine-tuning made no optimizer step"
    return dense, model, pruner, targets


@pytest.mark.parametrize("model_name,method,importance,schedule", CASES)
def test_contract(model_name, method, importance, schedule):
    if method in ("structured", "depth") and importance == "sparsegpt":  # SparseGPT masks weights and rebuilds the rest (checked first)
        with pytest.raises(ValueError, match=f"sparsegpt works with prune.method unstructured or nm, not {method}"):
            _recipe(model_name, method, importance, schedule)
        return
    if method == "structured" and importance == "wanda":  # Wanda scores weights; channel groups only in decoders
        with pytest.raises(ValueError, match="wanda with structured pruning is supported for causal language models"):
            _recipe(model_name, method, importance, schedule)
        return
    if schedule not in PRUNERS.get(method).schedules:
        with pytest.raises(ValueError, match="not supported by prune.method"):
            _recipe(model_name, method, importance, schedule)
        return
    if method == "depth":  # whole blocks: these tiny models have none (tests/test_depth.py covers ResNets, BERT, Llama)
        with pytest.raises(PrunetuneError, match="prune.method: depth pruning needs repeated residual blocks"):
            _prune_and_finetune(_recipe(model_name, method, importance, schedule), make_bundle(), lambda m: None)
        return
    recipe = _recipe(model_name, method, importance, schedule)
    bundle = make_bundle()
    if importance == "sparsegpt" and model_name == "tiny_cnn":  # reconstruction of linear layers only
        with pytest.raises(PrunetuneError, match=r"sparsegpt reconstructs linear layers .* not features.0 \(Conv2d\)"):
            _prune_and_finetune(recipe, bundle, _check_masks)
        return
    dense, model, pruner, targets = _prune_and_finetune(recipe, bundle, _check_masks)

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
        loaded, manifest = load_model(Path(d) / "m", keep_masks=True)
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


# ---------------------------------------------------------------- sequence and embedding layers (issue 8)
# LSTM (2 layers, bidirectional), GRU read through h_n, 1-D convolutions, an embedding feeding a GRU:
# the same contracts, with every gate tensor of an RNN masked on its own.

from sequence_fixtures import BUNDLES, SEQ_MODELS  # noqa: E402  (registers the tiny sequence models)

# wanda: input norms of linear / conv layers only; sparsegpt: reconstruction of linear layers only
SEQ_IMPORTANCES = [i for i in IMPORTANCES.names() if i not in ("wanda", "sparsegpt")]
SEQ_CASES = [(m, p, i, s) for m in SEQ_MODELS for p in PRUNERS.names() for i in SEQ_IMPORTANCES for s in SCHEDULES.names()
             if s in PRUNERS.get(p).schedules and p != "depth"]  # no repeated blocks in the sequence models


def _check_all_masks(model: torch.nn.Module) -> None:
    from prunetune.pruning.masks import masked_tensors

    mods = dict(model.named_modules())
    for key, mask in masked_tensors(model).items():
        layer, _, tensor = key.rpartition(".")
        assert torch.count_nonzero(getattr(mods[layer], tensor)[~mask]) == 0, f"{key}: a masked weight is non-zero"


def _units(mod: torch.nn.Module) -> int:
    from prunetune.pruning.sequence import RNN_TYPES

    if isinstance(mod, RNN_TYPES):
        return mod.hidden_size
    if isinstance(mod, torch.nn.Embedding):
        return mod.embedding_dim
    return mod.weight.shape[0]


@pytest.mark.parametrize("model_name,method,importance,schedule", SEQ_CASES)
def test_sequence_contract(model_name, method, importance, schedule):
    import tempfile
    from pathlib import Path

    from prunetune.pruning.masks import masked_layer_names, masked_tensors
    from prunetune.pruning.sequence import RNN_TYPES, gates

    recipe = _recipe(model_name, method, importance, schedule)
    bundle = BUNDLES[model_name]()
    dense, model, pruner, targets = _prune_and_finetune(recipe, bundle, _check_all_masks)

    x = bundle.test.x[:5]
    model.eval()
    out = model(x)
    assert out.shape == (5, bundle.num_classes) and torch.isfinite(out).all()
    mods, dense_mods = dict(model.named_modules()), dict(dense.named_modules())
    if pruner.masked:
        assert set(masked_layer_names(model)) == set(pruner.targets)
        rnn_tensors = {f"{n}.{t}" for n in targets if isinstance(mods[n], RNN_TYPES)
                       for t in ("weight_ih_l0", "weight_hh_l0")}
        assert rnn_tensors <= set(masked_tensors(model))  # every gate tensor, the recurrent ones included
        for key, mask in masked_tensors(model).items():
            layer, _, tensor = key.rpartition(".")
            w = getattr(mods[layer], tensor).detach()
            if method == "nm":
                rows = layer_type_of(mods[layer]).to_rows(w)  # conv1d: [out * k, in]; gate tensors as they are
                groups = rows.reshape(rows.shape[0], -1, recipe.prune.m)
                assert (torch.count_nonzero(groups, dim=2) <= recipe.prune.n).all(), key
            elif recipe.prune.scope == "layer":
                assert abs(1 - mask.float().mean().item() - 0.5) < 0.05, key
        assert macs(realise(model), x[:1]) == macs(dense, x[:1])
    else:
        for name in targets:
            before, after = _units(dense_mods[name]), _units(mods[name])
            assert after == before - int(before * 0.5), f"{name}: {before} -> {after} units"
            m = mods[name]
            if isinstance(m, RNN_TYPES):
                g, h = gates(m), m.hidden_size
                for key, t in m.named_parameters():
                    if key.startswith("weight_hh"):
                        assert tuple(t.shape) == (g * h, h), key
                    elif key.startswith(("weight_ih", "bias")):
                        assert t.shape[0] == g * h, key
            if isinstance(m, torch.nn.Embedding):
                assert m.num_embeddings == dense_mods[name].num_embeddings  # rows (ids) are never removed
        assert mods[classifier_name(model)].weight.shape[0] == bundle.num_classes
        assert macs(model, x[:1]) < 0.7 * macs(dense, x[:1])

    info = {"task": "classification", "model": recipe.model.model_dump(), "num_classes": bundle.num_classes,
            "class_names": bundle.class_names, "input_shape": list(bundle.input_shape), "preprocess": bundle.preprocess}
    with tempfile.TemporaryDirectory() as d:
        save_model(model, Path(d) / "m", info)
        loaded, _ = load_model(Path(d) / "m", keep_masks=True)
        assert torch.equal(loaded(x), model(x))
        assert set(masked_tensors(loaded)) == set(masked_tensors(model))
