"""torchvision and timm models through prunetune's loop, in their own virtual environment (`make test-vision`).

PyPI's torchvision does not import beside the project's torch==2.13.0 CPU build, so these tests run
in `.venv-vision` (torch 2.14.1, torchvision 0.29.1, timm 1.0.31; `make vision-setup`) and are
skipped in the main one. Models have random weights (nothing is downloaded); the data is a
class-balanced subset of the real CIFAR-10 test archive in ../shared/data/cifar10 (read through
image_folder: the archive is unpacked once into the test cache).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")
ort = pytest.importorskip("onnxruntime")

from prunetune.artifacts import load_model, save_model  # noqa: E402
from prunetune.data import build_data  # noqa: E402
from prunetune.export import export_onnx  # noqa: E402
from prunetune.models import build_model, classifier_name  # noqa: E402
from prunetune.pipeline import run  # noqa: E402
from prunetune.pruning.controller import PruningController  # noqa: E402
from prunetune.pruning.targets import select_targets  # noqa: E402
from prunetune.recipe import ModelSpec, Recipe  # noqa: E402
from prunetune.tasks.classification import Classification  # noqa: E402

from conftest import make_bundle  # noqa: E402

CIFAR_TEST = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cifar10" / "test.tar.gz"
FAST_EVAL = {"latency": False, "memory": False}


def _recipe(model: str) -> Recipe:
    if not CIFAR_TEST.is_file():
        pytest.skip(f"{CIFAR_TEST} not found (the shared data folder beside the checkout)")
    return Recipe.model_validate({
        "seed": 0,
        "model": {"name": model},
        "data": {"source": "image_folder", "path": str(CIFAR_TEST), "limit": 96, "val_size": 32, "test_limit": 40,
                 "eval_batch_size": 64},
        "dense": {"epochs": 0, "cache": False},  # random weights: nothing is downloaded
        "prune": {"method": "structured", "sparsity": 0.5, "calibration_batches": 1},
        "finetune": {"epochs": 1, "batch_size": 32, "augment": {"crop_padding": 4, "hflip": True}},
        "evaluate": FAST_EVAL,
    })


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def test_torchvision_resnet18_prunes_finetunes_saves_reloads_and_exports(tmp_path):
    recipe = _recipe("torchvision:resnet18")
    report = run(recipe, tmp_path / "run", log=lambda s: None)

    # Channels were removed (structured): every pruned conv is narrower, the parameters fell.
    dense, tuned = report["stages"]["dense"], report["stages"]["finetuned"]
    assert tuned["params"] < 0.5 * dense["params"], (tuned["params"], dense["params"])
    conv1 = next(r for r in report["plan"] if r["layer"] == "layer1.0.conv1")
    assert conv1["shape_after"][0] == conv1["shape_before"][0] // 2 == 32
    assert report["finetune"]["steps"] == 2  # 64 training images in batches of 32
    assert report["finetune"]["history"][0]["train_loss"] > 0

    # The saved folder reloads to the model that was measured: same test accuracy, on the same data.
    model, manifest = load_model(tmp_path / "run" / "model")
    assert manifest.input_shape == [3, 32, 32] and len(manifest.class_names) == 10
    bundle = build_data(recipe.data, recipe.seed)
    x = bundle.test.x
    logits = _logits(model, x)
    acc = 100.0 * float((logits.argmax(1) == bundle.test.y).float().mean())
    assert acc == pytest.approx(tuned["accuracy"], abs=1e-6)
    # A second save of the reloaded model gives identical logits.
    save_model(model, tmp_path / "again", json.loads((tmp_path / "run" / "model" / "manifest.json").read_text()))
    again, _ = load_model(tmp_path / "again")
    assert torch.equal(_logits(again, x), logits)

    # ONNX: the exported pruned graph gives onnxruntime the same logits.
    onnx_file = tmp_path / "resnet18.onnx"
    exported = export_onnx(tmp_path / "run" / "model", onnx_file, check_inputs=8, threads=1, min_run_time=0.05,
                           compare_dense=False, rounds=2)
    assert onnx_file.is_file() and exported["max_abs_diff"] < 1e-3
    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x[:8].numpy()})[0]
    np.testing.assert_allclose(got, logits[:8].numpy(), atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("name", ["timm:resnet18", "timm:mobilenetv3_small_050"])
def test_timm_model_prunes_saves_and_reloads_identically(tmp_path, name):
    shape = (3, 32, 32)
    torch.manual_seed(0)
    spec = ModelSpec(name=name)
    dense = build_model(spec, 10, shape).eval()
    bundle = make_bundle(n=40, classes=10, shape=shape)
    recipe = Recipe.model_validate({"model": spec.model_dump(), "prune": {"sparsity": 0.5, "calibration_batches": 1}})
    targets = select_targets(dense, ["*"], [], [classifier_name(dense)])
    ctl = PruningController(recipe.prune, Classification(), bundle, torch.device("cpu"), targets, 1, 0)
    pruned, _ = ctl.one_shot_copy(dense)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(pruned) < 0.6 * count(dense)
    x = bundle.test.x[:8]
    before = _logits(pruned, x)
    assert before.shape == (8, 10) and torch.isfinite(before).all()
    save_model(pruned, tmp_path / "m", {"task": "classification", "model": spec.model_dump(mode="json"),
                                        "num_classes": 10, "class_names": [str(i) for i in range(10)],
                                        "input_shape": list(shape), "preprocess": {"kind": "image"}})
    loaded, _ = load_model(tmp_path / "m")
    assert torch.equal(_logits(loaded, x), before)
