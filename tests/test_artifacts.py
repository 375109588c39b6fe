from __future__ import annotations

import json
import pickle

import pytest
import torch
from torch import nn

from prunetune.artifacts import load_model, save_model
from prunetune.errors import PrunetuneError
from prunetune.models import build_model
from prunetune.pruning.controller import PruningController
from prunetune.pruning.targets import select_targets
from prunetune.recipe import ModelSpec, Recipe
from prunetune.tasks.classification import Classification

from conftest import make_bundle


def _info(bundle, name="tiny_cnn"):
    return {"task": "classification", "model": {"name": name}, "num_classes": bundle.num_classes,
            "class_names": bundle.class_names, "input_shape": list(bundle.input_shape), "preprocess": bundle.preprocess}


@pytest.fixture
def saved(tmp_path):
    bundle = make_bundle()
    model = build_model(ModelSpec(name="tiny_cnn"), bundle.num_classes, bundle.input_shape)
    return save_model(model, tmp_path / "m", _info(bundle)), model, bundle


def test_no_pickle_only_safetensors_and_json(saved):
    folder, _, _ = saved
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "model.safetensors"]
    assert not list(folder.parent.glob(".m.tmp-*"))  # the temporary folder was renamed away


def test_manifest_shape_disagreeing_with_weights(saved):
    folder, _, _ = saved
    man = json.loads((folder / "manifest.json").read_text())
    man["tensors"]["classifier.weight"] = [7, 32]
    (folder / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(PrunetuneError, match="classifier.weight has shape \\[3, 32\\] but the manifest says \\[7, 32\\]"):
        load_model(folder)


def test_missing_weight_file(saved):
    folder, _, _ = saved
    (folder / "model.safetensors").unlink()
    with pytest.raises(PrunetuneError, match="model.safetensors: missing"):
        load_model(folder)


def test_pickle_offered_as_weights_is_refused(saved):
    folder, model, _ = saved
    (folder / "model.safetensors").write_bytes(pickle.dumps(model.state_dict()))
    with pytest.raises(PrunetuneError, match="not a valid safetensors file"):
        load_model(folder)


def test_manifest_schema_checked(saved):
    folder, _, _ = saved
    (folder / "manifest.json").write_text(json.dumps({"format": "prunetune-model/1"}))
    with pytest.raises(PrunetuneError, match="manifest.json: prunetune_version: Field required"):
        load_model(folder)


def test_import_path_model_needs_trust(tmp_path):
    bundle = make_bundle()
    with pytest.raises(PrunetuneError, match="trust_code: true"):
        build_model(ModelSpec(name="conftest:TinyMLP"), 3, bundle.input_shape)
    m = build_model(ModelSpec(name="conftest:TinyMLP", trust_code=True), 3, bundle.input_shape)
    folder = save_model(m, tmp_path / "u", _info(bundle, "conftest:TinyMLP"))
    with pytest.raises(PrunetuneError, match="trust_code"):
        load_model(folder)
    loaded, _ = load_model(folder, trust_code=True)
    x = bundle.test.x[:4]
    assert torch.equal(loaded(x), m.eval()(x))


def test_save_refuses_to_overwrite(saved):
    folder, model, bundle = saved
    with pytest.raises(PrunetuneError, match="already exists"):
        save_model(model, folder, _info(bundle))


def test_peak_memory_counts_weights_and_live_activations():
    from prunetune.measure import peak_memory_bytes
    from prunetune.models.builtin import SmallCNN

    model = SmallCNN(10, (1, 28, 28)).eval()
    fwd = lambda m, x: m(x)  # noqa: E731
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    first_act = 64 * 32 * 28 * 28 * 4  # the first conv's output at batch 64
    peak = peak_memory_bytes(model, fwd, torch.randn(64, 1, 28, 28), torch.device("cpu"))
    assert weights + first_act <= peak < weights + 6 * first_act
    assert peak_memory_bytes(model, fwd, torch.randn(8, 1, 28, 28), torch.device("cpu")) < peak


def test_vision_models_without_the_extra_say_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    monkeypatch.setitem(sys.modules, "timm", None)
    for name in ("torchvision:resnet18", "timm:resnet18"):
        with pytest.raises(PrunetuneError, match=r"prunetune\[vision\]"):
            build_model(ModelSpec(name=name), 10, (3, 32, 32))


def test_model_with_wrong_class_count_is_refused():
    from prunetune.dense import check_outputs
    from prunetune.tasks.classification import Classification

    bundle = make_bundle(classes=3)
    wrong = build_model(ModelSpec(name="tiny_mlp"), 5, bundle.input_shape)
    with pytest.raises(PrunetuneError, match="outputs 5 classes but the data has 3"):
        check_outputs(wrong, Classification(), bundle, "model")


def depthwise_net(num_classes, input_shape):
    """MobileNet-style: a depthwise 3x3 conv between two pointwise ones (timm's mobilenetv3 found the bug)."""
    return nn.Sequential(nn.Conv2d(input_shape[0], 8, 1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 6, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, num_classes))


def test_a_structurally_pruned_depthwise_conv_reloads_as_depthwise(tmp_path):
    bundle = make_bundle(shape=(3, 8, 8))
    spec = ModelSpec(name="test_artifacts:depthwise_net", trust_code=True)
    torch.manual_seed(0)
    dense = build_model(spec, bundle.num_classes, bundle.input_shape).eval()
    recipe = Recipe.model_validate({"model": spec.model_dump(), "prune": {"sparsity": 0.5, "calibration_batches": 1}})
    ctl = PruningController(recipe.prune, Classification(), bundle, torch.device("cpu"),
                            select_targets(dense, ["*"], [], ["10"]), 1, 0)
    pruned, _ = ctl.one_shot_copy(dense)
    assert (pruned[3].groups, pruned[3].out_channels) == (4, 4)  # Torch-Pruning keeps it depthwise
    folder = save_model(pruned, tmp_path / "dw", _info(bundle, spec.name))
    loaded, _ = load_model(folder, trust_code=True)
    assert (loaded[3].groups, loaded[3].in_channels, loaded[3].out_channels) == (4, 4, 4)
    x = bundle.test.x[:4]
    assert torch.equal(loaded.eval()(x), pruned.eval()(x))


def test_a_masked_model_saves_without_a_copy_and_keeps_its_outputs(tmp_path, monkeypatch):
    """save_model bakes the masks into the model's own weights (no deep copy: a 336 M decoder peaked at
    2.9x its fp32 size with one); the model's outputs, the saved weights and the reloaded model agree."""
    from prunetune.pruning import masks as masks_mod
    from prunetune.pruning.masks import attach_mask

    bundle = make_bundle()
    torch.manual_seed(0)
    model = build_model(ModelSpec(name="tiny_cnn"), bundle.num_classes, bundle.input_shape).eval()
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for m in layers:
        mask = attach_mask(m)
        mask.mask.copy_(torch.rand(mask.mask.shape) > 0.6)
    x = bundle.test.x[:4]
    before = model(x)
    expected = masks_mod.realise(model).state_dict()
    monkeypatch.setattr(masks_mod.copy, "deepcopy", lambda *_: pytest.fail("save_model deep-copied the model"))
    folder = save_model(model, tmp_path / "m", _info(bundle))
    monkeypatch.undo()
    assert torch.equal(model(x), before)  # the model still works and is still masked
    assert all(masks_mod.get_mask(m) is not None for m in layers)
    reloaded, _ = load_model(folder)
    assert set(reloaded.state_dict()) >= set(expected)
    for k, v in expected.items():
        assert torch.equal(reloaded.state_dict()[k], v), k
    assert torch.allclose(reloaded(x), before, atol=1e-6)
