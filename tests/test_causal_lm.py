"""Causal language models (issue 8): lm_text data, the causal_lm task, Wanda, decoder structured pruning,
LoRA with the masked merge, save / load, the command line and bad inputs.

Everything runs offline on a tiny randomly initialised GPT-2 (2 layers, 4 heads, 64 wide, 64 positions)
with a byte-level BPE tokenizer trained here on SST-2 training sentences, and a tiny Llama-style
model with grouped-query attention for the Llama / Qwen layout.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from prunetune.errors import PrunetuneError
from prunetune.data_spec import DataSpec
from prunetune.recipe import ModelSpec, PruneSpec, Recipe, TrainSpec

SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"
pytestmark = pytest.mark.skipif(not (SST2 / "train.tsv").is_file(), reason=f"SST-2 not found at {SST2}")
CPU = torch.device("cpu")
VOCAB = 512


def _sentences(n: int) -> list[str]:
    with open(SST2 / "train.tsv", encoding="utf-8") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(rows)
        return [r[0].strip() for _, r in zip(range(n), rows)]


@pytest.fixture(scope="module")
def tok():
    from prunetune.models.tiny_lm import train_tokenizer

    return train_tokenizer(_sentences(5000), VOCAB)


@pytest.fixture(scope="module")
def gpt_folder(tmp_path_factory, tok) -> Path:
    from prunetune.models.tiny_lm import tiny_model_folder

    return tiny_model_folder(tmp_path_factory.mktemp("tiny-gpt"), [], "gpt2", tokenizer=tok, layers=2, heads=4, dim=64,
                             positions=64)


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory, tok) -> Path:
    from prunetune.models.tiny_lm import tiny_model_folder

    return tiny_model_folder(tmp_path_factory.mktemp("tiny-llama"), [], "llama", tokenizer=tok, layers=2, heads=4,
                             kv_heads=2, dim=64, positions=64, inner=128)


def _bundle(folder: Path, **kw):
    from prunetune.data.base import build_data

    spec = {"source": "lm_text", "path": str(SST2), "limit": 640, "test_limit": 96, "max_length": 40,
            "eval_batch_size": 64, **kw}
    return build_data(DataSpec(**spec), 0, ModelSpec(name=f"hf:{folder}"))


def _model(folder: Path):
    from prunetune.models import build_model

    return build_model(ModelSpec(name=f"hf:{folder}"), 0, (40,), {"head": "causal_lm"})


def _task():
    from prunetune.registry import TASKS, load_builtins

    load_builtins()
    return TASKS.get("causal_lm")()


@pytest.fixture(scope="module")
def trained(gpt_folder):
    """(random-init model, the same trained 1 epoch on 640 SST-2 sentences, bundle, ppl before, ppl after)."""
    from prunetune.training import Trainer

    bundle = _bundle(gpt_folder)
    task = _task()
    torch.manual_seed(0)
    model = _model(gpt_folder)
    initial = copy.deepcopy(model)
    before = task.evaluate(model, bundle.test, 64, CPU, [])["perplexity"]
    Trainer(model, task, bundle, TrainSpec(epochs=1, lr=3e-3, batch_size=16, warmup_epochs=0.1), CPU, 0, log=lambda m: None).fit(1)
    after = task.evaluate(model, bundle.test, 64, CPU, [])["perplexity"]
    return initial, model.eval(), bundle, before, after


def _inputs(n=3, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, length // 2:] = 0  # padding inside the batch
    return {"input_ids": ids, "attention_mask": mask}


def _controller(bundle, method="unstructured", importance="l1", sparsity=0.5, **kw):
    from prunetune.pruning.controller import PruningController

    spec = PruneSpec(method=method, importance=importance, sparsity=sparsity, calibration_batches=4, **kw)
    return spec, lambda model, targets: PruningController(spec, _task(), bundle, CPU, targets, 1, 0)


def _targets(model):
    from prunetune.pruning.targets import select_targets

    return select_targets(model, ["*"], [], ["lm_head"])


# ---------------------------------------------------------------- data


def test_lm_text_labels_are_the_inputs_with_padding_ignored(gpt_folder, tok):
    b = _bundle(gpt_folder)
    assert (len(b.train), len(b.val), len(b.test)) == (640, 872, 96)  # SST-2 dev is the validation file
    assert b.class_names == [] and b.num_classes == 0 and b.model_kwargs == {"head": "causal_lm"}
    for d in (b.train, b.val, b.test):
        ids, mask, y = d.x["input_ids"], d.x["attention_mask"], d.y
        assert y.shape == ids.shape and ids.shape[1] == int(mask.sum(1).max()) <= 40
        assert torch.equal(y[mask.bool()], ids[mask.bool()]) and bool((y[~mask.bool()] == -100).all())
    n = int(b.train.x["attention_mask"][0].sum())
    assert int(b.train.x["input_ids"][0, n - 1]) == tok.eos_token_id  # every example ends with end-of-text
    again = _bundle(gpt_folder)  # seeded subset, cached tokens: identical
    assert torch.equal(again.train.x["input_ids"], b.train.x["input_ids"])


def test_prompt_completion_loss_is_on_the_completion_only(tmp_path, gpt_folder, tok):
    rows = [{"prompt": "the film is", "completion": " a gripping , funny ride ."},
            {"prompt": "a dull , lifeless", "completion": " mess ."},
            {"prompt": "one of the best films of the year , and", "completion": " a joy ."}]
    for name in ("train", "test"):
        (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows * 4) + "\n")
    b = _bundle(gpt_folder, path=str(tmp_path), limit=None, test_limit=None, val_size=3)
    d = b.test
    for i, r in enumerate(rows):
        p = len(tok(r["prompt"])["input_ids"])
        c = tok(r["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        n = int(d.x["attention_mask"][i].sum())
        assert n == p + len(c)
        assert bool((d.y[i, :p] == -100).all()), "the prompt is never predicted"
        assert d.y[i, p:n].tolist() == c == d.x["input_ids"][i, p:n].tolist()
        assert bool((d.y[i, n:] == -100).all())
    # The loss counts exactly the completion tokens: 3 prompts x 4 copies.
    ev = _task().evaluate(_model(gpt_folder), d, 8, CPU, [])
    expected = sum(len(tok(r["completion"], add_special_tokens=False)["input_ids"]) + 1 for r in rows) * 4
    assert ev["tokens"] == expected and math.isfinite(ev["perplexity"])


def test_plain_text_file_one_example_per_line(tmp_path, gpt_folder):
    lines = _sentences(60)
    (tmp_path / "train.txt").write_text("\n".join(lines[:50]) + "\n\n")
    (tmp_path / "test.txt").write_text("\n".join(lines[50:]))
    b = _bundle(gpt_folder, path=str(tmp_path), limit=None, test_limit=None, val_size=10)
    assert (len(b.train), len(b.val), len(b.test)) == (40, 10, 10)


# ---------------------------------------------------------------- task


def test_dense_training_lowers_perplexity(trained):
    _, model, bundle, before, after = trained
    assert VOCAB / 2 < before < VOCAB * 2  # random init: about uniform over the vocabulary
    assert math.isfinite(after) and after < 0.6 * before
    task = _task()
    x = bundle.train.head(4)
    loss = task.loss(task.forward(model, x), bundle.train.y[:4])
    ref = model(**x, labels=torch.where(x["attention_mask"].bool(), bundle.train.y[:4, : x["input_ids"].shape[1]], -100)).loss
    assert torch.allclose(loss, ref, atol=1e-5)  # the same NLL transformers computes


# ---------------------------------------------------------------- wanda, unstructured and 2:4


def test_wanda_ranks_by_weight_times_input_norm_on_a_constructed_layer():
    from prunetune.pruning.activations import input_norms
    from prunetune.pruning.masks import get_mask
    from prunetune.pruning.pruners import Unstructured
    from prunetune.registry import IMPORTANCES, load_builtins

    load_builtins()
    lin = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    # Inputs of feature 0 are huge, of feature 3 tiny: magnitude keeps {2, 3}, wanda keeps {0, 1}.
    x = torch.tensor([[10.0, 3.0, 0.5, 0.1], [10.0, 4.0, 0.5, 0.1]])
    model = nn.Sequential(lin)
    wanda = IMPORTANCES.get("wanda")()
    wanda.norms = input_norms(model, {"0": lin}, [x])
    norms = x.pow(2).sum(0).sqrt()
    assert torch.allclose(wanda.norms[lin], norms)
    assert torch.allclose(wanda.module_scores(lin, lin.weight, None), lin.weight.abs() * norms)
    for imp, kept in ((wanda, [1, 1, 0, 0]), (IMPORTANCES.get("l1")(), [0, 0, 1, 1])):
        m = copy.deepcopy(model)
        if imp is wanda:
            imp.norms = {m[0]: norms}
        pr = Unstructured(PruneSpec(method="unstructured", sparsity=0.5), imp, ["0"])
        pr.setup(m, x, [0.5])
        pr.prune_to(m, 0.5)
        assert get_mask(m[0]).mask.int().flatten().tolist() == kept


def test_unstructured_wanda_and_magnitude_exact_sparsity_and_differ(trained):
    from prunetune.pruning.hf_conv1d import is_hf_conv1d
    from prunetune.pruning.masks import masked_layers

    _, dense, bundle, _, after = trained
    masks = {}
    for imp in ("wanda", "l1"):
        _, make = _controller(bundle, importance=imp, scope="layer")  # per layer: exactly half of each
        targets = _targets(dense)
        pruned, _ = make(dense, targets).one_shot_copy(dense)
        m = masked_layers(pruned)
        assert set(m) == set(targets) and len(targets) == 8
        assert all(is_hf_conv1d(dict(pruned.named_modules())[n]) for n in targets)  # GPT-2's Conv1D, masked
        for name, mask in m.items():
            assert int((~mask).sum()) == round(0.5 * mask.numel())  # exactly half of every targeted layer
        ppl = _task().evaluate(pruned, bundle.test, 64, CPU, [])["perplexity"]
        assert math.isfinite(ppl) and ppl < 3 * after
        masks[imp] = m
    differ = sum(int((masks["wanda"][n] != masks["l1"][n]).sum()) for n in masks["l1"])
    assert differ > 0.05 * sum(m.numel() for m in masks["l1"].values())


def test_nm_2_4_with_wanda_holds_in_every_group(trained):
    from prunetune.pruning.layers import layer_type_of
    from prunetune.pruning.masks import masked_layers

    _, dense, bundle, _, _ = trained
    _, make = _controller(bundle, method="nm", importance="wanda")
    pruned, _ = make(dense, _targets(dense)).one_shot_copy(dense)
    mods = dict(pruned.named_modules())
    for name, mask in masked_layers(pruned).items():
        rows = layer_type_of(mods[name]).to_rows(mask)  # Conv1D [in, out] -> [out, in]: groups along inputs
        assert bool((rows.reshape(rows.shape[0], -1, 4).sum(-1) == 2).all()), name


# ---------------------------------------------------------------- structured


def _equivalent_masked(dense: nn.Module, pruned: nn.Module) -> nn.Module:
    """The dense model with the removed heads' / neurons' output-projection inputs zeroed: it must compute
    exactly what the physically pruned model computes."""
    from prunetune.pruning.decoder import decoder_blocks

    ref = copy.deepcopy(dense)
    after = {b.name: b for b in decoder_blocks(pruned)}
    with torch.no_grad():
        for b in decoder_blocks(ref):
            out_proj, small = b.members[-1], after[b.name].members[-1]
            w, ws = out_proj.module.weight, small.module.weight  # the output projection, indexed by its inputs
            dim = out_proj.dim
            big_cols = w.movedim(dim, 0).reshape(b.units, -1)
            kept_cols = ws.movedim(dim, 0).reshape(after[b.name].units, -1)
            kept = [int((big_cols - k).abs().sum(1).argmin()) for k in kept_cols]
            assert len(set(kept)) == len(kept)
            drop = [u for u in range(b.units) if u not in kept]
            pos = out_proj.positions(drop, b.units)
            w.index_fill_(dim, pos, 0.0)
    return ref


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_structured_removes_heads_and_neurons(arch, trained, llama_folder, tok):
    from prunetune.pruning.decoder import head_counts, mlp_widths

    _, gpt, bundle, _, _ = trained
    dense = gpt if arch == "gpt2" else _model(llama_folder).eval()
    _, make = _controller(bundle, method="structured", importance="wanda")
    targets = _targets(dense)
    ctrl = make(dense, targets)
    pruned, pruner = ctrl.one_shot_copy(dense)
    pruned.eval()
    if arch == "gpt2":
        assert head_counts(dense) == {f"transformer.h.{i}.attn": 4 for i in range(2)}
        assert head_counts(pruned) == {f"transformer.h.{i}.attn": 2 for i in range(2)}
        assert mlp_widths(pruned) == {f"transformer.h.{i}.mlp": 128 for i in range(2)}
        a = pruned.transformer.h[0].attn
        assert tuple(a.c_attn.weight.shape) == (64, 96) and tuple(a.c_proj.weight.shape) == (32, 64)
        assert (a.num_heads, a.split_size) == (2, 32)
        assert tuple(pruned.transformer.h[0].mlp.c_fc.weight.shape) == (64, 128)
    else:  # 4 query heads in 2 key/value groups: one group (2 query heads + its k/v head) removed per layer
        a = pruned.model.layers[0].self_attn
        assert (a.q_proj.out_features, a.k_proj.out_features, a.v_proj.out_features, a.o_proj.in_features) == (32, 16, 16, 32)
        assert a.num_key_value_groups == 2 and head_counts(pruned) == {f"model.layers.{i}.self_attn": 1 for i in range(2)}
        mlp = pruned.model.layers[0].mlp
        assert (mlp.gate_proj.out_features, mlp.up_proj.out_features, mlp.down_proj.in_features) == (64, 64, 64)
        assert any("grouped-query" in n for n in pruner.notes)
    assert pruned.get_input_embeddings().weight.shape == dense.get_input_embeddings().weight.shape  # hidden size kept
    x = _inputs()
    with torch.no_grad():
        out = pruned(**x).logits
        ref = _equivalent_masked(dense, pruned)(**x).logits
    assert torch.isfinite(out).all()
    assert torch.allclose(out, ref, atol=1e-4), "the removed units are exactly the zeroed ones"
    gen = pruned.generate(x["input_ids"][1:2, :5], attention_mask=x["attention_mask"][1:2, :5], max_new_tokens=6,
                          do_sample=False, pad_token_id=tok.eos_token_id)
    assert gen.shape[1] <= 11 and torch.equal(gen[0, :5], x["input_ids"][1, :5])
    assert math.isfinite(_task().evaluate(pruned, bundle.test, 64, CPU, [])["perplexity"])


def test_structured_unknown_decoder_is_refused(trained):
    from prunetune.pruning.decoder import DecoderPruner

    class FooForCausalLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

    with pytest.raises(PrunetuneError, match="structured pruning of FooForCausalLM is not supported"):
        DecoderPruner(PruneSpec(), None, ["fc"], []).setup(FooForCausalLM(), [0.5])


# ---------------------------------------------------------------- LoRA + masked merge, save / load


@pytest.mark.parametrize("method", ["unstructured", "nm"])
def test_lora_masked_merge_keeps_every_pruned_weight_zero(method, trained):
    from prunetune.finetune.lora import LoRA
    from prunetune.pruning.masks import masked_layers, realise
    from prunetune.recipe import FinetuneSpec
    from prunetune.tasks import to_device
    from prunetune.training import Trainer

    _, dense, bundle, _, _ = trained
    _, make = _controller(bundle, method=method, importance="wanda")
    pruned, _ = make(dense, _targets(dense)).one_shot_copy(dense)
    masks = {n: m.clone() for n, m in masked_layers(pruned).items()}
    spec = FinetuneSpec(method="lora", epochs=1, lr=5e-3, batch_size=32)
    lora = LoRA(spec, "lm_head")
    wrapped = lora.prepare(pruned)
    assert not any("lm_head" in n for n, p in wrapped.named_parameters() if p.requires_grad)  # the head stays frozen
    lora.probe_with(to_device(bundle.val.head(16), CPU))
    Trainer(wrapped, _task(), bundle, spec, CPU, 1, log=lambda m: None, method=lora).fit(1)
    merged = lora.finish(wrapped)
    mg = lora.summary["merge"]
    assert mg["nonzero_gained"] == 0 and mg["pruned_weights_nonzero_after"] == 0 and mg["masked_layers"] == 8
    assert mg["max_logit_diff"] < 1e-4
    plain = dict(realise(merged).named_modules())
    for n, m in masks.items():
        assert int(torch.count_nonzero(plain[n].weight[~m])) == 0
        assert int(torch.count_nonzero(plain[n].weight[m])) == int(m.sum())  # the update reached the kept weights


@pytest.mark.parametrize("method", ["structured", "unstructured"])
def test_save_load_pruned_lm_gives_identical_logits(method, trained, tmp_path):
    from prunetune.artifacts import load_model, save_model
    from prunetune.pruning.masks import masked_layers

    _, dense, bundle, _, _ = trained
    _, make = _controller(bundle, method=method, importance="l2")
    pruned, _ = make(dense, _targets(dense)).one_shot_copy(dense)
    pruned.eval()
    save_model(pruned, tmp_path / "m", {"task": "causal_lm", "model": {"name": "hf:unused"}, "num_classes": 0,
                                        "class_names": [], "input_shape": [40], "preprocess": {},
                                        "model_kwargs": {"head": "causal_lm"}})
    loaded, manifest = load_model(tmp_path / "m", keep_masks=True)
    loaded.eval()
    x = _inputs()
    with torch.no_grad():
        assert torch.equal(pruned(**x).logits, loaded(**x).logits)
    assert type(loaded).__name__ == "GPT2LMHeadModel"
    assert set(masked_layers(loaded)) == set(masked_layers(pruned))
    if method == "structured":
        assert manifest.widths["decoder"]["heads"] == {f"transformer.h.{i}.attn": 2 for i in range(2)}
        assert loaded.transformer.h[1].attn.num_heads == 2


# ---------------------------------------------------------------- recipe, command line, bad inputs


def _recipe_dict(folder: Path, **over) -> dict:
    r = {"name": "lm", "task": "causal_lm", "model": {"name": f"hf:{folder}"},
         "data": {"source": "lm_text", "path": str(SST2), "limit": 480, "test_limit": 64, "max_length": 40,
                  "eval_batch_size": 64},
         "dense": {"epochs": 1, "lr": 3e-3, "batch_size": 16},
         "prune": {"method": "unstructured", "importance": "wanda", "sparsity": 0.5, "calibration_batches": 2},
         "finetune": {"epochs": 1, "lr": 1e-3, "batch_size": 32, "method": "lora"},
         "evaluate": {"latency": False, "memory": False, "generate": 2, "max_new_tokens": 6}}
    for k, v in over.items():
        r[k] = {**r[k], **v} if isinstance(v, dict) else v
    return r


@pytest.mark.parametrize("over, error", [
    ({"data": {"source": "sst2"}}, "task causal_lm reads language-model text"),
    ({"task": "classification"}, "is language-model text; set task causal_lm"),
    ({"model": {"name": "lenet300"}}, "needs a Hugging Face causal language model"),
    ({"finetune": {"method": "prompt_tuning"}}, "not supported for causal language models"),
    ({"prune": {"keep_classifier": False}}, "never pruned"),
])
def test_recipe_refuses_what_lms_do_not_support(gpt_folder, over, error):
    with pytest.raises(Exception, match=error):
        Recipe.model_validate(_recipe_dict(gpt_folder, **over))
    with pytest.raises(Exception, match="wanda with structured pruning"):
        Recipe.model_validate({"prune": {"method": "structured", "importance": "wanda"}})


def _cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    from prunetune.cli import main

    monkeypatch.setattr(sys, "argv", ["prunetune", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr()
    return int(e.value.code or 0), out.out, out.err


def test_cli_run_end_to_end_then_eval(gpt_folder, tmp_path, monkeypatch, capsys):
    import yaml

    (tmp_path / "r.yaml").write_text(yaml.safe_dump(_recipe_dict(gpt_folder)))
    rc, out, err = _cli(monkeypatch, capsys, "run", tmp_path / "r.yaml", "--out", tmp_path / "run")
    assert rc == 0, err[-2000:]
    assert "perplexity dense" in out
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    assert rep["task"] == "causal_lm" and rep["metric"] == "perplexity" and rep["higher_is_better"] is False
    st = rep["stages"]
    for name in ("dense", "pruned", "finetuned"):
        assert math.isfinite(st[name]["perplexity"]) and st[name]["tokens"] > 0
        assert len(st[name]["samples"]) == 2 and set(st[name]["samples"][0]) == {"prompt", "completion", "reference"}
    assert st["dense"]["perplexity"] < VOCAB  # one epoch of training helped
    assert st["finetuned"]["prunable_sparsity"] == 0.5 and rep["finetune"]["merge"]["nonzero_gained"] == 0
    assert all("val_perplexity" in row for row in rep["finetune"]["history"])
    md = (tmp_path / "run" / "report.md").read_text()
    assert "test perplexity" in md and "## Sampled generations" in md
    assert 'id="samples"' in (tmp_path / "run" / "report.html").read_text()
    rc, out, err = _cli(monkeypatch, capsys, "eval", tmp_path / "run" / "model")
    assert rc == 0, err
    assert json.loads(out)["perplexity"] == st["finetuned"]["perplexity"]
    for cmd in (["predict", tmp_path / "run" / "model", tmp_path / "r.yaml"], ["export", tmp_path / "run" / "model"]):
        rc, out, err = _cli(monkeypatch, capsys, *cmd)
        assert rc == 2 and err.count("error:") == 1 and "a causal language model" in err and "Traceback" not in err


@pytest.mark.parametrize("lines, error", [
    ([{"body": "no text here"}], "train.jsonl:1: no 'text' field and no 'prompt'/'completion' pair"),
    ([{"prompt": "a", "completion": "b"}, {"prompt": "the film is", "completion": "  "}], "train.jsonl:2: empty completion"),
])
def test_cli_bad_lm_files_one_line_exit_2(gpt_folder, tmp_path, monkeypatch, capsys, lines, error):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train", "test"):
        (data / f"{name}.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    rc, out, err = _cli(monkeypatch, capsys, "run", "--set", "task=causal_lm", "--set", "data.source=lm_text",
                        "--set", f"model.name=hf:{gpt_folder}", "--set", f"data.path={data}", "--out", tmp_path / "run")
    assert rc == 2 and error in err
    assert err.count("error:") == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err + out
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run*"))
