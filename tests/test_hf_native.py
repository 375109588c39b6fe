"""Hugging Face-native model folders (issue 16): a uniformly pruned transformers model's folder loads with
plain `AutoModelFor...from_pretrained` in a process that never imports prunetune, with identical logits;
a folder whose per-layer widths differ loads through prunetune, and plain transformers refuses it.

Tiny random models (hidden 32-64, 2 layers) of each family prunetune prunes: BERT (FFN only: its config
ties the head width to hidden_size / heads), GPT-2 (FFN only, same reason), Llama and Qwen2 with
grouped-query attention (heads in whole key/value groups, and FFN), GPT-NeoX (FFN only).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from prunetune.artifacts import load_model, save_model
from prunetune.errors import PrunetuneError
from prunetune.models.hf_native import layer_widths
from prunetune.pruning.pruners import Structured
from prunetune.pruning.targets import select_targets
from prunetune.recipe import PruneSpec
from prunetune.registry import IMPORTANCES, load_builtins

tf = pytest.importorskip("transformers")
tf.logging.set_verbosity_error()
VOCAB = 100


def _configs() -> dict:
    kw = dict(vocab_size=VOCAB, num_hidden_layers=2, max_position_embeddings=32)
    return {
        "bert": (tf.BertConfig(hidden_size=32, num_attention_heads=4, intermediate_size=64, num_labels=3, **kw),
                 "AutoModelForSequenceClassification", 0.0),
        "gpt2": (tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32, n_inner=64),
                 "AutoModelForCausalLM", 0.0),
        "llama": (tf.LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128, **kw),
                  "AutoModelForCausalLM", 0.5),
        "qwen2": (tf.Qwen2Config(hidden_size=64, num_attention_heads=8, num_key_value_heads=2, intermediate_size=96, **kw),
                  "AutoModelForCausalLM", 0.5),
        "neox": (tf.GPTNeoXConfig(hidden_size=32, num_attention_heads=4, intermediate_size=64, **kw),
                 "AutoModelForCausalLM", 0.0),
    }


def _model(arch: str):
    config, auto, _ = _configs()[arch]
    torch.manual_seed(0)
    return getattr(tf, auto).from_config(config).eval()


def _inputs() -> dict:
    ids = torch.randint(1, VOCAB, (3, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0  # padding inside the batch
    return {"input_ids": ids, "attention_mask": mask}


def _prune(model, head_sparsity: float, include=("*",), sparsity: float = 0.5, **kw):
    load_builtins()
    keep = [n for n in ("classifier", "lm_head", "embed_out") if hasattr(model, n)]
    targets = select_targets(model, list(include), [], keep)
    spec = PruneSpec(method="structured", importance="l2", sparsity=sparsity, head_sparsity=head_sparsity, **kw)
    pruner = Structured(spec, IMPORTANCES.get("l2")(), targets)
    pruner.setup(model, _inputs(), [sparsity])
    pruner.prune_to(model, sparsity)
    return pruner


def _save(model, folder: Path, classes: int = 0) -> dict:
    names = [f"c{i}" for i in range(classes)]
    save_model(model, folder, {"task": "classification" if classes else "causal_lm", "model": {"name": "hf:unused"},
                               "num_classes": classes, "class_names": names, "input_shape": [10], "preprocess": {},
                               **({} if classes else {"model_kwargs": {"head": "causal_lm"}})})
    return json.loads((folder / "manifest.json").read_text())


# A process that never imports prunetune: the folders load as any transformers checkpoint does.
PLAIN = textwrap.dedent("""
    import json, sys, torch, transformers
    from safetensors.torch import load_file, save_file
    jobs, x, out = json.loads(sys.argv[1]), load_file(sys.argv[2]), sys.argv[3]
    logits, errors = {}, {}
    for name, folder, auto in jobs:
        try:
            model = getattr(transformers, auto).from_pretrained(folder).eval()
        except Exception as e:
            errors[name] = f"{type(e).__name__}: {e}"
            continue
        with torch.no_grad():
            logits[name] = model(**x).logits.contiguous()
    save_file(logits, out + ".safetensors")
    imported = sorted(m for m in sys.modules if m.split(".")[0] == "prunetune")
    json.dump({"errors": errors, "prunetune_modules": imported}, open(out + ".json", "w"))
