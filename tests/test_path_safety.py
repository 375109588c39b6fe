"""Paths that recipes, manifests and checkpoint records name cannot make prunetune write (or read a
tokenizer) outside the folder they belong to; each refusal is one PrunetuneError line naming the field."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from prunetune.artifacts import load_model, resolve_tokenizer, save_model
from prunetune.errors import PrunetuneError
from prunetune.models import build_model
from prunetune.recipe import ModelSpec, Recipe, load_recipe


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def _model_folder(folder: Path, recipe: dict | None = None) -> Path:
    spec = ModelSpec(name="tiny_mlp")
    torch.manual_seed(0)
    model = build_model(spec, 3, (1, 8, 8))
    full = Recipe.model_validate(recipe or {"model": {"name": "tiny_mlp"}, "data": {"source": "synthetic"}})
    return save_model(model, folder, {
        "task": "classification", "model": spec.model_dump(mode="json"), "num_classes": 3,
        "class_names": ["c0", "c1", "c2"], "input_shape": [1, 8, 8],
        "preprocess": {"kind": "image", "mean": [0.0], "std": [1.0], "size": [8, 8], "channels": 1},
        "recipe": full.model_dump(mode="json")})


def _edit_manifest(folder: Path, **fields) -> None:
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    m.update(fields)
    path.write_text(json.dumps(m))


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".", "a\\b"])
def test_recipe_name_is_a_plain_folder_name(name):
    with pytest.raises(PrunetuneError) as e:
        load_recipe(None, [f"name={name}"])
    assert "name:" in _one_line(e)


def test_run_out_that_exists_or_climbs_is_refused(tmp_path):
    from prunetune.pipeline import run

    (tmp_path / "a").mkdir()
    recipe = load_recipe(None, ["model.name=tiny_mlp", "data.source=synthetic"])
    for out in (tmp_path / "a" / "..", tmp_path / "a"):
        with pytest.raises(PrunetuneError) as e:
            run(recipe, out, log=lambda m: None)
        assert _one_line(e).startswith("--out")


def test_checkpoint_folder_never_removes_what_prunetune_did_not_write(tmp_path):
    from prunetune.checkpointer import Checkpointer

    recipe = load_recipe(None, ["model.name=tiny_mlp", "data.source=synthetic"])
    mine = tmp_path / "results.checkpoint"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    with pytest.raises(PrunetuneError) as e:
        Checkpointer(tmp_path / "results", recipe, log=lambda m: None)
    assert _one_line(e).startswith("--out") and "thesis.tex" in str(e.value)
    assert (mine / "thesis.tex").read_text() == "precious"
    os.symlink(mine, tmp_path / "linked.checkpoint")
    with pytest.raises(PrunetuneError, match="a link or a file"):
        Checkpointer(tmp_path / "linked", recipe, log=lambda m: None)
    # What an interrupted run leaves (before its first checkpoint) is still cleared.
    left = tmp_path / "r.checkpoint"
    (left / "dense").mkdir(parents=True)
    (left / ".checkpoint.json.x1.tmp").write_text("")
    Checkpointer(tmp_path / "r", recipe, log=lambda m: None)
    assert not left.exists()


@pytest.mark.parametrize("state_file", ["../../victim.safetensors", "/etc/passwd", "state-1/../../x.safetensors", 7])
def test_checkpoint_record_state_file_stays_in_the_folder(tmp_path, state_file):
    from prunetune.checkpoint import FORMAT, RECORD, Resume, checkpoint_dir

    d = checkpoint_dir(tmp_path / "run")
    d.mkdir()
    record = {k: {} for k in Resume.REQUIRED}
    record.update(format=FORMAT, state_file=state_file, state_sha256="0" * 64)
    (d / RECORD).write_text(json.dumps(record))
    with pytest.raises(PrunetuneError) as e:
        Resume.load(tmp_path / "run")
    assert "state_file" in _one_line(e) and "corrupt" in str(e.value)


def test_refine_writes_its_version_beside_the_model_folder(tmp_path):
    from prunetune.refine import next_version, refine

    model = _model_folder(tmp_path / "run" / "model")
    assert next_version(model) == tmp_path / "run" / "model-v2"
    # '..' and '.' in the given path: the version still lands beside the folder named, never inside it.
    assert next_version(model / "..") == tmp_path / "run-v2"
    assert next_version(model / ".") == tmp_path / "run" / "model-v2"
    for out in (model / "v2", model / "sub" / ".." / "v2"):
        with pytest.raises(PrunetuneError) as e:
            refine(model, out=out, data_path=tmp_path, log=lambda m: None)
        assert _one_line(e).startswith(f"--out {out}: inside the model folder")
    assert sorted(p.name for p in model.iterdir()) == ["manifest.json", "model.safetensors"]


@pytest.mark.parametrize("modules,field", [
    ({"adapters": {"names": ["features.9"], "size": 4}}, "modules.adapters.names: 'features.9' is not a linear layer"),
    ({"adapters": {"names": ["__class__"], "size": 4}}, "modules.adapters.names: '__class__' is not a linear layer"),
    ({"adapters": {"names": ["features/../1"], "size": 4}}, "modules.adapters.names: 'features/../1' is not a layer name"),
    ({"adapters": {"names": ["features..1"], "size": 4}}, "modules.adapters.names"),
    ({"adapters": {"names": ["features.1", "features.1"], "size": 4}}, "named twice"),
    ({"adapters": {"names": "features.1", "size": 4}}, "modules.adapters.names: missing or not a list"),
    ({"adapters": {"names": ["features.1"], "size": "4; rm"}}, "modules.adapters.size"),
    ({"adapters": {"names": ["features.1"], "size": 10**9}}, "modules.adapters.size"),
    ({"adapters": [1]}, "modules.adapters.names"),
    ({"prompt_tuning": {"virtual_tokens": 0}}, "modules.prompt_tuning.virtual_tokens"),
    ({"prompt_tuning": {"virtual_tokens": 4, "classifier": "no.such"}}, "modules.prompt_tuning.classifier"),
    ({"lora": {}}, "modules.lora: unknown kind of module"),
])
def test_manifest_modules_are_checked_before_setattr(tmp_path, modules, field):
    folder = _model_folder(tmp_path / "model")
    _edit_manifest(folder, modules=modules)
    with pytest.raises(PrunetuneError) as e:
        load_model(folder)
    msg = _one_line(e)
    assert msg.startswith(f"{folder / 'manifest.json'}: ") and field in msg


def test_manifest_tokenizer_resolves_only_inside_the_model_folder(tmp_path):
    folder = tmp_path / "model"
    (folder / "tok").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    os.symlink(outside, folder / "link")
    assert resolve_tokenizer(folder, {"tokenizer": "."}) == str(folder)
    assert resolve_tokenizer(folder, {}) == str(folder)
    assert resolve_tokenizer(folder, {"tokenizer": "tok"}) == str(folder / "tok")
    for bad, why in [(str(outside), "outside the model folder"), ("../elsewhere", "outside the model folder"),
                     ("tok/../../elsewhere", "outside the model folder"), ("link", "outside the model folder"),
                     ("sentence-transformers/all-MiniLM-L6-v2", "not a folder inside the model folder"),
                     (["a"], "not a folder name")]:
        with pytest.raises(PrunetuneError) as e:
            resolve_tokenizer(folder, {"kind": "text", "tokenizer": bad})
        msg = _one_line(e)
        assert msg.startswith(f"{folder / 'manifest.json'}: preprocess.tokenizer: ") and why in msg, msg


def test_eval_of_a_text_manifest_naming_an_outside_tokenizer_is_refused(tmp_path):
    from prunetune.evaluation import evaluate_model

    folder = _model_folder(tmp_path / "model")
    _edit_manifest(folder, preprocess={"kind": "text", "max_length": 16, "tokenizer": "/etc"})
    with pytest.raises(PrunetuneError) as e:
        evaluate_model(folder)
    assert "preprocess.tokenizer: '/etc' is outside the model folder" in _one_line(e)
