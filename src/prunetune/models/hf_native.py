"""Hugging Face-native model folders: the transformers config that builds a (pruned) model's exact shapes.

A structurally pruned transformers model loads with plain `AutoModelFor...from_pretrained(folder)`
when every layer keeps the same number of heads, key/value heads and FFN neurons *and* the model's
config can say so. The counts are read from the modules themselves (never from a pruning plan), so
whatever changed the shapes (heads, FFN neurons, or whole layers removed by depth pruning, whose
`num_hidden_layers` is the length of the layer list) flows into the config the same way:

- `layer_widths(model)`: per layer, query heads, key/value heads, head width and FFN width as found;
- `native_config(model)`: a copy of `model.config` with those counts (`num_attention_heads`,
  `num_key_value_heads`, `head_dim`, `intermediate_size` / GPT-2's `n_inner`, `num_hidden_layers`),
  checked by building the model from it on the meta device and comparing every tensor's shape; or
  None and the reason (per-layer widths differ, or the architecture cannot express them).

What transformers 5 can express at an unchanged hidden size: Llama, Qwen, Mistral (`head_dim` is a
config field) any uniform heads, key/value groups and FFN width; BERT, GPT-2 and GPT-NeoX derive the
head width from `hidden_size / num_attention_heads`, so fewer heads there means wider heads, never the
pruned model: for those only FFN-only pruning (`prune.head_sparsity: 0`) gives a native folder.

Example:
    >>> # config, why = native_config(pruned)   # (LlamaConfig(num_attention_heads=2, head_dim=16, ...), "")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import re
from typing import Any

import torch
from torch import nn

from ..pruning.decoder import Block, decoder_blocks
from .hf import attention_modules

TRANSFORMERS = "transformers"
PRUNETUNE = "prunetune"
HOW = {TRANSFORMERS: "loads with transformers from_pretrained",
       PRUNETUNE: "loads through prunetune.artifacts.load_model"}
_LAYER = re.compile(r"^(.*?)\.(\d+)(?:\.|$)")  # "model.layers.3.self_attn" -> ("model.layers", "3")
_FFN_FIELDS = ("intermediate_size", "n_inner")  # the config field of the FFN width (GPT-2: n_inner)
_LABELS = {"heads": "attention heads", "kv_heads": "key/value heads", "head_dim": "head widths", "ffn": "FFN widths"}


def _layer_of(name: str) -> tuple[str, int] | None:
    m = _LAYER.match(name)
    return (m.group(1), int(m.group(2))) if m else None


def _decoder_heads(b: Block) -> dict[str, int]:
    d = getattr(b.owner, "head_dim", None) or b.owner.head_size
    heads = b.members[-1].width * b.units // d  # the output projection's inputs: every query head
    kv = b.units if len(b.members) == 4 else heads  # q/k/v/o layout: one key/value head per unit
    return {"heads": heads, "kv_heads": kv, "head_dim": d}


def layer_widths(model: nn.Module) -> tuple[str | None, list[dict[str, int]]]:
    """(the layer list's module name, per layer in order: what its modules hold) of a transformers model.

    Each row may have `heads`, `kv_heads`, `head_dim` (attention) and `ffn` (MLP / intermediate width)."""
    rows: dict[tuple[str, int], dict[str, int]] = {}
    for b in decoder_blocks(model):
        key = _layer_of(b.name)
        if key is not None:
            rows.setdefault(key, {}).update(_decoder_heads(b) if b.kind == "heads" else {"ffn": b.units})
    for name, a in attention_modules(model).items():  # BERT-style encoders
        key = _layer_of(name)
        if key is not None:
            q = a.query.out_features // a.attention_head_size
            rows.setdefault(key, {}).update(heads=q, kv_heads=q, head_dim=a.attention_head_size)
    for name, m in model.named_modules():
        key = _layer_of(name)
        if key is not None and name.endswith("intermediate.dense") and isinstance(m, nn.Linear):
            rows.setdefault(key, {})["ffn"] = m.out_features
    lists = {k[0] for k in rows}
    return (next(iter(lists)) if len(lists) == 1 else None), [rows[k] for k in sorted(rows)]


def uniformity_problem(model: nn.Module) -> str:
    """'' when every layer has the same counts, else what differs, e.g. 'FFN widths differ: 32, 64'."""
    _, rows = layer_widths(model)
    for key, label in _LABELS.items():
        values = sorted({r[key] for r in rows if key in r})
        if len(values) > 1 or (values and any(key not in r for r in rows)):
            return f"per-layer {label} differ: {', '.join(map(str, values))}"
    return ""


def with_counts(config: Any, counts: dict[str, int], layers: int | None) -> Any:
    """A copy of `config` with the head / FFN counts of `counts` (a `layer_widths` row) and `layers` layers."""
    new = copy.deepcopy(config)
    if "heads" in counts:
        new.num_attention_heads = counts["heads"]
        if hasattr(new, "num_key_value_heads"):
            new.num_key_value_heads = counts["kv_heads"]
        # Llama / Qwen / Mistral read `head_dim` (some configs lack the field but the model reads it): without it
        # the width is hidden_size / heads, the wrong one once heads were removed.
        if hasattr(new, "head_dim") or counts["heads"] * counts["head_dim"] != getattr(new, "hidden_size", None):
            new.head_dim = counts["head_dim"]
    if "ffn" in counts:
        field = next((f for f in _FFN_FIELDS if hasattr(new, f)), None)
        if field:
            setattr(new, field, counts["ffn"])
    if layers is not None:
        new.num_hidden_layers = layers
        kinds = getattr(new, "layer_types", None)  # per-layer attention kinds (Qwen2, Gemma, ...): one per layer
        if isinstance(kinds, list) and len(kinds) != layers and len(set(kinds)) == 1:
            new.layer_types = kinds[:1] * layers  # all alike: which layers went does not matter
    return new


def _build_problem(model: nn.Module, config: Any) -> str:
    """'' when transformers builds `type(model)` from `config` with exactly `model`'s tensors and shapes."""
    kind = type(model).__name__
    try:
        with torch.device("meta"):  # shapes only: nothing allocated
            ref = type(model)(config)
    except Exception as e:  # noqa: BLE001 - a probe: whatever stops the build means "cannot express"
        return f"transformers cannot build {kind} from such a config ({(str(e).splitlines() or [''])[0][:120]})"
    want = {k: list(v.shape) for k, v in ref.state_dict().items()}
    have = {k: list(v.shape) for k, v in model.state_dict().items()}
    if set(want) != set(have):
        diff = sorted(set(want) ^ set(have))[:2]
        return f"{kind} built from its config has other tensors ({', '.join(diff)})"
    bad = [k for k in have if have[k] != want[k]]
    if bad:
        return f"{kind}'s config cannot express {bad[0]} {have[bad[0]]} (it builds {want[bad[0]]})"
    return ""


def native_config(model: nn.Module) -> tuple[Any | None, str]:
    """(the config that builds `model` exactly, '') or (None, why not). See the module docstring."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "save_pretrained"):
        return None, "not a transformers model"
    why = uniformity_problem(model)
    if why:
        return None, why
    where, rows = layer_widths(model)
    layer_list = model.get_submodule(where) if where else None
    layers = len(layer_list) if isinstance(layer_list, nn.ModuleList) else None
    new = with_counts(config, rows[0] if rows else {}, layers)
    why = _build_problem(model, new)
    return (None, why) if why else (new, "")


def fewer_heads_problem(model: nn.Module, ratio: float) -> str:
    """'' when `model`'s config can express the heads left after removing `ratio` of each layer's heads (in
    whole key/value groups) at the same hidden size, else why not (BERT, GPT-2 and GPT-NeoX tie the head
    width to hidden_size / heads)."""
    config = getattr(model, "config", None)
    _, rows = layer_widths(model)
    row = next((r for r in rows if "heads" in r), None)
    if config is None or row is None:
        return ""
    units = row["kv_heads"]  # key/value groups (every head when there is no grouping)
    group = row["heads"] // units
    kept = max(1, round(units * (1 - ratio)))
    if kept >= units:
        return ""
    fewer = {**row, "heads": kept * group, "kv_heads": kept}
    try:
        with torch.device("meta"):  # shapes only
            ref = type(model)(with_counts(config, fewer, None))
    except Exception:  # noqa: BLE001 - a probe: whatever stops the build means "cannot express"
        ref = None
    got = layer_widths(ref)[1] if ref is not None else []
    if got and all(r.get("heads") == fewer["heads"] and r.get("head_dim") == fewer["head_dim"] for r in got):
        return ""
    return (f"transformers' {type(model).__name__} takes its head width from hidden_size / num_attention_heads, so "
            f"its config cannot express {fewer['heads']} heads of width {row['head_dim']}")