""")


@pytest.fixture(scope="module")
def plain_load(tmp_path_factory):
    """Every architecture pruned uniformly (and one Llama per-layer), saved, then loaded in one plain process."""
    root = tmp_path_factory.mktemp("hf-native")
    x = _inputs()
    ours, manifests, jobs = {}, {}, []
    for arch, (config, auto, heads) in _configs().items():
        model = _model(arch)
        _prune(model, heads, uniform=True)
        with torch.no_grad():
            ours[arch] = model(**x).logits
        manifests[arch] = _save(model, root / arch, classes=3 if arch == "bert" else 0)
        jobs.append((arch, str(root / arch), auto))
    uneven = _model("llama")
    _prune(uneven, 0.0, include=["model.layers.0.mlp.*"])  # layer 0's MLP halved, layer 1's whole
    with torch.no_grad():
        ours["uneven"] = uneven(**x).logits
    manifests["uneven"] = _save(uneven, root / "uneven")
    jobs.append(("uneven", str(root / "uneven"), "AutoModelForCausalLM"))
    sparse = _model("gpt2")
    _zero_most(sparse)
    with torch.no_grad():
        ours["sparse"] = sparse(**x).logits
    manifests["sparse"] = _save(sparse, root / "sparse")
    jobs.append(("sparse", str(root / "sparse"), "AutoModelForCausalLM"))
    save_file(x, root / "x.safetensors")
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}  # the script checks that nothing of prunetune was imported
    p = subprocess.run([sys.executable, "-c", PLAIN, json.dumps(jobs), str(root / "x.safetensors"), str(root / "out")],
                       capture_output=True, text=True, timeout=300, check=False, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads((root / "out.json").read_text())
    return {"root": root, "ours": ours, "theirs": load_file(root / "out.safetensors"), "manifests": manifests,
            "stderr": p.stderr, **result}


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama", "qwen2", "neox"])
def test_uniform_folder_loads_in_plain_transformers_with_identical_logits(plain_load, arch):
    assert plain_load["prunetune_modules"] == []
    assert arch not in plain_load["errors"], plain_load["errors"].get(arch)
    assert torch.equal(plain_load["theirs"][arch], plain_load["ours"][arch])
    loading = plain_load["manifests"][arch]["loading"]
    assert loading == {"with": "transformers", "how": "loads with transformers from_pretrained", "reason": ""}
    again, _ = load_model(plain_load["root"] / arch)  # and through prunetune, from the same config
    with torch.no_grad():
        assert torch.equal(again(**_inputs()).logits, plain_load["ours"][arch])


def test_configs_carry_the_pruned_counts(plain_load):
    cfg = {a: json.loads((plain_load["root"] / a / "config.json").read_text()) for a in ("bert", "gpt2", "llama", "qwen2", "neox")}
    # Llama: 4 query heads in 2 key/value groups, one group removed; the head width stays 16 (not 64 / 2).
    assert (cfg["llama"]["num_attention_heads"], cfg["llama"]["num_key_value_heads"], cfg["llama"]["head_dim"]) == (2, 1, 16)
    assert cfg["llama"]["intermediate_size"] == 64 and cfg["llama"]["architectures"] == ["LlamaForCausalLM"]
    assert (cfg["qwen2"]["num_attention_heads"], cfg["qwen2"]["num_key_value_heads"], cfg["qwen2"]["head_dim"]) == (4, 1, 8)
    assert cfg["qwen2"]["intermediate_size"] == 48
    assert (cfg["bert"]["num_attention_heads"], cfg["bert"]["intermediate_size"]) == (4, 32)
    assert cfg["bert"]["id2label"] == {"0": "c0", "1": "c1", "2": "c2"}
    assert (cfg["gpt2"]["n_head"], cfg["gpt2"]["n_inner"]) == (4, 32)
    assert (cfg["neox"]["num_attention_heads"], cfg["neox"]["intermediate_size"]) == (4, 32)
    assert all(c.get("num_hidden_layers", c.get("n_layer")) == 2 for c in cfg.values())


def test_uneven_folder_loads_through_prunetune_and_plain_transformers_refuses_it(plain_load):
    m = plain_load["manifests"]["uneven"]
    assert m["loading"]["with"] == "prunetune"
    assert m["loading"]["how"] == "loads through prunetune.artifacts.load_model (per-layer FFN widths differ: 64, 128)"
    # transformers 5 builds the original widths from config.json, reports the mismatch and raises (README quotes it).
    err = plain_load["errors"]["uneven"]
    assert err == "RuntimeError: You set `ignore_mismatched_sizes` to `False`, thus raising an error. For details look at the above report!"
    assert ("model.layers.0.mlp.down_proj.weight | MISMATCH | Reinit due to size mismatch - ckpt: torch.Size([64, 64]) "
            "vs model:torch.Size([64, 128])") in plain_load["stderr"]
    again, _ = load_model(plain_load["root"] / "uneven")
    with torch.no_grad():
        assert torch.equal(again(**_inputs()).logits, plain_load["ours"]["uneven"])


def test_layer_widths_are_read_from_the_modules():
    model = _model("llama")
    _prune(model, 0.5, uniform=True)
    where, rows = layer_widths(model)
    assert where == "model.layers" and rows == [{"heads": 2, "kv_heads": 1, "head_dim": 16, "ffn": 64}] * 2


@pytest.mark.parametrize("arch, kind", [("bert", "BertForSequenceClassification"), ("gpt2", "GPT2LMHeadModel"),
                                        ("neox", "GPTNeoXForCausalLM")])
def test_uniform_heads_where_the_config_ties_head_width_to_hidden_size(arch, kind):
    with pytest.raises(PrunetuneError, match=rf"^prune.uniform: transformers' {kind} takes its head width from "
                       r"hidden_size / num_attention_heads, so its config cannot express 2 heads of width 8; set "
                       r"prune.head_sparsity: 0"):
        _prune(_model(arch), 0.5, uniform=True)


def test_uniform_heads_must_go_in_whole_key_value_groups():
    with pytest.raises(PrunetuneError, match=r"^prune.head_sparsity: 0.25 removes 1 of the 4 query heads of "
                       r"model.layers.0.self_attn, but grouped-query attention removes whole key/value groups \(2 groups "
                       r"of 2 query heads.*use one of 0.5$"):
        _prune(_model("llama"), 0.25, uniform=True)
    # Without prune.uniform the amount is rounded to whole groups, as before.
    model = _model("llama")
    _prune(model, 0.25)
    assert layer_widths(model)[1][0]["kv_heads"] == 2


def test_uniform_with_part_of_the_layers_selected_is_refused():
    with pytest.raises(PrunetuneError, match=r"^prune.uniform: prune.include/exclude select the neurons of 1 of 2 layers "
                       r"\(model.layers.1.mlp is left whole\)"):
        _prune(_model("llama"), 0.0, include=["model.layers.0.mlp.*"], uniform=True)
    bert = _model("bert")
    with pytest.raises(PrunetuneError, match=r"^prune.uniform: after pruning, per-layer FFN widths differ: 32, 64"):
        _prune(bert, 0.0, include=["bert.encoder.layer.0.intermediate.dense"], uniform=True)


@pytest.mark.parametrize("over, error", [
    ({"method": "unstructured"}, "uniform: only structured pruning changes layer widths"),
    ({"scope": "global"}, "uniform: global ranking gives each layer its own width; use prune.scope: layer"),
    ({"layer_sparsity": {"fc": 0.5}}, "uniform: prune.layer_sparsity gives layers different widths"),
])
def test_recipe_refuses_uniform_with_what_makes_widths_differ(over, error):
    with pytest.raises(ValueError, match=error):
        PruneSpec(uniform=True, **over)


def test_config_that_disagrees_with_the_weights(tmp_path):
    model = _model("gpt2")
    _prune(model, 0.0, uniform=True)
    _save(model, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**cfg, "n_inner": 64}))
    with pytest.raises(PrunetuneError, match=r"m/config.json: disagrees with model.safetensors "
                       r"\(transformer.h.0.mlp.c_fc.weight is \[32, 32\] there, the config builds \[32, 64\]\); put back"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps({**cfg, "n_head": 3}))
    with pytest.raises(PrunetuneError, match=r"m/config.json: transformers cannot build the model from it"):
        load_model(tmp_path / "m")


LM_LINES = Path(__file__).resolve().parent / "bad_inputs" / "files" / "text" / "lm_lines"


def tiny_llama_folder(folder: Path) -> Path:
    """A 2-layer Llama (4 query heads in 2 key/value groups, hidden 32) with a tokenizer trained on LM_LINES."""
    from prunetune.models.tiny_lm import tiny_model_folder

    texts = (LM_LINES / "train.txt").read_text().splitlines()
    return tiny_model_folder(folder, texts, "llama", vocab_size=300, layers=2, heads=4, kv_heads=2, dim=32,
                             positions=32, inner=64)


def _run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    from prunetune.cli import main

    monkeypatch.setattr(sys, "argv", ["prunetune", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr()
    return int(e.value.code or 0), out.out, out.err


@pytest.mark.parametrize("uniform, how", [
    (True, "loads with transformers from_pretrained"),
    (False, "loads through prunetune.artifacts.load_model (per-layer FFN widths differ: 32, 64)"),
])
def test_run_report_says_how_the_model_folder_loads(tmp_path, monkeypatch, capsys, uniform, how):
    folder = tiny_llama_folder(tmp_path / "llama")
    sets = {"task": "causal_lm", "model.name": f"hf:{folder}", "data.source": "lm_text", "data.path": LM_LINES,
            "data.max_length": 16, "data.val_size": 8, "dense.epochs": 0, "prune.method": "structured",
            "prune.importance": "l2", "prune.sparsity": 0.5, "prune.head_sparsity": 0.5, "finetune.epochs": 1,
            "finetune.batch_size": 16, "evaluate.latency": False, "evaluate.memory": False, "evaluate.generate": 0}
    if uniform:
        sets["prune.uniform"] = True
    else:  # only layer 0's MLP: the layers' FFN widths differ
        sets.update({"prune.include": '["model.layers.0.mlp.*"]', "prune.head_sparsity": 0.0})
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    rc, out, err = _run_cli(monkeypatch, capsys, "run", *args, "--out", tmp_path / "run")
    assert rc == 0, err[-2000:]
    assert f"model folder: {how}\n" in out
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    assert rep["saved_model"]["how"] == how and rep["saved_model"]["with"] == ("transformers" if uniform else "prunetune")
    assert f"Model folder `model/`: {how}." in (tmp_path / "run" / "report.md").read_text()


def _zero_most(model) -> None:
    """Unstructured pruning's result: 80 % of every GPT-2 block's weights zero."""
    with torch.no_grad():
        for b in model.transformer.h:
            for mod in (b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj):
                mod.weight[mod.weight.abs() < mod.weight.abs().quantile(0.8)] = 0


def test_mostly_zero_transformers_weights_stay_dense_and_load_in_plain_transformers(plain_load):
    """The bitmask layout would make plain from_pretrained silently re-initialise the packed tensors
    (it reports them missing): a transformers folder keeps its weights dense and loads natively."""
    m = plain_load["manifests"]["sparse"]
    assert "sparse" not in m and m["loading"]["with"] == "transformers"
    assert "sparse" not in plain_load["errors"], plain_load["errors"].get("sparse")
    assert torch.equal(plain_load["theirs"]["sparse"], plain_load["ours"]["sparse"])


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_layers_removed_flow_into_the_config(arch):
    """The hook depth pruning uses: num_hidden_layers is read from the layer list, not from a plan."""
    from prunetune.models.hf_native import native_config

    model = _model(arch)
    _prune(model, 0.5, uniform=True)
    del model.model.layers[1]  # what removing the last layer leaves
    config, why = native_config(model)
    assert why == "" and config.num_hidden_layers == 1 and config.num_attention_heads == model.config.num_attention_heads // 2
    rebuilt = type(model)(config).eval()
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt(**_inputs()).logits, model(**_inputs()).logits)


def test_uniform_on_a_model_without_transformer_layers_is_refused():
    load_builtins()
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    pruner = Structured(PruneSpec(uniform=True), IMPORTANCES.get("l2")(), ["0"])
    with pytest.raises(PrunetuneError, match=r"^prune.uniform: Sequential has no transformer layers .*; drop prune.uniform$"):
        pruner.setup(mlp, torch.randn(2, 4), [0.5])
