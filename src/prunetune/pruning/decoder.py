"""Structured pruning of decoder language models: whole attention heads and MLP neurons removed.

Torch-Pruning's dependency graph does not know transformers' `Conv1D` (GPT-2) nor the head layout of
fused projections, so decoders are pruned here, block by block, with the layouts written out:

- GPT-2: `attn.c_attn` (Conv1D, q | k | v stacked along its outputs) and `attn.c_proj`; `mlp.c_fc` / `mlp.c_proj`.
- Llama, Qwen, Mistral (separate `q_proj k_proj v_proj o_proj`, grouped-query attention included):
  the unit is a key/value group (one k/v head and the query heads that share it), so every layer
  keeps `num_key_value_groups`; MLP `gate_proj up_proj down_proj`.
- GPT-NeoX / Pythia: `query_key_value` (per head [q k v] contiguous) and `dense`; `dense_h_to_4h` / `dense_4h_to_h`.

A unit's score is the sum of the importance scores of every weight it owns (the rows of q/k/v and
the columns of the output projection; the up/gate rows and down column of a neuron), so any
registered importance works, `wanda` (|w| x input norm) included. The hidden size (embeddings,
norms, the residual stream and the LM head) is never changed. Each layer keeps at least one head.
Widths may differ per layer, which a transformers config cannot express: `sync_decoder` restores
each module's head counts from its tensors (after pruning, and when a saved model is rebuilt).
`prune.uniform` keeps them equal (whole key/value groups), so the config can (`models/hf_native.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..errors import PrunetuneError
from .hf_conv1d import is_hf_conv1d
from .layers import sync_attributes


@dataclass
class Member:
    """One projection of a block: unit u owns positions `p * n * width + u * width + [0, width)` (p < parts)
    along the layer's outputs (`out`) or inputs."""

    name: str
    module: nn.Module
    out: bool
    width: int
    parts: int = 1

    @property
    def dim(self) -> int:
        """The weight dimension the units run along (Conv1D stores [in, out], nn.Linear [out, in])."""
        conv = is_hf_conv1d(self.module)
        return (1 if conv else 0) if self.out else (0 if conv else 1)

    def positions(self, units: list[int], n: int) -> torch.Tensor:
        """Positions of `units` (of `n`), part-major: the layout the kept units have after slicing."""
        w = self.width
        idx = [p * n * w + u * w + torch.arange(w) for p in range(self.parts) for u in units]
        return torch.cat(idx) if idx else torch.zeros(0, dtype=torch.long)


@dataclass
class Block:
    kind: str  # "heads" or "neurons"
    name: str
    owner: nn.Module
    members: list[Member]
    sync: Callable[[nn.Module], None]

    @property
    def units(self) -> int:
        m = self.members[0]
        return int(m.module.weight.shape[m.dim]) // (m.width * m.parts)


def _lin(m: nn.Module | None) -> bool:
    return isinstance(m, nn.Linear)


def _set_if(owner: nn.Module, **values: int) -> None:
    for k, v in values.items():
        if hasattr(owner, k):
            setattr(owner, k, v)


def _sync_gpt2_attn(m: nn.Module) -> None:
    k = int(m.c_attn.weight.shape[1]) // (3 * m.head_dim)
    m.num_heads, m.split_size = k, k * m.head_dim


def _sync_qkvo(m: nn.Module) -> None:
    nq, nkv = m.q_proj.out_features // m.head_dim, m.k_proj.out_features // m.head_dim
    _set_if(m, num_heads=nq, num_attention_heads=nq, num_key_value_heads=nkv)


