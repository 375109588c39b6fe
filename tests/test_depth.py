"""Depth pruning (pruning/depth.py): which blocks go, what is refused, and that saved depth-pruned
ResNets, BERT encoders and Llama decoders reload with identical logits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunetune.artifacts import load_model, save_model
from prunetune.errors import PrunetuneError
from prunetune.export import export_onnx
from prunetune.pruning.depth import block_count, block_scores, block_stacks, prune_depth, renamed, renames
from prunetune.recipe import Recipe

from conftest import TinyCNN
from test_resnet_cifar import SHAPE, pruned_copy, resnet20, save


class Logits:
    """The part of a task depth pruning uses: the model's output tensor and a loss."""

    @staticmethod
    def forward(model, x):
        out = model(**x) if isinstance(x, dict) else model(x)
        return getattr(out, "logits", out)

    @staticmethod
    def loss(out, y):
        return nn.functional.cross_entropy(out.flatten(0, -2), y.flatten())


def images(n=8, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, *SHAPE, generator=g), torch.randint(0, 3, (n,), generator=g))]


def with_identity_block(stage: str = "layer2", i: int = 2) -> nn.Module:
    """resnet20 whose block `stage`.`i` has its residual branch zeroed: relu(0 + x) = x (x >= 0 after a ReLU)."""
    model = resnet20()
    bn = getattr(model, stage)[i].bn2
    nn.init.zeros_(bn.weight)
    nn.init.zeros_(bn.bias)
    return model


def test_cosine_removes_the_identity_block_first_and_counts_blocks(tmp_path):
    model = with_identity_block()
    stacks = block_stacks(model)
    assert [(s.path, s.removable) for s in stacks] == [("layer1", [0, 1, 2]), ("layer2", [1, 2]), ("layer3", [1, 2])]
    scores = block_scores(model, stacks, images(), Logits, "cosine")
    assert scores[("layer2", 2)] == pytest.approx(0.0, abs=1e-6)  # input == output: cosine 1
    assert min(v for k, v in scores.items() if k != ("layer2", 2)) > 1e-3
    assert block_scores(model, stacks, images(), Logits, "skip_loss")[("layer2", 2)] == 0.0

    notes = prune_depth(model, 0.15, "cosine", images(), Logits)  # 0.15 x 7 = 1.05: 1 block
    assert [len(model.layer1), len(model.layer2), len(model.layer3)] == [3, 2, 3]
    assert model.layer2.kept_blocks == [0, 1] and model.layer2.original_blocks == 3
    assert notes == ["depth: removed 1 of 3 blocks of layer2: 2 (0.0000) by cosine"]
    assert renamed("layer2.2.conv1", renames(model)) is None and renamed("layer3.2.conv1", renames(model)) == "layer3.2.conv1"

    model = with_identity_block("layer1", 0)
    prune_depth(model, 0.5, "cosine", images(), Logits)  # 3.5 rounded half up: 4 blocks, layer1.0 among them
    assert sum(len(s) for s in (model.layer1, model.layer2, model.layer3)) == 5
    assert 0 not in model.layer1.kept_blocks
    moved = renames(model)
    assert renamed("layer1.0.conv1", moved) is None and renamed("conv1", moved) == "conv1"
    last = model.layer1.kept_blocks[-1]  # a kept block's layers have its new position
    assert renamed(f"layer1.{last}.conv2", moved) == f"layer1.{len(model.layer1) - 1}.conv2"


def test_depth_pruned_resnet_reloads_and_exports(tmp_path):
    dense = with_identity_block()
    model, pruner = pruned_copy(dense, {"method": "depth", "sparsity": 0.3})  # 0.3 x 7 = 2.1: 2 blocks
    assert sum(len(s) for s in (model.layer1, model.layer2, model.layer3)) == 7 and 2 not in model.layer2.kept_blocks
    assert pruner.notes and all(n.startswith("depth: removed") for n in pruner.notes)
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(5))
    folder = save(tmp_path / "model", model)
    loaded, manifest = load_model(folder)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert manifest.depth == {p: {"kept": m.kept_blocks, "of": 3} for p, m in model.named_children() if hasattr(m, "kept_blocks")}
    rep = export_onnx(folder, tmp_path / "m.onnx", check_inputs=4, threads=1, min_run_time=0.05, compare_dense=False)
    assert rep["max_abs_diff"] < 1e-4


