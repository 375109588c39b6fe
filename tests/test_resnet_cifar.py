"""CIFAR ResNets: channel pruning through the residual couplings, masks and N:M, save / reload, ONNX,
predict on image files, and a whole run (depth + channels in one recipe), interrupted and resumed,
followed by refine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from prunetune.artifacts import load_model, save_model
from prunetune.export import export_onnx
from prunetune.measure import macs
from prunetune.models import build_model, classifier_name
from prunetune.pipeline import resume_run
from prunetune.predict import predict
from prunetune.pruning.controller import PruningController
from prunetune.pruning.layers import layer_type_of
from prunetune.pruning.masks import masked_layers
from prunetune.pruning.targets import select_targets
from prunetune.recipe import ModelSpec, Recipe, load_recipe
from prunetune.refine import refine
from prunetune.registry import DATA_SOURCES
from prunetune.tasks.classification import Classification

from conftest import make_bundle
from test_checkpoint import _run_killed

SHAPE = (3, 32, 32)
CLASSES = ["c0", "c1", "c2"]
PRE = {"kind": "image", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "size": [32, 32], "channels": 3}

if "tiny_rgb32" not in DATA_SOURCES:
    DATA_SOURCES.register("tiny_rgb32", "test data: 3 learnable classes of 3x32x32 noise")(
        lambda spec, seed: make_bundle(n=int(spec.limit or 40), classes=3, shape=SHAPE, seed=seed))


def resnet20(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(ModelSpec(name="resnet20"), 3, SHAPE)
    for m in model.modules():  # non-trivial BatchNorm statistics, so eval-mode logits depend on them
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def pruned_copy(model, recipe: dict, bundle=None):
    bundle = bundle or make_bundle(n=16, classes=3, shape=SHAPE)
    r = Recipe.model_validate({"model": {"name": "resnet20"}, "prune": recipe})
    targets = select_targets(model, ["*"], [], [classifier_name(model)])
    ctl = PruningController(r.prune, Classification(), bundle, torch.device("cpu"), targets, 1, 0)
    out, pruner = ctl.one_shot_copy(model)
    return out.eval(), pruner


def save(folder, model):
    info = {"task": "classification", "model": {"name": "resnet20"}, "num_classes": 3, "class_names": CLASSES,
            "input_shape": list(SHAPE), "preprocess": PRE}
    return save_model(model, folder, info)


def assert_reloads(folder, model, x) -> torch.nn.Module:
    loaded, _ = load_model(folder)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    return loaded


def test_builtin_resnets_have_their_published_sizes_and_projection_shortcuts():
    sizes = {}
    for name in ("resnet20", "resnet32", "resnet56", "resnet18"):
        m = build_model(ModelSpec(name=name), 10, SHAPE)
        sizes[name] = sum(p.numel() for p in m.parameters())
        assert m(torch.zeros(2, *SHAPE)).shape == (2, 10)
    # He et al. report 0.27 / 0.46 / 0.85 M (option A); option-B projections add a few thousand.
    assert sizes == {"resnet20": 272_474, "resnet32": 466_906, "resnet56": 855_770, "resnet18": 11_173_962}
    m = build_model(ModelSpec(name="resnet20"), 10, SHAPE)
    assert [b.downsample is None for s in (m.layer1, m.layer2, m.layer3) for b in s] == [
        True, True, True, False, True, True, False, True, True]
    assert macs(m.eval(), torch.zeros(1, *SHAPE)) == 41_407_114  # conv, BN, ReLU, pool and FC as Torch-Pruning counts them
    grey = build_model(ModelSpec(name="resnet20"), 4, (1, 28, 28))  # any channels and size
    assert grey(torch.zeros(1, 1, 28, 28)).shape == (1, 4)


def test_channel_pruning_couples_the_residual_sums_and_ships(tmp_path):
    dense = resnet20()
    x = torch.randn(5, *SHAPE, generator=torch.Generator().manual_seed(1))
    model, _ = pruned_copy(dense, {"method": "structured", "sparsity": 0.5})
    for stage in (model.layer1, model.layer2, model.layer3):
        width = stage[0].bn2.num_features
        for b in stage:  # every residual sum adds tensors of one width: the branch's and the shortcut's
            shortcut = b.downsample[1].num_features if b.downsample is not None else width
            assert b.bn2.num_features == shortcut == width and b.conv1.out_channels < 64
    assert [model.layer1[0].bn2.num_features, model.layer2[0].bn2.num_features, model.layer3[0].bn2.num_features] == [8, 16, 32]
    one = torch.zeros(1, *SHAPE)
    assert macs(model, one) < 0.4 * macs(dense, one)
    folder = save(tmp_path / "model", model)
    assert_reloads(folder, model, x)
    rep = export_onnx(folder, tmp_path / "m.onnx", check_inputs=4, threads=1, min_run_time=0.05, compare_dense=False)
    assert rep["max_abs_diff"] < 1e-4
    files = []
    rng = np.random.default_rng(0)
    for i, size in enumerate([(32, 32), (40, 50)]):
        files.append(tmp_path / f"img{i}.png")
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8), "RGB").save(files[-1])
    rows = list(predict(folder, files, batch_size=2))
    with Image.open(files[0]) as im:
        a = (np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 - 0.5) / 0.25
    with torch.no_grad():
        p = torch.softmax(model(torch.from_numpy(a).permute(2, 0, 1)[None]), 1)[0]
    assert rows[0]["label"] == CLASSES[int(p.argmax())]
    assert np.allclose([rows[0]["probabilities"][c] for c in CLASSES], p.numpy(), atol=2e-6)


@pytest.mark.parametrize("prune", [{"method": "unstructured", "sparsity": 0.7}, {"method": "nm", "n": 2, "m": 4}])
def test_masks_and_nm_round_trip(tmp_path, prune):
    model, _ = pruned_copy(resnet20(), prune)
    names = masked_layers(model)
    # stem, 9 blocks x 2 convs, 2 projections; N:M leaves the stem dense (3 x 3 x 3 = 27 inputs per filter, not / 4)
    assert len(names) == (21 if prune["method"] == "unstructured" else 20) and "classifier" not in names
    assert ("conv1" in names) == (prune["method"] == "unstructured")
    mods = dict(model.named_modules())
    w = torch.cat([mods[n].weight.flatten() for n in names])
    assert float((w == 0).float().mean()) == pytest.approx(0.7 if prune["method"] == "unstructured" else 0.5, abs=0.01)
    x = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(2))
    loaded = assert_reloads(save(tmp_path / "model", model), model, x)
    if prune["method"] == "nm":  # every group of 4 consecutive inputs keeps 2 (rows as the conv layer type lays them out)
        conv = loaded.layer2[1].conv1
        rows = layer_type_of(conv).to_rows(conv.weight).reshape(32, -1, 4)
        assert torch.equal((rows != 0).sum(-1), torch.full(rows.shape[:2], 2))


def test_depth_and_channels_in_one_recipe_run_resume_then_refine(tmp_path, monkeypatch):
    recipe = load_recipe(None, [
        "model.name=resnet20", "data.source=tiny_rgb32", "dense.epochs=1", "dense.batch_size=16",
        "finetune.epochs=2", "finetune.batch_size=16", "prune.method=structured", "prune.sparsity=0.25",
        "prune.depth.amount=0.3", "prune.calibration_batches=1", "evaluate.latency=false", "evaluate.memory=false",
    ])
    out = tmp_path / "run"
    _run_killed(recipe, out, 1, monkeypatch)  # stopped after the first fine-tuning epoch, then resumed:
    rep = resume_run(out, log=lambda m: None)  # the rebuilt run removes the same blocks, the weights fit
    assert rep["checkpoint"]["resumes"] and rep["finetune"]["epochs_run"] == 2
    kept = [r for r in rep["plan"] if r["target"]]
    gone = [r["layer"] for r in kept if r["shape_after"] == []]
    assert len(gone) == 2 * 2  # 0.3 x 7 = 2.1: 2 blocks of two convs each
    assert all(r["sparsity"] == 1.0 for r in kept if r["layer"] in gone)
    assert any(n.startswith("depth: removed") for n in rep["notes"])
    assert rep["stages"]["finetuned"]["macs"] < 0.65 * rep["stages"]["dense"]["macs"]
    model, manifest = load_model(out / "model")
    assert sum(len(s) for s in (model.layer1, model.layer2, model.layer3)) == 7
    assert sum(r["of"] - len(r["kept"]) for r in manifest.depth.values()) == 2 and all(r["of"] == 3 for r in manifest.depth.values())
    assert model.layer2[0].bn2.num_features == 24  # 32 channels less a quarter
    ref = refine(out / "model", ["finetune.epochs=1"], log=lambda m: None, data_path="new-batch")
    again, m2 = load_model(f"{ref['folder']}/model")
    assert m2.depth == manifest.depth
    assert [p.shape for p in again.parameters()] == [p.shape for p in model.parameters()]
