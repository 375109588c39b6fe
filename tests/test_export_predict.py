"""ONNX export (checked against PyTorch in onnxruntime) and image prediction, through the API and the CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from prunetune.artifacts import load_model, save_model
from prunetune.data.base import TensorData
from prunetune.data.fashion_mnist import CLASSES, MEAN, STD
from prunetune.errors import PrunetuneError, RuntimeFault
from prunetune.export import export_onnx
from prunetune.models import build_model, classifier_name
from prunetune.predict import predict, predict_tensors
from prunetune.pruning.controller import PruningController
from prunetune.pruning.masks import masked_layers
from prunetune.pruning.targets import select_targets
from prunetune.recipe import ModelSpec, Recipe
from prunetune.tasks.classification import Classification

import warm_cli
from conftest import cli_env, make_bundle

SHAPE = (1, 28, 28)
FM_PRE = {"kind": "image", "mean": [MEAN], "std": [STD], "size": [28, 28], "channels": 1}  # as IDX-trained models save it
FAST = {"threads": 1, "min_run_time": 0.05}


def _save(folder, model, name, preprocess=None):
    info = {"task": "classification", "model": {"name": name}, "num_classes": 10, "class_names": list(CLASSES),
            "input_shape": list(SHAPE), "preprocess": preprocess or FM_PRE}
    return save_model(model, folder, info)


def _built(name):
    torch.manual_seed(0)
    return build_model(ModelSpec(name=name), 10, SHAPE).eval()


def _pruned(dense, method, sparsity):
    bundle = make_bundle(n=30, classes=10, shape=SHAPE)
    recipe = Recipe.model_validate({"model": {"name": "small_cnn"}, "prune": {"method": method, "sparsity": sparsity}})
    targets = select_targets(dense, ["*"], [], [classifier_name(dense)])
    ctl = PruningController(recipe.prune, Classification(), bundle, torch.device("cpu"), targets, 1, 0)
    model, _ = ctl.one_shot_copy(dense)
    return model.eval()


def _no_temp_files(folder):
    return not [p.name for p in folder.iterdir() if ".tmp-" in p.name]


def _ort(path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------- export


@pytest.mark.parametrize("name", ["lenet300", "lenet5", "small_cnn"])
def test_export_round_trip_for_each_builtin_family(tmp_path, name):
    model = _built(name)
    folder = _save(tmp_path / "run" / "model", model, name)
    before = sorted(p.name for p in folder.iterdir())
    rep = export_onnx(folder, **FAST)

    onnx_file = tmp_path / "run" / "model.onnx"  # default: beside the model folder, which stays as saved
    assert rep["file"] == str(onnx_file) and onnx_file.stat().st_size == rep["bytes"]
    assert sorted(p.name for p in folder.iterdir()) == before
    assert json.loads((tmp_path / "run" / "model.export.json").read_text()) == rep
    assert rep["inputs_checked"] == 100 and sum(rep["batch_sizes_checked"]) == 100
    assert len(set(rep["batch_sizes_checked"])) >= 2 and rep["max_abs_diff"] <= 1e-4
    assert isinstance(rep["opset"], int) and rep["opset"] >= 13
    assert set(rep["ort_latency_ms"]) == {"batch_1", "batch_64"} and all(v > 0 for v in rep["ort_latency_ms"].values())
    assert rep["ort_threads"]["intra_op"] == 1
    assert _no_temp_files(tmp_path / "run")

    # Independently: names, a symbolic batch axis, and agreement at batch sizes the check did not use.
    sess = _ort(onnx_file)
    assert [i.name for i in sess.get_inputs()] == ["input"] and [o.name for o in sess.get_outputs()] == ["logits"]
    assert isinstance(sess.get_inputs()[0].shape[0], str) and sess.get_inputs()[0].shape[1:] == list(SHAPE)
    for b in (3, 130):
        x = torch.randn(b, *SHAPE, generator=torch.Generator().manual_seed(b))
        got = sess.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            assert np.abs(got - model(x).numpy()).max() <= 1e-4


def test_export_refuses_to_overwrite_and_cleans_up_on_failure(tmp_path, monkeypatch):
    folder = _save(tmp_path / "model", _built("lenet300"), "lenet300")
    out = tmp_path / "exp" / "m.onnx"
    out.parent.mkdir()
    export_onnx(folder, out, check_inputs=5, **FAST)
    assert (tmp_path / "exp" / "m.export.json").exists()
    with pytest.raises(PrunetuneError, match="already exists"):
        export_onnx(folder, out, **FAST)
    with pytest.raises(PrunetuneError, match="inside the model folder"):
        export_onnx(folder, folder / "x.onnx", **FAST)

    # A disagreement between onnxruntime and PyTorch deletes the file and is a runtime fault.
    import prunetune.export as E

    monkeypatch.setattr(E, "TOLERANCE", -1.0)
    bad = tmp_path / "exp" / "bad.onnx"
    with pytest.raises(RuntimeFault, match="differ by .* the exported file was deleted"):
        export_onnx(folder, bad, check_inputs=5, **FAST)
    assert not bad.exists() and not (tmp_path / "exp" / "bad.export.json").exists()
    assert _no_temp_files(tmp_path / "exp")


def test_structured_pruning_gives_a_smaller_and_faster_onnx_file(tmp_path):
    dense = _built("small_cnn")
    pruned = _pruned(dense, "structured", 0.5)
    assert sum(p.numel() for p in pruned.parameters()) < 0.4 * sum(p.numel() for p in dense.parameters())
    d = export_onnx(_save(tmp_path / "dense" / "model", dense, "small_cnn"), threads=1, min_run_time=0.3)
    p = export_onnx(_save(tmp_path / "pruned" / "model", pruned, "small_cnn"), threads=1, min_run_time=0.3)
    assert p["max_abs_diff"] <= 1e-4
    assert p["bytes"] < 0.5 * d["bytes"]
    assert p["ort_latency_ms"]["batch_64"] < d["ort_latency_ms"]["batch_64"]


def test_unstructured_masked_model_exports_with_its_zeros(tmp_path):
    import onnx
    from onnx import numpy_helper

    pruned = _pruned(_built("small_cnn"), "unstructured", 0.8)
    masks = masked_layers(pruned)
    assert masks
    masked_out = sum(int((~m).sum()) for m in masks.values())
    folder = _save(tmp_path / "run" / "model", pruned, "small_cnn")
    assert (folder / "masks.safetensors").exists()
    rep = export_onnx(folder, **FAST)
    assert rep["max_abs_diff"] <= 1e-4

    weights = [numpy_helper.to_array(t) for t in onnx.load(rep["file"]).graph.initializer]
    zeros = sum(int((w == 0).sum()) for w in weights if w.dtype == np.float32)
    assert zeros >= masked_out > 0


# ---------------------------------------------------------------- predict


def _images(root):
    """PNG/JPEG files of several sizes and modes, in a nested folder, plus one non-image file."""
    rng = np.random.default_rng(0)
    (root / "imgs" / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8), "RGB").save(root / "imgs" / "b.png")
    Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8), "L").save(root / "imgs" / "sub" / "a.png")
    Image.fromarray(rng.integers(0, 255, (50, 50, 4), dtype=np.uint8), "RGBA").save(root / "imgs" / "sub" / "c.png")
    (root / "imgs" / "notes.txt").write_text("not an image")
    Image.fromarray(rng.integers(0, 255, (64, 20, 3), dtype=np.uint8), "RGB").save(root / "d.jpg")
    order = [root / "imgs" / "b.png", root / "imgs" / "sub" / "a.png", root / "imgs" / "sub" / "c.png", root / "d.jpg"]
    return [root / "imgs", root / "d.jpg"], order


def _reference_tensor(files):
    """Fashion-MNIST preprocessing written out by hand: grey, 28x28, [0, 1], (x - mean) / std."""
    arrs = []
    for f in files:
        with Image.open(f) as im:
            a = np.asarray(im.convert("L").resize((28, 28)), dtype=np.float32) / 255.0
        arrs.append((a[None] - MEAN) / STD)
    return torch.from_numpy(np.stack(arrs)).float()


def test_predict_images_matches_the_model_and_eval_predictions(tmp_path):
    model = _built("lenet5")
    folder = _save(tmp_path / "model", model, "lenet5")
    inputs, order = _images(tmp_path)
    rows = list(predict(folder, inputs, batch_size=3))
    assert [r["input"] for r in rows] == [str(f) for f in order]  # folders: recursive, sorted; notes.txt skipped

    x = _reference_tensor(order)
    with torch.no_grad():
        probs = torch.softmax(model(x), 1)
    for r, p in zip(rows, probs):
        assert list(r) == ["input", "label", "probabilities"] and list(r["probabilities"]) == CLASSES
        assert r["label"] == CLASSES[int(p.argmax())]
        assert np.allclose([r["probabilities"][c] for c in CLASSES], p.numpy(), atol=2e-6)

    # What `prunetune eval` computes (Classification().predict) on the same inputs gives the same answers.
    loaded, manifest = load_model(folder)
    logits, _ = Classification().predict(loaded, TensorData(x, torch.zeros(len(x), dtype=torch.long)), 2, torch.device("cpu"))
    assert [r["label"] for r in rows] == [CLASSES[i] for i in logits.argmax(1).tolist()]
    assert [r["label"] for r in predict_tensors(loaded, manifest, x)] == [r["label"] for r in rows]
    # Another batch size batches the convolutions differently: the same answers, probabilities equal to
    # their 6 printed decimals give or take one unit in the last (a sum's last bit can round either way).
    again = list(predict(folder, inputs, batch_size=64))
    assert [(r["input"], r["label"]) for r in again] == [(r["input"], r["label"]) for r in rows]
    for r, s in zip(again, rows):
        assert np.allclose(list(r["probabilities"].values()), list(s["probabilities"].values()), atol=1.01e-6, rtol=0)


def test_text_inputs_are_checked_before_the_model_is_loaded(tmp_path):
    from prunetune.predict import read_text_lines

    good = tmp_path / "ok.txt"
    good.write_text("a fine film\nawful\n", encoding="utf-8")
    assert read_text_lines([good]) == [(f"{good}:1", "a fine film"), (f"{good}:2", "awful")]
    blank = tmp_path / "blank.txt"
    blank.write_text("fine\n\nawful\n", encoding="utf-8")
    with pytest.raises(PrunetuneError, match=r"blank.txt:2: empty line"):
        read_text_lines([blank])
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"fine\ncaf\xe9\n")
    with pytest.raises(PrunetuneError, match=r"latin.txt:2: not UTF-8"):
        read_text_lines([latin])
    with pytest.raises(PrunetuneError, match="input not found"):
        read_text_lines([tmp_path / "missing.txt"])
    # A text model's folder: the input check fires before the (here unbuildable) model is touched.
    folder = _save(tmp_path / "model", _built("lenet300"), "lenet300", {"kind": "text", "tokenizer": "."})
    with pytest.raises(PrunetuneError, match="empty line"):
        predict(folder, [blank])


# ---------------------------------------------------------------- CLI


def cli(args, tmp_path):
    return warm_cli.run(args, env=cli_env(tmp_path), timeout=300)


def test_cli_export_and_predict(tmp_path):
    folder = _save(tmp_path / "run" / "model", _built("lenet300"), "lenet300")
    p = cli(["export", str(folder), "--format", "onnx", "--threads", "1", "--min-run-time", "0.1"], tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    rep = json.loads(p.stdout)
    assert rep["file"] == str(tmp_path / "run" / "model.onnx") and rep["max_abs_diff"] <= 1e-4
    assert json.loads((tmp_path / "run" / "model.export.json").read_text()) == rep

    inputs, order = _images(tmp_path)
    out = tmp_path / "preds.jsonl"
    p = cli(["predict", str(folder), *map(str, inputs), "--out", str(out), "--batch-size", "2"], tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["input"] for r in rows] == [str(f) for f in order]
    assert rows == list(predict(folder, inputs))
    assert _no_temp_files(tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    for f in (out, tmp_path / "run" / "model.onnx", tmp_path / "run" / "model.export.json"):
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f  # not mkstemp's private 0600

    p = cli(["predict", str(folder), str(order[0])], tmp_path)  # to stdout
    assert p.returncode == 0 and [json.loads(line) for line in p.stdout.splitlines()] == rows[:1], p.stderr[-2000:]


def _bad_cases(tmp_path):
    good = _save(tmp_path / "good", _built("lenet300"), "lenet300")
    img = tmp_path / "ok.png"
    Image.new("L", (28, 28)).save(img)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    not_model = tmp_path / "not-a-model"
    not_model.mkdir()

    def variant(name, edit):
        folder = _save(tmp_path / name, _built("lenet300"), "lenet300")
        man = json.loads((folder / "manifest.json").read_text())
        edit(man)
        (folder / "manifest.json").write_text(json.dumps(man))
        return folder

    no_classes = variant("no-classes", lambda m: m.pop("class_names"))
    audio = variant("audio", lambda m: m["preprocess"].update(kind="audio"))
    text = variant("text", lambda m: m.update(preprocess={"kind": "text"}))
    return [
        (["export", str(good), "--format", "tflite"], "--format tflite: unknown export format; choose one of: onnx", ".onnx"),
        (["export", str(not_model)], "manifest.json: missing", ".onnx"),
        (["predict", str(not_model), str(img)], "manifest.json: missing", ".jsonl"),
        (["predict", str(no_classes), str(img)], "class_names: Field required", ".jsonl"),
        (["predict", str(good), str(img), str(broken)], f"{broken}: unreadable image", ".jsonl"),
        (["predict", str(good), str(tmp_path / "nowhere.png")], "nowhere.png: input not found", ".jsonl"),
        (["predict", str(audio), str(img)], "preprocess kind 'audio' is unknown", ".jsonl"),
        (["predict", str(text), str(img)], "not UTF-8 text", ".jsonl"),
    ]


def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path):
    outs = tmp_path / "outs"
    outs.mkdir()
    for i, (args, needle, suffix) in enumerate(_bad_cases(tmp_path)):
        out = outs / f"out{i}{suffix}"
        p = cli(args + ["--out", str(out)], tmp_path)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2, (args, p.stderr[-1500:])
        assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], (needle, p.stderr[-1500:])
        assert "Traceback" not in p.stderr and p.stdout == ""
        assert not out.exists() and not list(outs.iterdir()), args


@pytest.mark.serial
def test_export_times_the_dense_model_alternately_with_an_interval(tmp_path):
    """A run's export is compared with its cached dense model, both sessions timed alternately: every
    batch size gets a ratio with a 95 % interval, a verdict and the noise flag; the old keys stay."""
    dense = _built("small_cnn")
    pruned = _pruned(dense, "structured", 0.5)
    dense_dir = _save(tmp_path / "cache" / "dense", dense, "small_cnn")
    model_dir = _save(tmp_path / "run" / "model", pruned, "small_cnn")
    (tmp_path / "run" / "report.json").write_text(json.dumps({"dense": {"cache": str(dense_dir)}}))
    rep = export_onnx(model_dir, threads=1, min_run_time=0.3, rounds=3)
    assert set(rep["ort_speedup"]) == set(rep["ort_speedup_measured"]) == {"batch_1", "batch_64"}
    for k, rec in rep["ort_speedup_measured"].items():
        assert rec["low"] <= rec["ratio"] <= rec["high"] and rep["ort_speedup"][k] == rec["ratio"]
        assert rec["verdict"] in ("faster", "slower", "no measurable change") and isinstance(rec["noisy"], bool)
        assert len(rec["dense_ms"]["round_medians"]) == 3 and rep["dense"]["ort_latency_ms"][k] == rec["dense_ms"]["p50"]
    big = rep["ort_speedup_measured"]["batch_64"]
    assert big["verdict"] == "faster" and big["low"] > 1.0  # half the channels: clearly faster at batch 64
    saved = json.loads((tmp_path / "run" / "model.export.json").read_text())
    assert saved["ort_speedup_measured"]["batch_64"]["ratio"] == big["ratio"]
    with pytest.raises(PrunetuneError, match="rounds: 1"):
        export_onnx(model_dir, tmp_path / "x.onnx", rounds=1)
