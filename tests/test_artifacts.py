from __future__ import annotations

import json
import pickle

import pytest
import torch

from prunetune.artifacts import load_model, save_model
from prunetune.errors import PrunetuneError
from prunetune.models import build_model
from prunetune.recipe import ModelSpec

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
