"""`refine`: re-fine-tune a saved, pruned model on new data; architecture and masks kept, nothing overwritten."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import zlib
from pathlib import Path

import pytest
import torch

from prunetune.artifacts import load_model
from prunetune.cli import main
from prunetune.data.base import DataBundle
from prunetune.errors import PrunetuneError
from prunetune.measure import count_params
from prunetune.pipeline import run
from prunetune.pruning.masks import masked_layers, realise
from prunetune.recipe import load_recipe
from prunetune.refine import next_version, refine
from prunetune.registry import DATA_SOURCES

import warm_cli
from conftest import FMNIST, cli_env, make_bundle
from sequence_fixtures import write_ratings


def path_bundle(spec, seed: int) -> DataBundle:
    """In-process data whose content follows data.path: 'shift...' moves the inputs (a new batch of data
    that differs from the original), 'other' has a class the model does not know."""
    path = spec.path or "orig"
    return make_bundle(n=int(spec.limit or 150), seed=seed + zlib.crc32(path.encode()), signal=0.8,
                       shift=0.7 if path.startswith("shift") else 0.0,
                       class_names=["c0", "c1", "zebra"] if path == "other" else None)


if "by_path" not in DATA_SOURCES:
    DATA_SOURCES.register("by_path", "test data whose content follows data.path")(path_bundle)


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("refine") / "run"
    recipe = load_recipe(None, [
        "model.name=tiny_cnn", "data.source=by_path", "data.path=orig", "dense.epochs=3", "dense.lr=0.01",
        "finetune.epochs=2", "finetune.batch_size=16", "prune.method=unstructured", "prune.sparsity=0.5",
        "evaluate.min_run_time=0.05", "evaluate.latency_batch=16", "evaluate.memory=false",
    ])
    run(recipe, out, log=lambda m: None)
    return out


def test_refine_writes_a_new_version_and_keeps_masks(pruned_run):
    model_dir = pruned_run / "model"
    before = digest(model_dir)
    old_model, _ = load_model(model_dir, keep_masks=True)
    old_masks = {k: v.clone() for k, v in masked_layers(old_model).items()}
    assert old_masks, "the unstructured run should save masks"

    rep = refine(model_dir, ["finetune.epochs=2", "finetune.lr=0.003"], log=lambda m: None, data_path="shift-batch-2")

    out = pruned_run / "model-v2"
    assert rep["folder"] == str(out) and out.is_dir()
    assert {"model", "report.json", "report.md", "report.html", "curves.png", "recipe.resolved.yaml"} <= {p.name for p in out.iterdir()}
    assert digest(model_dir) == before  # the source model is only read
    # Masks identical, non-zeros unchanged, weights actually trained.
    new_model, manifest = load_model(out / "model", keep_masks=True)
    new_masks = masked_layers(new_model)
    assert set(new_masks) == set(old_masks) and all(torch.equal(old_masks[k], new_masks[k]) for k in old_masks)
    assert count_params(realise(new_model))[1] == count_params(realise(old_model))[1] == rep["nonzero_params"]
    assert not torch.equal(realise(new_model).state_dict()["head.0.weight"], realise(old_model).state_dict()["head.0.weight"])
    assert manifest.refined_from == str(model_dir) and manifest.recipe["data"]["path"] == "shift-batch-2"

    saved = json.loads((out / "report.json").read_text())
    assert saved["source_model"] == str(model_dir) and saved["sparsity_kept"] is True
    assert saved["recipe"]["finetune"]["lr"] == 0.003 and saved["recipe"]["data"]["path"] == "shift-batch-2"
    assert saved["finetune"]["epochs_run"] == 2 and len(saved["finetune"]["history"]) == 2
    for stage in ("before", "after"):
        for data in ("new_data", "original_test"):
            s = saved["stages"][stage][data]
            assert 0 <= s["accuracy"] <= 100 and s["examples"] == 30 and abs(s["prunable_sparsity"] - 0.5) < 0.01
        assert saved["stages"][stage]["new_data"]["nonzero_params"] == rep["nonzero_params"]
    assert "latency_ms" in saved["stages"]["before"]["new_data"]
    # The original test set is the run's own (data.path=orig), so "before" matches the run's fine-tuned stage.
    run_rep = json.loads((pruned_run / "report.json").read_text())
    assert saved["stages"]["before"]["original_test"]["accuracy"] == run_rep["stages"]["finetuned"]["accuracy"]
    assert "original test" in (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    assert "prunetune refine" in page and f"{saved['stages']['after']['original_test']['accuracy']:.2f}" in page

    # A second refine (of the run folder, or of the new version) goes beside them as v3, v4.
    rep3 = refine(pruned_run, ["finetune.epochs=1"], log=lambda m: None, data_path="shift-batch-3")
    assert rep3["folder"] == str(pruned_run / "model-v3")
    assert next_version(out / "model") == pruned_run / "model-v4"
    assert digest(model_dir) == before


@pytest.mark.parametrize("overrides,data_path,needle", [
    ([], "other", r"labels unknown to the model: 'zebra'; the model predicts 'c0', 'c1', 'c2'"),
    (["prune.sparsity=0.3"], "shift", r"--set prune.sparsity=0.3: refine only takes data\.\* and finetune\.\* overrides"),
    (["finetune.lr=-1"], "shift", r"refine: finetune.lr: Input should be greater than 0"),
    (["finetune.peft.r=4"], "shift", r"refine: finetune.peft.r: not an option of finetune.method full; remove it \(an option of lora\)"),
    ([], None, r"--data PATH"),
])
def test_refine_refuses_bad_input_and_writes_nothing(pruned_run, overrides, data_path, needle):
    model_dir = pruned_run / "model"
    before_dir, before_model = sorted(p.name for p in pruned_run.iterdir()), digest(model_dir)
    with pytest.raises(PrunetuneError, match=needle) as e:
        refine(model_dir, overrides, out=pruned_run / "refused", log=lambda m: None, data_path=data_path)
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in pruned_run.iterdir()) == before_dir and digest(model_dir) == before_model


@pytest.mark.parametrize("method,notes", [("lora", ["finetune.method 'lora' replaced by 'full'"]), ("full", [])])
def test_refine_of_a_model_saved_with_every_methods_options(pruned_run, tmp_path, method, notes):
    """A manifest written before each method had its own options holds every method's options, some
    away from their defaults (the old schema took them whatever the method); refine fine-tunes with
    full and drops them."""
    model_dir = tmp_path / "old" / "model"
    shutil.copytree(pruned_run / "model", model_dir)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["recipe"]["finetune"].update(method=method, peft={
        "include": ["head.*"], "exclude": [], "r": 4, "alpha": 8.0, "dropout": 0.1, "virtual_tokens": 20, "adapter_size": 64})
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    rep = refine(model_dir, ["finetune.epochs=1"], log=lambda m: None, data_path="shift")
    assert rep["notes"] == notes
    assert rep["recipe"]["finetune"]["method"] == "full" and rep["recipe"]["finetune"]["peft"] == {}
    # The saved recipe has the default finetune.distill: auto; refine has no teacher and drops it silently.
    assert manifest["recipe"]["finetune"]["distill"] == "auto" and rep["recipe"]["finetune"]["distill"] is None


def test_refine_says_it_drops_a_saved_teacher(pruned_run, tmp_path):
    model_dir = tmp_path / "kd" / "model"
    shutil.copytree(pruned_run / "model", model_dir)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["recipe"]["finetune"]["distill"] = {"teacher": "dense", "alpha": 0.5, "temperature": 2.0, "cache_logits": True}
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    rep = refine(model_dir, ["finetune.epochs=1"], log=lambda m: None, data_path="shift")
    assert rep["notes"] == ["finetune.distill of the saved recipe dropped: refine has no dense teacher"]
    assert rep["recipe"]["finetune"]["distill"] is None


def test_refine_refuses_an_existing_out(pruned_run):
    with pytest.raises(PrunetuneError, match="already exists"):
        refine(pruned_run / "model", [], out=pruned_run, log=lambda m: None, data_path="shift")


@pytest.mark.slow
@pytest.mark.skipif(not FMNIST.exists(), reason="Fashion-MNIST not installed (make data)")
def test_cli_refine_on_fashion_mnist(tmp_path):
    env = cli_env(tmp_path)

    def cli(*args):
        return warm_cli.run(list(args), env=env, timeout=300)

    p = cli("run", "--set", "data.limit=600", "--set", "data.test_limit=300", "--set", "dense.epochs=1",
            "--set", "finetune.epochs=1", "--set", "evaluate.latency=false", "--set", "evaluate.memory=false",
            "--set", "prune.method=unstructured", "--out", str(tmp_path / "run"))
    assert p.returncode == 0, p.stderr[-2000:]
    p = cli("refine", str(tmp_path / "run" / "model"), "--data", str(FMNIST),
            "--set", "data.limit=300", "--set", "finetune.epochs=1")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "new data" in p.stdout and "original test" in p.stdout and "model-v2" in p.stdout
    rep = json.loads((tmp_path / "run" / "model-v2" / "report.json").read_text())
    assert rep["sparsity_kept"] and rep["recipe"]["data"]["limit"] == 300 and rep["recipe"]["data"]["path"] == str(FMNIST)
    assert rep["stages"]["after"]["original_test"]["examples"] == 300
    # Bad input: one line on stderr, exit code 2, nothing written.
    p = cli("refine", str(tmp_path / "run" / "model"), "--data", str(FMNIST), "--set", "dense.epochs=5")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and p.stderr.startswith("error: --set dense.epochs=5: refine only")
    assert not (tmp_path / "run" / "model-v3").exists()


def test_refine_of_a_regression_model_reports_in_its_metric(tmp_path, monkeypatch, capsys):
    """Refine scores, summarises and renders what the task is scored by (here RMSE, lower is better)."""
    data = write_ratings(tmp_path / "ratings", users=12, items=10, n=110)
    new = write_ratings(tmp_path / "new", users=12, items=10, n=110, seed=1)
    run(load_recipe(None, ["task=regression", "model.name=recommender", "model.kwargs.dim=8", "data.source=ratings",
                           f"data.path={data}", "dense.epochs=2", "finetune.epochs=1", "prune.method=unstructured",
                           "evaluate.latency=false", "evaluate.memory=false"]), tmp_path / "run", log=lambda m: None)
    monkeypatch.setattr(sys, "argv", ["prunetune", "refine", str(tmp_path / "run" / "model"), "--data", str(new),
                                      "--set", "finetune.epochs=1"])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr()
    assert e.value.code in (0, None), out.err[-2000:]
    rep = json.loads((tmp_path / "run" / "model-v2" / "report.json").read_text())
    assert rep["metric"] == "rmse" and rep["higher_is_better"] is False
    st = rep["stages"]
    assert all("rmse" in st[s][d] and "accuracy" not in st[s][d] for s in ("before", "after") for d in ("new_data", "original_test"))
    b, a = st["before"]["new_data"]["rmse"], st["after"]["new_data"]["rmse"]
    assert f"rmse new data {b:.4f} -> {a:.4f}; original test" in out.out
    md = (tmp_path / "run" / "model-v2" / "report.md").read_text()
    assert "| test rmse | Δ rmse |" in md and f"| after | new data | {st['after']['new_data']['examples']:,} | {a:.4f} | {a - b:+.4f} |" in md
    html = (tmp_path / "run" / "model-v2" / "report.html").read_text()
    assert "test rmse" in html and "Δ rmse" in html and "test acc" not in html and 'id="per-class"' not in html
