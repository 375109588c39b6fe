"""Recovery ingredients: BatchNorm statistics re-estimated after pruning, and the one-cycle schedule."""

from __future__ import annotations

import copy

import pytest
import torch

from prunetune.models import build_model, classifier_name
from prunetune.pipeline import run
from prunetune.pruning.batchnorm import recalibrate_bn
from prunetune.pruning.controller import PruningController
from prunetune.pruning.targets import select_targets
from prunetune.recipe import load_recipe
from prunetune.registry import TASKS
from prunetune.training import Trainer, onecycle

from conftest import make_bundle

QUIET = {"log": lambda m: None}
TINY = ["model.name=tiny_cnn", "data.source=synthetic", "data.limit=300", "dense.epochs=3", "dense.cache=false",
        "finetune.epochs=1", "evaluate.latency=false", "evaluate.memory=false"]


def test_onecycle_matches_torch_one_cycle_lr():
    total = 50
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=total, cycle_momentum=False)
    ours, theirs = [], []
    for step in range(total):
        theirs.append(opt.param_groups[0]["lr"])
        ours.append(onecycle(step, total, 0))
        opt.step()
        sched.step()
    assert ours == pytest.approx(theirs, rel=1e-6, abs=1e-9)


def _trained(recipe, bundle, task):
    torch.manual_seed(0)
    dense = build_model(recipe.model, 3, bundle.input_shape)
    trainer = Trainer(dense, task, bundle, recipe.dense, torch.device("cpu"), recipe.seed, **QUIET)
    trainer.fit(recipe.dense.epochs)
    return dense


def test_bn_recalibration_repairs_statistics_after_channel_pruning():
    recipe = load_recipe(None, [*TINY, "prune.sparsity=0.5", "prune.recalibrate_bn=4"])
    bundle, task = make_bundle(n=600, seed=0, signal=0.6), TASKS.get("classification")()
    dense = _trained(recipe, bundle, task)
    targets = select_targets(dense, recipe.prune.include, recipe.prune.exclude, [classifier_name(dense)])

    def pruned(calibrate: int):
        spec = recipe.prune.model_copy(update={"recalibrate_bn": calibrate})
        c = PruningController(spec, task, bundle, torch.device("cpu"), targets, 1, recipe.seed)
        model, _ = c.one_shot_copy(copy.deepcopy(dense))
        return model, c

    plain, c0 = pruned(0)
    fixed, c4 = pruned(4)
    assert (c0.bn_recalibrations, c4.bn_recalibrations) == (0, 1)
    # Same channels removed, same weights: only BatchNorm buffers differ.
    ws = {k: v for k, v in plain.state_dict().items() if "running" not in k and "num_batches" not in k}
    assert all(torch.equal(v, fixed.state_dict()[k]) for k, v in ws.items())
    bn_plain, bn_fixed = plain.features[1], fixed.features[1]
    assert not torch.allclose(bn_plain.running_var, bn_fixed.running_var)

    # The recalibrated statistics are those of the pruned network's activations on training data.
    fixed.eval()
    x = bundle.train.x[:256]
    with torch.no_grad():
        act = fixed.features[0](x)
    mean = act.mean(dim=(0, 2, 3))
    assert torch.allclose(bn_fixed.running_mean, mean, atol=0.15 * float(mean.abs().max()) + 1e-3)

    def loss(m):
        m.eval()
        with torch.no_grad():
            return float(task.loss(m(bundle.val.x), bundle.val.y))
    assert loss(fixed) < loss(plain)


def test_recalibrate_bn_leaves_models_without_batchnorm_or_tensor_inputs_alone():
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 4))
    before = copy.deepcopy(mlp.state_dict())
    assert recalibrate_bn(mlp, [torch.randn(8, 4)]) is False
    assert all(torch.equal(v, mlp.state_dict()[k]) for k, v in before.items())
    bn = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4)).eval()
    assert recalibrate_bn(bn, [{"input_ids": torch.zeros(2, 3)}]) is False
    assert recalibrate_bn(bn, [torch.randn(16, 4) + 3.0]) is True
    assert not bn.training and float(bn[1].running_mean.abs().sum()) > 0


def test_run_reports_recalibrations(tmp_path):
    rep = run(load_recipe(None, [*TINY, "prune.recalibrate_bn=2", "prune.schedule.kind=iterative",
                                 "prune.schedule.steps=2", "finetune.epochs=2"]), tmp_path / "r", **QUIET)
    # The one-shot preview measured as the "pruned" stage, then the two rounds of the fine-tuned model.
    assert rep["bn_recalibrations"] == 3
    assert rep["stages"]["pruned"]["accuracy"] > 0
