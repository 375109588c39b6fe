"""Sparse artifacts (bitmask + values) and what `load_model` returns (realised unless keep_masks)."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import parametrize

from prunetune.artifacts import load_model, save_model
from prunetune.errors import PrunetuneError
from prunetune.measure import serialized_sizes
from prunetune.models import build_model
from prunetune.pipeline import run
from prunetune.pruning.masks import attach_mask, masked_tensors, realise
from prunetune.recipe import ModelSpec, load_recipe
from prunetune.reporting.format import fmt_bytes
from prunetune.reporting.markdown import markdown
from prunetune.reporting.model import load_report
from prunetune.reporting.write import render
from prunetune.sparse_store import pack, unpack

SHAPE = (1, 28, 28)


def _info(name):
    return {"task": "classification", "model": {"name": name}, "num_classes": 10,
            "class_names": [str(i) for i in range(10)], "input_shape": list(SHAPE), "preprocess": {}}


def _masked(name: str, amount: float, seed: int = 0, scope: str = "layer") -> nn.Module:
    """`name` with random weights, `amount` of its conv / linear weights masked by magnitude, per layer
    (global magnitude on random weights empties the widest layers: small_cnn's head at 98 %)."""
    torch.manual_seed(seed)
    model = build_model(ModelSpec(name=name), 10, SHAPE)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for m in layers:
        pool = torch.cat([k.weight.detach().abs().flatten() for k in layers]) if scope == "global" else m.weight.detach().abs().flatten()
        attach_mask(m).mask.copy_(m.weight.detach().abs() > pool.kthvalue(int(amount * pool.numel())).values)
    return model.eval()


@pytest.fixture(scope="module")
def saved98(tmp_path_factory):
    model = _masked("small_cnn", 0.98)
    folder = save_model(model, tmp_path_factory.mktemp("s") / "m", _info("small_cnn"))
    return folder, model


def _canonical(t: torch.Tensor) -> torch.Tensor:
    """A zero stored sparse comes back as +0.0 (a realised mask leaves -0.0 where a weight was negative)."""
    return torch.where(t == 0, torch.zeros_like(t), t) if t.is_floating_point() else t


def test_round_trip_is_exact_and_default_load_is_realised(saved98):
    folder, model = saved98
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["sparse"]["format"] == "bitmask-v1"
    assert {"features.17.weight", "head.0.weight"} <= set(manifest["sparse"]["tensors"])  # mostly-zero tensors
    assert "features.1.weight" not in manifest["sparse"]["tensors"]  # BatchNorm: no zeros, stored dense
    raw = load_file(str(folder / "model.safetensors"))
    assert "head.0.weight" not in raw and raw["head.0.weight.__bitmask__"].dtype == torch.uint8

    plain, _ = load_model(folder)
    masked, _ = load_model(folder, keep_masks=True)
    assert not any(parametrize.is_parametrized(m) for m in plain.modules())
    assert set(masked_tensors(masked)) == set(masked_tensors(model)) and masked_tensors(masked)
    want = realise(model).state_dict()
    got = plain.state_dict()
    assert want.keys() == got.keys()
    for k, v in want.items():  # bit-identical (a sparse-stored zero as +0.0)
        w, g = (_canonical(v) if k in manifest["sparse"]["tensors"] else v), got[k]
        assert w.dtype == g.dtype and w.shape == g.shape, k
        assert torch.equal(w.view(torch.uint8) if w.is_floating_point() else w,
                           g.view(torch.uint8) if g.is_floating_point() else g), k
    assert int(torch.count_nonzero(got["head.0.weight"])) == int(masked_tensors(model)["head.0.weight"].sum())
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        assert torch.equal(plain(x), masked(x)) and torch.equal(plain(x), model(x))


def test_sizes_95_and_98_percent(saved98):
    """Measured on small_cnn (random init, per-layer magnitude masks, seed 0; dense file 5,918,200 bytes):
    95 % -> 492,832 bytes raw (0.083); 98 % -> 315,712 raw (0.053), 138,553 gzip (0.023 of dense raw,
    0.25 of the dense layout's gzip 562,484). Global masks: 543,728 / 315,716 raw, 121,001 gzip at 98 %."""
    dense = serialized_sizes(build_model(ModelSpec(name="small_cnn"), 10, SHAPE))
    assert "sparse_bytes" not in dense  # nothing mostly zero: the dense layout only
    s95 = serialized_sizes(realise(_masked("small_cnn", 0.95)))
    assert s95["size_bytes"] == dense["size_bytes"]
    assert s95["sparse_bytes"] <= 0.10 * s95["size_bytes"]
    folder, model = saved98
    s98 = serialized_sizes(realise(model))
    data = (folder / "model.safetensors").read_bytes()
    assert len(data) == s98["sparse_bytes"]  # the figure reported is the file written
    assert len(gzip.compress(data, compresslevel=6)) == s98["sparse_gzip_bytes"]
    assert s98["sparse_bytes"] <= 0.06 * s98["size_bytes"]
    assert s98["sparse_gzip_bytes"] <= 0.03 * s98["size_bytes"]  # >= 33x smaller than the dense file
    assert s98["sparse_gzip_bytes"] <= 0.3 * s98["gzip_bytes"]  # and far below gzip of the zeros


def test_damaged_sparse_file_is_refused_in_one_line(saved98, tmp_path):
    folder, _ = saved98
    raw = load_file(str(folder / "model.safetensors"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text((folder / "manifest.json").read_text())
    raw["head.0.weight.__values__"] = raw["head.0.weight.__values__"][:-1]  # one value lost
    save_file(raw, str(bad / "model.safetensors"))
    with pytest.raises(PrunetuneError) as e:
        load_model(bad)
    msg = str(e.value)
    assert "\n" not in msg and str(bad / "model.safetensors") in msg and "head.0.weight" in msg
    assert "re-save the model" in msg


@pytest.mark.parametrize("damage", ["padding", "missing", "format"])
def test_other_damage_is_refused(damage):
    w = torch.zeros(3, 7)
    w[0, 1] = 2.0
    stored, layout = pack({"w": w})
    if damage == "padding":  # 21 entries in 3 bytes: a set padding bit adds a value that is not there
        stored["w.__bitmask__"] = stored["w.__bitmask__"].clone()
        stored["w.__bitmask__"][-1] |= 1
    elif damage == "missing":
        del stored["w.__bitmask__"]
    else:
        layout = {**layout, "format": "bitmask-v9"}
    with pytest.raises(PrunetuneError, match="^f.safetensors: .*re-save"):
        unpack(stored, layout, "f.safetensors")


def test_pack_layout_and_threshold():
    w = torch.tensor([0.0, -1.5, 0.0, 0.0, 2.5, 0.0, -0.0, 0.0] * 2 + [0.0])  # 17 entries, 4 non-zero
    half = torch.arange(1.0, 33.0).masked_fill(torch.arange(32) % 2 == 0, 0.0)  # exactly half zeros: sparse
    few = torch.arange(1.0, 33.0).masked_fill(torch.arange(32) % 3 == 0, 0.0)  # a third zeros: dense
    ids = torch.zeros(40, dtype=torch.long)  # integers are never stored sparse
    stored, layout = pack({"w": w, "half": half, "few": few, "ids": ids})
    assert set(layout["tensors"]) == {"w", "half"}
    assert layout["tensors"]["w"] == {"shape": [17], "dtype": "float32"}
    assert stored["w.__bitmask__"].tolist() == np.packbits((w != 0).numpy()).tolist() == [0b01001000] * 2 + [0]
    assert stored["w.__values__"].tolist() == [-1.5, 2.5, -1.5, 2.5]
    back = unpack(stored, layout, "f")
    assert all(torch.equal(back[k], v) for k, v in {"w": w, "half": half, "few": few, "ids": ids}.items())
    assert unpack(stored, {}, "f") is stored  # an old folder: nothing to unpack


def test_old_layout_folder_still_loads(tmp_path):
    """A folder as prunetune wrote it before sparse storage: every tensor dense, no `sparse` field."""
    model = _masked("small_cnn", 0.95)
    folder = save_model(model, tmp_path / "new", _info("small_cnn"))
    old = tmp_path / "old"
    old.mkdir()
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.pop("sparse")
    (old / "manifest.json").write_text(json.dumps(manifest))
    state = {k: v.contiguous() for k, v in realise(model).state_dict().items()}
    save_file(state, str(old / "model.safetensors"))
    (old / "masks.safetensors").write_bytes((folder / "masks.safetensors").read_bytes())
    plain, _ = load_model(old)
    masked, _ = load_model(old, keep_masks=True)
    assert not any(parametrize.is_parametrized(m) for m in plain.modules())
    assert set(masked_tensors(masked)) == set(masked_tensors(model))
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        assert torch.equal(plain(x), model(x)) and torch.equal(masked(x), model(x))
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in load_model(folder)[0].state_dict().items())


RUN = ["model.name=tiny_cnn", "data.source=synthetic", "data.limit=150", "dense.epochs=1", "finetune.epochs=1",
       "finetune.batch_size=16", "prune.method=unstructured", "prune.sparsity=0.9", "evaluate.latency=false",
       "evaluate.memory=false"]


def test_report_gives_the_sparse_file_size_and_old_reports_still_render(tmp_path):
    rep = run(load_recipe(None, RUN), tmp_path / "run", log=lambda m: None, checkpoint=False)
    stages = rep["stages"]
    assert "sparse_bytes" not in stages["dense"]  # a dense model is saved dense
    fin = stages["finetuned"]
    data = (tmp_path / "run" / "model" / "model.safetensors").read_bytes()
    assert fin["sparse_bytes"] == len(data) < 0.3 * fin["size_bytes"]  # the figure is the file model/ holds
    assert fin["sparse_gzip_bytes"] == len(gzip.compress(data, compresslevel=6)) < fin["gzip_bytes"]
    md = (tmp_path / "run" / "report.md").read_text()
    html = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    cell = f"(sparse {fmt_bytes(fin['sparse_bytes'])})"
    assert cell in md and cell in html
    old = json.loads((tmp_path / "run" / "report.json").read_text())
    for s in old["stages"].values():
        s.pop("sparse_bytes", None), s.pop("sparse_gzip_bytes", None)
    old_md = markdown(load_report(old))
    assert "(sparse" not in old_md and fmt_bytes(fin["size_bytes"]) in old_md
    assert "(sparse" not in render(old, tmp_path / "run", images={})