def test_depth_refuses_emptying_a_stage_and_models_without_blocks():
    assert [block_count(a, n) for a, n in ((0.5, 5), (0.5, 7), (0.25, 7), (0.07, 7), (0.3, 4))] == [3, 4, 2, 0, 1]  # half up
    with pytest.raises(PrunetuneError, match=r"prune.sparsity: 0.95 removes 7 of 7 removable blocks, which would empty "
                                             r"layer1; at most 6 can go \(0.857\), lower it"):
        prune_depth(resnet20(), 0.95, "cosine", images(), Logits)
    with pytest.raises(PrunetuneError, match="prune.sparsity: 0.05 removes none of the 7 removable blocks; raise it"):
        prune_depth(resnet20(), 0.05, "cosine", images(), Logits)
    with pytest.raises(PrunetuneError, match="prune.method: depth pruning needs repeated residual blocks .* TinyCNN has none"):
        pruned_copy(TinyCNN(3, SHAPE), {"method": "depth", "sparsity": 0.5})
    with pytest.raises(ValueError, match="with prune.method depth the fraction of blocks removed is prune.sparsity"):
        Recipe.model_validate({"prune": {"method": "depth", "depth": {"amount": 0.2}}})
    with pytest.raises(ValueError, match="prune.depth.amount: give the fraction"):
        Recipe.model_validate({"prune": {"method": "structured", "depth": {"importance": "skip_loss"}}})
    with pytest.raises(ValueError, match="prune.schedule.kind 'iterative' is not supported by prune.method 'depth'"):
        Recipe.model_validate({"prune": {"method": "depth", "schedule": {"kind": "iterative"}}})


def _text(n=4, length=10, vocab=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[0, length // 2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _hf_round_trip(tmp_path, model, info, x, removed: int, path: str):
    before = len(model.get_submodule(path))
    notes = prune_depth(model, removed / before, "cosine", [(x, None)], Logits)
    layers = model.get_submodule(path)
    assert len(layers) == before - removed and model.config.num_hidden_layers == before - removed and notes
    model.eval()
    folder = save_model(model, tmp_path / "model", info)
    loaded, manifest = load_model(folder)
    assert manifest.depth == {path: {"kept": layers.kept_blocks, "of": before}}
    assert loaded.config.num_hidden_layers == before - removed
    with torch.no_grad():
        assert torch.equal(loaded(**x).logits, model(**x).logits)
    return loaded


def test_bert_encoder_layers_removed_and_reloaded(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
                     max_position_embeddings=32, num_labels=2)
    model = BertForSequenceClassification(cfg).eval()
    info = {"task": "classification", "model": {"name": f"hf:{tmp_path / 'unused'}"}, "num_classes": 2,
            "class_names": ["neg", "pos"], "input_shape": [10], "preprocess": {"kind": "text", "tokenizer": ".", "max_length": 10}}
    _hf_round_trip(tmp_path, model, info, _text(), 2, "bert.encoder.layer")


KINDS = ["full_attention", "sliding_attention"] * 2


COMMON = {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 64,
          "max_position_embeddings": 32}
DECODERS = {  # config class kwargs, layer list, each layer's attention module
    "Llama": ({**COMMON, "num_key_value_heads": 2}, "model.layers", "self_attn"),
    # Qwen2: per-layer attention kinds (config.layer_types), which must follow the kept layers.
    "Qwen2": ({**COMMON, "num_key_value_heads": 2, "layer_types": KINDS, "use_sliding_window": True, "sliding_window": 4},
              "model.layers", "self_attn"),
    "GPT2": ({"vocab_size": 100, "n_embd": 32, "n_layer": 4, "n_head": 4, "n_positions": 32}, "transformer.h", "attn"),
    "GPTNeoX": (COMMON, "gpt_neox.layers", "attention"),
}


@pytest.mark.parametrize("arch", list(DECODERS))
def test_decoder_layers_removed_cache_slots_renumbered_and_reloaded(tmp_path, arch):
    import transformers

    torch.manual_seed(0)
    kwargs, path, attn = DECODERS[arch]
    cfg = getattr(transformers, f"{arch}Config")(**kwargs)
    head = "LMHeadModel" if arch == "GPT2" else "ForCausalLM"
    model = getattr(transformers, f"{arch}{head}")(cfg).eval()
    x = _text()
    info = {"task": "causal_lm", "model": {"name": f"hf:{tmp_path / 'unused'}"}, "num_classes": 0, "class_names": [],
            "input_shape": [10], "preprocess": {"kind": "text", "tokenizer": ".", "max_length": 10},
            "model_kwargs": {"head": "causal_lm"}}
    loaded = _hf_round_trip(tmp_path, model, info, x, 1, path)
    if arch == "Qwen2":
        assert loaded.config.layer_types == [KINDS[i] for i in loaded.get_submodule(path).kept_blocks]
    for m in (loaded, model):
        assert [getattr(layer, attn).layer_idx for layer in m.get_submodule(path)] == [0, 1, 2]
    # Generation with the KV cache: each kept layer writes its own slot (greedy, cached == uncached).
    ids = x["input_ids"][1:2, :4]
    with torch.no_grad():
        cached = model.generate(ids, max_new_tokens=4, do_sample=False, use_cache=True, pad_token_id=0)
        plain = model.generate(ids, max_new_tokens=4, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, plain)
