"""End to end through the real command line, on a 2,000-image slice of the real Fashion-MNIST."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import save_file

import warm_cli
from conftest import cli_env
from test_data import make_idx_folder

QUICK = ["--set", "data.limit=2000", "--set", "data.test_limit=1000", "--set", "dense.epochs=2",
         "--set", "finetune.epochs=1", "--set", "evaluate.min_run_time=0.05", "--set", "evaluate.latency_batch=16"]


def cli(args, tmp_path, check=True):
    p = warm_cli.run(args, env=cli_env(tmp_path), timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(p.stderr[-2000:])
    return p


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    p = cli(["run", *QUICK, "--out", str(tmp / "out")], tmp)
    return tmp, tmp / "out", p


def test_run_writes_a_complete_folder_and_report(quick_run):
    tmp, out, proc = quick_run
    names = {p.name for p in out.iterdir()}
    assert {"recipe.resolved.yaml", "report.json", "report.md", "curves.png", "sparsity.png", "model"} <= names
    assert {"model.safetensors", "manifest.json"} <= {p.name for p in (out / "model").iterdir()}
    rep = json.loads((out / "report.json").read_text())
    assert rep["recipe"]["data"]["limit"] == 2000
    for stage in ("dense", "pruned", "finetuned"):
        s = rep["stages"][stage]
        for key in ("accuracy", "per_class_accuracy", "params", "nonzero_params", "sparsity", "prunable_sparsity",
                    "macs", "size_bytes", "gzip_bytes", "latency_ms", "threads"):
            assert key in s, (stage, key)
        assert set(s["latency_ms"]) == {"batch_1", "batch_N"} and s["latency_ms"]["batch_N"]["batch"] == 16
        assert s["latency_ms"]["batch_1"]["p50"] > 0 and s["latency_ms"]["batch_1"]["p90"] >= s["latency_ms"]["batch_1"]["p50"]
        assert len(s["per_class_accuracy"]) == 10
    d, f = rep["stages"]["dense"], rep["stages"]["finetuned"]
    # Default job: 50% of channels removed structurally -> about 4x fewer MACs and parameters.
    assert 3.0 < d["macs"] / f["macs"] < 5.0 and f["params"] < 0.4 * d["params"]
    assert 0.70 < f["prunable_sparsity"] < 0.80 and d["sparsity"] == 0.0
    assert d["accuracy"] > 70 and f["accuracy"] > 60  # 2 epochs on 1,800 images
    assert rep["finetune"]["epochs_run"] == 1 and rep["finetune"]["wall_s"] > 0
    plan = {p["layer"]: p for p in rep["plan"]}
    assert plan["features.0"]["shape_before"] == [32, 1, 3, 3] and plan["features.0"]["shape_after"] == [16, 1, 3, 3]
    assert plan["classifier"]["target"] is False and plan["classifier"]["shape_after"][0] == 10
    assert "fine-tuned" in proc.stdout and "MACs" in proc.stdout
    md = (out / "report.md").read_text()
    assert "measured speedup" in md and "features.0" in md
    # dense/: the run's dense model (the cache's files hard-linked: same inode) and its measured stage.
    cache = Path(rep["dense"]["cache"])
    assert (out / "dense" / "model" / "model.safetensors").stat().st_ino == (cache / "model.safetensors").stat().st_ino
    measured = json.loads((out / "dense" / "measured.json").read_text())
    assert measured["stage"] == rep["stages"]["dense"] and measured["obtained"]["cache"] == str(cache)


def test_eval_reproduces_reported_accuracy(quick_run):
    tmp, out, _ = quick_run
    rep = json.loads((out / "report.json").read_text())
    p = cli(["eval", str(out / "model")], tmp)
    res = json.loads(p.stdout)
    assert res["accuracy"] == rep["stages"]["finetuned"]["accuracy"] and res["examples"] == 1000


def test_dense_model_is_cached(quick_run):
    tmp, out, _ = quick_run
    p = cli(["run", *QUICK, "--set", "prune.method=unstructured", "--set", "prune.sparsity=0.8",
             "--set", "evaluate.latency=false", "--out", str(tmp / "out2")], tmp)
    assert "dense: loaded from cache" in p.stderr
    a = json.loads((out / "report.json").read_text())["stages"]["dense"]["accuracy"]
    b = json.loads((tmp / "out2" / "report.json").read_text())["stages"]["dense"]["accuracy"]
    assert a == b


def test_list_shows_every_registry(tmp_path):
    out = cli(["list"], tmp_path).stdout
    for name in ("fashion_mnist", "image_folder", "small_cnn", "lenet5", "lenet300", "taylor", "random",
                 "structured", "unstructured", "nm", "oneshot", "iterative", "gradual", "full", "sgd", "cosine"):
        assert f"  {name} " in out, name
    for prefix in ("minilm", "hf:<id|folder>", "torchvision:NAME", "timm:NAME", "pkg.module:fn"):  # not registered one by one
        assert f"\n  {prefix} " in out, prefix
    # A description is the docstring's whole first paragraph, not its first line.
    assert "roll back to the last good step and stop when it does not recover" in out
    assert "`prune.sparsity` is the ceiling." in out
    assert "on transformer models (minilm, hf:) importance taylor" in out and "defaults: importance lamp, scope global" in out


def _bad_cases(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("prune: [unclosed\n")
    fm = make_idx_folder(tmp_path / "fm")
    corrupt = make_idx_folder(tmp_path / "corrupt")
    (corrupt / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8bgarbage")
    from prunetune.models import build_model
    from prunetune.recipe import ModelSpec

    w5 = tmp_path / "five.safetensors"
    save_file(build_model(ModelSpec(), 5, (1, 28, 28)).state_dict(), str(w5))
    pickled = tmp_path / "model.pt"
    pickled.write_bytes(b"\x80\x04garbage-pickle")
    small = ["--set", f"data.path={fm}", "--set", "data.val_size=10"]
    return [
        (["run", "--set", "prune.sparsityy=0.5"], "prune.sparsityy: unknown key"),
        (["run", "--set", "prune.sparsity=half"], "prune.sparsity"),
        (["run", "--set", "prune.sparsity=1"], "prune.sparsity"),
        (["run", "--set", "prune.method=nm", "--set", "prune.n=4"], "n < m"),
        (["run", str(bad_yaml)], "malformed YAML"),
        (["run", str(tmp_path / "missing.yaml")], "recipe file not found"),
        (["run", "--set", f"data.path={tmp_path / 'nowhere'}"], "data.path: folder"),
        (["run", "--set", f"data.path={corrupt}"], "corrupt or truncated gzip"),
        (["run", *small, "--set", "dense.source=file", "--set", f"dense.path={w5}"], "has 5 output classes but the data has 10"),
        (["run", *small, "--set", "dense.source=file", "--set", f"dense.path={pickled}"], "pickled .pt/.pth files are refused"),
        (["run", *small, "--set", "dense.epochs=0", "--set", "prune.include=[conv*]"], "pattern 'conv*' matches no prunable layer; available: features.0"),
        (["eval", str(tmp_path / "no-model")], "model folder not found"),
    ]


def test_bad_input_exits_2_with_one_line_and_no_run_folder(tmp_path):
    for args, needle in _bad_cases(tmp_path):
        out = tmp_path / "runs" / "x"
        extra = ["--out", str(out)] if args[0] == "run" else []
        p = cli(args + extra, tmp_path, check=False)
        err = [line for line in p.stderr.strip().splitlines() if line.startswith("error:")]
        assert p.returncode == 2, (args, p.stderr[-1500:])
        assert len(err) == 1 and needle in err[0], (needle, p.stderr[-1500:])
        assert "Traceback" not in p.stderr
        assert not out.exists()
        assert not list(tmp_path.glob("runs/.x.tmp-*")), "a temporary run folder was left behind"


def test_dense_cache_key_ignores_new_default_options():
    from prunetune.dense import dense_key
    from prunetune.recipe import load_recipe

    base = load_recipe(None, ["dense.epochs=10"])
    assert dense_key(base) == dense_key(load_recipe(None, ["dense.epochs=10", "dense.augment.hflip=false", "dense.cache=false",
                                                          "finetune.epochs=7", "data.test_limit=100"]))
    for change in ("dense.epochs=9", "seed=1", "data.limit=100", "model.kwargs.hidden=512", "dense.augment.hflip=true"):
        assert dense_key(load_recipe(None, ["dense.epochs=10", change])) != dense_key(base), change


def test_check_shows_data_model_and_plan_of_the_default_recipe_without_training(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from prunetune.cli import app

    monkeypatch.setenv("PRUNETUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["check"])
    assert res.exit_code == 0, res.output[-2000:]
    out = res.stdout
    assert "recipe default: valid (task classification)" in out
    assert "55,000 train / 5,000 val / 10,000 test" in out  # Fashion-MNIST, 5,000 held out of train for validation
    assert "  T-shirt/top     5,500       500     1,000" in out and out.count("5,500       500     1,000") == 10
    assert "model: small_cnn, 1,477,802 parameters, 30,626,442 MACs per example" in out
    assert "weights: initial (untrained): no cached dense model yet" in out  # an empty cache: nothing was trained
    assert "prune: structured to 0.500 (l2, scope layer, schedule oneshot), 7 target layers" in out
    assert "features.0        [32, 1, 3, 3] -> [16, 1, 3, 3]" in out
    assert "classifier           [10, 1024] -> [10, 512]          sparsity 0.500  (pruned: inputs only (not a target))" in out
    assert "after pruning: 372,570 parameters (" in out and "7,792,970 MACs (÷3.93)" in out
    assert list(tmp_path.iterdir()) == []  # no run folder, no dense model trained or cached


def test_check_uses_the_dense_file_and_reports_masked_pruning(tmp_path):
    """dense.source file: the check ranks the user's weights and says so; unstructured LAMP (the default)
    at 90 % leaves a tenth of the target weights, shapes unchanged."""
    import torch

    from prunetune.check import check_recipe, check_text
    from prunetune.models import build_model
    from prunetune.recipe import ModelSpec, Recipe

    torch.manual_seed(0)
    w = tmp_path / "lenet.safetensors"
    save_file(build_model(ModelSpec(name="lenet300"), 10, (1, 28, 28)).state_dict(), str(w))
    fm = make_idx_folder(tmp_path / "fm")
    r = Recipe.model_validate({"model": {"name": "lenet300"}, "data": {"path": str(fm)},
                               "dense": {"source": "file", "path": str(w)},
                               "prune": {"method": "unstructured", "sparsity": 0.9}})
    doc = check_recipe(r, log=lambda m: None)
    assert doc["model"]["weights"] == f"trained, from dense.path {w}"
    assert (doc["prune"]["importance"], doc["prune"]["scope"]) == ("lamp", "global")
    split = doc["data"]["splits"]
    assert sum(split[k]["examples"] for k in split) == sum(sum(split[k]["per_class"].values()) for k in split)
    plan = {row["layer"]: row for row in doc["plan"]}
    assert all(row["shape_before"] == row["shape_after"] for row in plan.values())
    targets = [row for row in doc["plan"] if row["target"]]
    kept = sum(round((1 - row["sparsity"]) * torch.tensor(row["shape_before"]).prod().item()) for row in targets)
    assert kept == pytest.approx(0.1 * doc["prune"]["target_params"], abs=len(targets))
    assert doc["pruned"]["params"] == doc["model"]["params"] and doc["pruned"]["nonzero_params"] < 0.2 * doc["model"]["params"]
    assert "weights: trained, from dense.path" in check_text(doc)



def test_run_dense_folder_saves_a_model_that_was_not_cached(tmp_path):
    import torch

    from prunetune.artifacts import load_model
    from prunetune.dense import write_run_dense
    from prunetune.models import build_model
    from prunetune.recipe import ModelSpec, Recipe

    model = build_model(ModelSpec(name="lenet300"), 10, (1, 28, 28))
    meta = {"task": "classification", "model": {"name": "lenet300"}, "num_classes": 10, "class_names": [str(i) for i in range(10)],
            "input_shape": [1, 28, 28], "preprocess": {"kind": "image"}, "model_kwargs": {},
            "recipe": Recipe.model_validate({"model": {"name": "lenet300"}}).model_dump(mode="json")}
    write_run_dense(tmp_path / "dense", model, {"source": "file", "path": "w.safetensors", "history": []}, {"accuracy": 12.5}, meta)
    back, _ = load_model(tmp_path / "dense" / "model")
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
    assert json.loads((tmp_path / "dense" / "model" / "manifest.json").read_text())["dense"] == {"source": "file", "path": "w.safetensors"}
    assert json.loads((tmp_path / "dense" / "measured.json").read_text())["stage"] == {"accuracy": 12.5}
