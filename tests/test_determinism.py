"""Same recipe and seed -> same masks, weights and metrics on CPU; a diverging loss stops with exit 3."""

from __future__ import annotations


import pytest

from prunetune.errors import RuntimeFault
from prunetune.pipeline import run
from prunetune.recipe import load_recipe

import warm_cli
from conftest import cli_env

TINY = ["model.name=tiny_cnn", "data.source=synthetic", "dense.epochs=2", "dense.lr=0.01", "finetune.epochs=2",
        "finetune.batch_size=16", "evaluate.latency=false", "evaluate.memory=false", "dense.cache=false"]


@pytest.mark.parametrize("extra", [["prune.method=unstructured", "prune.importance=random", "prune.schedule.kind=gradual"],
                                   ["prune.method=structured", "prune.importance=taylor"]])
def test_same_seed_same_result(tmp_path, extra):
    recipe = load_recipe(None, [*TINY, *extra])
    a = run(recipe, tmp_path / "a", log=lambda m: None)
    b = run(recipe, tmp_path / "b", log=lambda m: None)
    for stage in ("dense", "pruned", "finetuned"):
        for key in ("accuracy", "loss", "nonzero_params", "params", "gzip_bytes"):
            assert a["stages"][stage][key] == b["stages"][stage][key], (stage, key)
    assert [h["train_loss"] for h in a["finetune"]["history"]] == [h["train_loss"] for h in b["finetune"]["history"]]
    assert [h["val_accuracy"] for h in a["finetune"]["history"]] == [h["val_accuracy"] for h in b["finetune"]["history"]]
    assert a["plan"] == b["plan"]
    assert a["nondeterministic_kernels"] is False and b["nondeterministic_kernels"] is False  # CPU
    for name in ("model.safetensors", "masks.safetensors"):
        pa, pb = tmp_path / "a" / "model" / name, tmp_path / "b" / "model" / name
        assert pa.exists() == pb.exists()
        if pa.exists():
            assert pa.read_bytes() == pb.read_bytes(), name
    other = run(load_recipe(None, [*TINY, *extra, "seed=1"]), tmp_path / "c", log=lambda m: None)
    assert (tmp_path / "c" / "model" / "model.safetensors").read_bytes() != (tmp_path / "a" / "model" / "model.safetensors").read_bytes()
    assert other["recipe"]["seed"] == 1


def test_finetune_seed_repeats_only_the_fine_tuning(tmp_path):
    """finetune.seed reorders fine-tuning's batches: same dense model, split and plan, different weights;
    its default is the recipe's seed + 1, so setting it to that changes nothing."""
    extra = ["prune.method=structured", "prune.sparsity=0.5"]
    a = run(load_recipe(None, [*TINY, *extra]), tmp_path / "a", log=lambda m: None)
    same = run(load_recipe(None, [*TINY, *extra, "finetune.seed=1"]), tmp_path / "s", log=lambda m: None)
    assert [h["train_loss"] for h in same["finetune"]["history"]] == [h["train_loss"] for h in a["finetune"]["history"]]
    b = run(load_recipe(None, [*TINY, *extra, "finetune.seed=1001"]), tmp_path / "b", log=lambda m: None)
    weights = {k: (tmp_path / k / "model" / "model.safetensors").read_bytes() for k in "asb"}
    assert weights["a"] == weights["s"] and weights["a"] != weights["b"]
    assert [h["train_loss"] for h in a["finetune"]["history"]] != [h["train_loss"] for h in b["finetune"]["history"]]
    for key in ("accuracy", "loss"):  # the dense model and the one-shot plan do not depend on it
        assert a["stages"]["dense"][key] == b["stages"]["dense"][key]
        assert a["stages"]["pruned"][key] == b["stages"]["pruned"][key]
    assert a["plan"] == b["plan"] and b["recipe"]["finetune"]["seed"] == 1001


def test_diverging_loss_is_a_runtime_fault(tmp_path):
    recipe = load_recipe(None, [*TINY, "finetune.lr=1e30", "finetune.optimizer=sgd", "finetune.lr_schedule=constant"])
    with pytest.raises(RuntimeFault, match=r"finetune: non-finite loss at step \d+ \(epoch 1, lr 1e\+30\)"):
        run(recipe, tmp_path / "x", log=lambda m: None)
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.tmp-*"))


def test_cli_exit_code_3_on_runtime_fault(tmp_path):
    args = ["run", "--set", "data.limit=300", "--set", "dense.epochs=0", "--set", "finetune.lr=1e30",
            "--set", "finetune.optimizer=sgd", "--set", "evaluate.latency=false", "--out", str(tmp_path / "o")]
    p = warm_cli.run(args, env=cli_env(tmp_path), timeout=300)
    assert p.returncode == 3, p.stderr[-1000:]
    assert "non-finite loss at step" in p.stderr and "Traceback" not in p.stderr
    assert "no checkpoint was written yet" in p.stderr  # the fault came before fine-tuning's first checkpoint