def _sync_neox(m: nn.Module) -> None:
    _set_if(m, num_attention_heads=m.query_key_value.out_features // (3 * m.head_size))


def _sync_mlp(m: nn.Module) -> None:
    first = next(p for p in ("up_proj", "c_fc", "dense_h_to_4h") if hasattr(m, p))
    mod = getattr(m, first)
    _set_if(m, intermediate_size=int(mod.weight.shape[1] if is_hf_conv1d(mod) else mod.weight.shape[0]))


def decoder_blocks(model: nn.Module) -> list[Block]:
    """Every attention and MLP block of a known decoder layout, in model order."""
    blocks: list[Block] = []
    for name, m in model.named_modules():
        get = lambda a: getattr(m, a, None)  # noqa: E731
        if is_hf_conv1d(get("c_attn")) and is_hf_conv1d(get("c_proj")) and isinstance(get("head_dim"), int):
            if getattr(m, "is_cross_attention", False):
                continue
            d = m.head_dim
            blocks.append(Block("heads", name, m, [Member(f"{name}.c_attn", m.c_attn, True, d, 3),
                                                   Member(f"{name}.c_proj", m.c_proj, False, d)], _sync_gpt2_attn))
        elif is_hf_conv1d(get("c_fc")) and is_hf_conv1d(get("c_proj")):
            blocks.append(Block("neurons", name, m, [Member(f"{name}.c_fc", m.c_fc, True, 1),
                                                     Member(f"{name}.c_proj", m.c_proj, False, 1)], _sync_mlp))
        elif all(_lin(get(p)) for p in ("q_proj", "k_proj", "v_proj", "o_proj")) and isinstance(get("head_dim"), int):
            d = m.head_dim
            nq, nkv = m.q_proj.out_features // d, m.k_proj.out_features // d
            if nkv < 1 or nq % nkv or m.v_proj.out_features != nkv * d:
                continue
            g = nq // nkv
            blocks.append(Block("heads", name, m, [
                Member(f"{name}.q_proj", m.q_proj, True, g * d), Member(f"{name}.k_proj", m.k_proj, True, d),
                Member(f"{name}.v_proj", m.v_proj, True, d), Member(f"{name}.o_proj", m.o_proj, False, g * d)], _sync_qkvo))
        elif _lin(get("query_key_value")) and _lin(get("dense")) and isinstance(get("head_size"), int):
            d = m.head_size
            blocks.append(Block("heads", name, m, [Member(f"{name}.query_key_value", m.query_key_value, True, 3 * d),
                                                   Member(f"{name}.dense", m.dense, False, d)], _sync_neox))
        elif all(_lin(get(p)) for p in ("up_proj", "down_proj")):
            members = [Member(f"{name}.{p}", getattr(m, p), True, 1) for p in ("gate_proj", "up_proj") if _lin(get(p))]
            blocks.append(Block("neurons", name, m, members + [Member(f"{name}.down_proj", m.down_proj, False, 1)], _sync_mlp))
        elif _lin(get("dense_h_to_4h")) and _lin(get("dense_4h_to_h")):
            blocks.append(Block("neurons", name, m, [Member(f"{name}.dense_h_to_4h", m.dense_h_to_4h, True, 1),
                                                     Member(f"{name}.dense_4h_to_h", m.dense_4h_to_h, False, 1)], _sync_mlp))
    return blocks


def is_causal_lm(model: nn.Module) -> bool:
    return type(model).__name__.endswith(("ForCausalLM", "LMHeadModel"))


def sync_decoder(model: nn.Module) -> None:
    """Restore head counts and widths of every decoder block from its tensors."""
    for b in decoder_blocks(model):
        for m in b.members:
            sync_attributes(m.module)
        b.sync(b.owner)


def head_counts(model: nn.Module) -> dict[str, int]:
    """Attention units (heads; key/value groups for grouped-query attention) per attention block."""
    return {b.name: b.units for b in decoder_blocks(model) if b.kind == "heads"}


def mlp_widths(model: nn.Module) -> dict[str, int]:
    return {b.name: b.units for b in decoder_blocks(model) if b.kind == "neurons"}


class DecoderPruner:
    """Physically removes heads (`prune.head_sparsity`, default `prune.sparsity`) and MLP neurons
    (`prune.sparsity`) from a decoder's blocks, per layer or ranked globally (`prune.scope`)."""

    def __init__(self, spec, importance, targets: list[str], notes: list[str]) -> None:
        self.spec, self.importance, self.targets, self.notes = spec, importance, set(targets), notes

    def setup(self, model: nn.Module, sparsities: list[float]) -> None:
        blocks = decoder_blocks(model)
        if not blocks:
            raise PrunetuneError(
                f"prune.method: structured pruning of {type(model).__name__} is not supported (known decoder layouts: "
                "GPT-2, Llama / Qwen / Mistral, GPT-NeoX / Pythia); use prune.method unstructured or nm")
        chosen = [b for b in blocks if all(m.name in self.targets for m in b.members)]
        for b in blocks:
            picked = [m.name for m in b.members if m.name in self.targets]
            if picked and b not in chosen:
                self.notes.append(f"{b.name}: only {', '.join(picked)} selected; structured pruning removes whole "
                                  f"{b.kind} across all of its projections, so it was left whole")
        if not chosen:
            raise PrunetuneError(
                "prune.include/exclude: structured pruning of a language model removes whole attention heads and MLP "
                "neurons; select every projection of at least one block (e.g. include ['*attn*'] or ['*mlp*'])")
        self.names = [b.name for b in chosen]
        self.original = {b.name: b.units for b in chosen}
        self.final = sparsities[-1]
        self.head_ratio = self.final if self.spec.head_sparsity is None else self.spec.head_sparsity
        if self.spec.scope == "layer":
            for b in chosen:
                if b.kind == "heads" and round(b.units * (1 - self.head_ratio)) < 1:
                    raise PrunetuneError(f"prune.head_sparsity: {self.head_ratio} removes every one of the {b.units} "
                                         f"heads of {b.name}; lower it")
        if getattr(self.spec, "uniform", False):
            self._check_uniform(blocks, chosen)
        gqa = [b for b in chosen if b.members[0].name.endswith(".q_proj") and b.members[0].width > b.members[1].width]
        if gqa:
            g = gqa[0].members[0].width // gqa[0].members[1].width
            self.notes.append(f"grouped-query attention: heads are removed in key/value groups (one k/v head and its "
                              f"{g} query heads; {gqa[0].units} groups in {gqa[0].name})")

    def _check_uniform(self, blocks: list[Block], chosen: list[Block]) -> None:
        """`prune.uniform`: every layer's block of a kind is pruned or none is, and grouped-query heads go in
        whole key/value groups (num_attention_heads / num_key_value_heads stays an integer in every layer)."""
        for kind in ("heads", "neurons"):
            every = [b for b in blocks if b.kind == kind]
            picked = {b.name for b in chosen if b.kind == kind}
            if picked and len(picked) < len(every):
                left = next(b.name for b in every if b.name not in picked)
                raise PrunetuneError(f"prune.uniform: prune.include/exclude select the {kind} of {len(picked)} of "
                                     f"{len(every)} layers ({left} is left whole), so widths would differ per layer; "
                                     "select the same projections in every layer, or drop prune.uniform")
        field = "prune.head_sparsity" if self.spec.head_sparsity is not None else "prune.sparsity (also the head amount)"
        for b in chosen:
            q, k = b.members[0], b.members[1]
            if b.kind != "heads" or not q.name.endswith(".q_proj") or q.width == k.width or self.head_ratio <= 0:
                continue
            n, g = b.units, q.width // k.width
            kept = n * (1 - self.head_ratio)
            if abs(kept - round(kept)) > 1e-6:
                ok = [f"{i / n:g}" for i in range(1, n)] or ["0"]
                raise PrunetuneError(
                    f"{field}: {self.head_ratio:g} removes {self.head_ratio * n * g:g} of the {n * g} query heads of {b.name}, "
                    f"but grouped-query attention removes whole key/value groups ({n} groups of {g} query heads, "
                    f"so num_attention_heads / num_key_value_heads stays an integer); use one of {', '.join(ok[:6])}")
            return  # every layer has the same layout

    def _scores(self, b: Block) -> torch.Tensor:
        n = b.units
        total = torch.zeros(n, dtype=torch.float64)
        for m in b.members:
            w = m.module.weight
            s = self.importance.module_scores(m.module, w.detach(), w.grad).double().cpu()
            per = s.sum(dim=1 - m.dim)  # one score per position along the unit dimension
            total += per.view(m.parts, n, m.width).sum(dim=(0, 2))
        return total

    def _keep_counts(self, blocks: list[Block], scores: dict[str, torch.Tensor], kind: str, ratio: float) -> dict[str, int]:
        if self.spec.scope == "layer":
            out = {}
            for b in blocks:
                keep = max(1, int(round(self.original[b.name] * (1 - ratio))))
                r = self.spec.round_to if kind == "neurons" else None
                if r:
                    keep = max(r, int(round(keep / r)) * r)
                out[b.name] = min(b.units, keep)
            return out
        # Global: the lowest-scoring units of all selected blocks go first; each block keeps >= 5% (>= 1).
        budget = int(round(sum(self.original[b.name] for b in blocks) * (1 - ratio)))
        floor = {b.name: min(b.units, max(1, math.ceil(0.05 * self.original[b.name]))) for b in blocks}
        keep = dict(floor)
        rest = []
        for b in blocks:
            order = torch.argsort(scores[b.name], descending=True, stable=True)
            rest += [(float(scores[b.name][int(u)]), b.name) for u in order[floor[b.name]:]]
        rest.sort(key=lambda t: -t[0])
        for _, name in rest[: max(0, budget - sum(floor.values()))]:
            keep[name] += 1
        return {b.name: min(b.units, keep[b.name]) for b in blocks}

    @torch.no_grad()
    def _slice(self, b: Block, kept: list[int]) -> None:
        n = b.units
        for m in b.members:
            idx = m.positions(kept, n).to(m.module.weight.device)
            old = m.module.weight
            m.module.weight = nn.Parameter(old.detach().index_select(m.dim, idx).contiguous(), requires_grad=old.requires_grad)
            bias = getattr(m.module, "bias", None)
            if m.out and bias is not None:
                m.module.bias = nn.Parameter(bias.detach().index_select(0, idx).contiguous(), requires_grad=bias.requires_grad)
            sync_attributes(m.module)
        b.sync(b.owner)

    def prune_to(self, model: nn.Module, sparsity: float) -> bool:
        current = {b.name: b for b in decoder_blocks(model)}
        missing = [n for n in self.names if n not in current]
        if missing:
            raise PrunetuneError(f"prune: block {missing[0]} is no longer in the model; structured pruning of a "
                                 "language model cannot follow modules added by fine-tuning")
        head_ratio = self.head_ratio * sparsity / self.final if self.final else 0.0
        changed = False
        for kind, ratio in (("heads", head_ratio), ("neurons", sparsity)):
            blocks = [current[n] for n in self.names if current[n].kind == kind]
            if not blocks or ratio <= 0:
                continue
            scores = {b.name: self._scores(b) for b in blocks}
            keep = self._keep_counts(blocks, scores, kind, ratio)
            for b in blocks:
                k = keep[b.name]
                if k < b.units:
                    kept = sorted(int(u) for u in torch.topk(scores[b.name], k).indices)
                    self._slice(b, kept)
                    changed = True
        return changed
