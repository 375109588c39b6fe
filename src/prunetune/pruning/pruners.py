"""How to prune: masks (unstructured, N:M) or physical removal of channels (Torch-Pruning).

A pruner is set up once with every sparsity the schedule will ask for, then `prune_to` is
called with each in turn. Masked pruners leave parametrizations on the model (see masks.py);
the structured pruner shrinks tensors in place.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import PrunetuneError
from ..registry import PRUNERS
from .importance import Importance
from .layers import layer_type_of, prunable_layers
from .masks import attach_mask, get_mask


class Pruner:
    schedules: tuple[str, ...] = ("oneshot", "iterative", "gradual", "adaptive")
    masked = True

    def __init__(self, spec, importance: Importance, targets: list[str]) -> None:
        self.spec = spec
        self.importance = importance
        self.targets = targets
        self.notes: list[str] = []

    def setup(self, model: nn.Module, example_inputs: Any, sparsities: list[float]) -> None:
        raise NotImplementedError

    def prune_to(self, model: nn.Module, sparsity: float) -> bool:
        """Prune to `sparsity`; return True when parameters were replaced (optimizer must be rebuilt)."""
        raise NotImplementedError


def _modules(model: nn.Module, names: list[str]) -> list[tuple[str, nn.Module]]:
    d = dict(model.named_modules())
    # A layer wrapped by peft (LoRA, IA3) keeps its weight in `base_layer`.
    return [(n, getattr(d[n], "base_layer", d[n])) for n in names]


def _original(mod: nn.Module) -> nn.Parameter:
    return mod.parametrizations.weight.original


class _MaskPruner(Pruner):
    def setup(self, model, example_inputs, sparsities):
        for _, mod in _modules(model, self.targets):
            attach_mask(mod)

    def _scores(self, mod: nn.Module) -> torch.Tensor:
        orig = _original(mod)
        mask = get_mask(mod).mask
        s = self.importance.scores(orig * mask, orig.grad).float().cpu()
        # Pruning is monotone: what is already masked stays masked.
        return s.masked_fill(~mask.cpu(), float("-inf"))


@PRUNERS.register("unstructured")
class Unstructured(_MaskPruner):
    """Weight masks, ranked per layer or globally (`prune.scope`)."""

    @torch.no_grad()
    def prune_to(self, model, sparsity):
        mods = _modules(model, self.targets)
        scores = [self._scores(m) for _, m in mods]
        if self.spec.scope == "global":
            flat = torch.cat([s.flatten() for s in scores])
            k = int(round(sparsity * flat.numel()))
            drop = torch.zeros(flat.numel(), dtype=torch.bool)
            drop[torch.argsort(flat, stable=True)[:k]] = True
            chunks = drop.split([s.numel() for s in scores])
        else:
            chunks = []
            for s in scores:
                k = int(round(sparsity * s.numel()))
                d = torch.zeros(s.numel(), dtype=torch.bool)
                d[torch.argsort(s.flatten(), stable=True)[:k]] = True
                chunks.append(d)
        for (_, mod), d in zip(mods, chunks):
            mask = get_mask(mod).mask
            mask.copy_((~d).view_as(mask).to(mask.device))
        return False


@PRUNERS.register("nm")
class NM(_MaskPruner):
    """N:M semi-structured masks: keep the N best of every M consecutive input weights."""

    schedules = ("oneshot",)

    def setup(self, model, example_inputs, sparsities):
        m = self.spec.m
        usable = []
        for name, mod in _modules(model, self.targets):
            rows = layer_type_of(mod).to_rows(mod.weight)
            if rows.shape[1] % m:
                self.notes.append(f"{name}: {rows.shape[1]} inputs not divisible by M={m}; left dense")
            else:
                usable.append(name)
        if not usable:
            raise PrunetuneError(
                f"prune.m: no selected layer has an input size divisible by M={m}; choose another M or other layers"
            )
        self.targets = usable
        super().setup(model, example_inputs, sparsities)

    @torch.no_grad()
    def prune_to(self, model, sparsity):
        n, m = self.spec.n, self.spec.m
        for _, mod in _modules(model, self.targets):
            lt = layer_type_of(mod)
            mask = get_mask(mod).mask
            rows = lt.to_rows(self._scores(mod))
            groups = rows.reshape(rows.shape[0], -1, m)
            keep = torch.zeros_like(groups, dtype=torch.bool)
            keep.scatter_(2, groups.topk(n, dim=2).indices, True)
            new = lt.from_rows(keep.reshape(rows.shape).float(), mask.shape).bool()
            mask.copy_(new.to(mask.device) & mask)
        return False


@PRUNERS.register("structured")
class Structured(Pruner):
    """Remove whole conv filters / linear neurons through Torch-Pruning's dependency graph."""

    masked = False

    def setup(self, model, example_inputs, sparsities):
        import torch_pruning as tp

        from ..models.hf import attention_modules

        ignored = [m for n, m in prunable_layers(model) if n not in self.targets]
        steps = list(sparsities)
        final = steps[-1]
        heads: dict[nn.Module, int] = {}
        head_ratio = 0.0
        attn = {n: a for n, a in attention_modules(model).items()
                if any(f"{n}.{p}" in self.targets for p in ("query", "key", "value"))}
        if attn:
            # Transformer: remove whole heads (q/k/v rows and the output projection's columns) and FFN
            # neurons; the hidden size (residual stream, embeddings included) is kept.
            head_ratio = final if self.spec.head_sparsity is None else self.spec.head_sparsity
            for n, a in attn.items():
                count = a.query.out_features // a.attention_head_size
                if round(count * (1 - head_ratio)) < 1 and self.spec.scope == "layer":
                    raise PrunetuneError(
                        f"prune.head_sparsity: {head_ratio} removes every one of the {count} heads of {n}; lower it"
                    )
                for p in ("query", "key", "value"):
                    heads[getattr(a, p)] = count
            ignored += _hidden_size_owners(model)
        self._tp = tp.pruner.BasePruner(
            model,
            example_inputs,
            importance=self.importance.structured(),
            pruning_ratio=final,
            iterative_steps=len(steps),
            # The schedule's sparsities, scaled for heads (whose final ratio may differ).
            iterative_pruning_ratio_scheduler=lambda ratio, n: [0.0] + [ratio * s / final if final else 0.0 for s in steps],
            ignored_layers=ignored,
            global_pruning=self.spec.scope == "global",
            max_pruning_ratio=0.95,
            round_to=self.spec.round_to,
            forward_fn=self._forward_fn,
            num_heads=heads,
            prune_num_heads=bool(heads),
            prune_head_dims=False,
            head_pruning_ratio=head_ratio,
        )
        self._attn = list(attn.values())

    @staticmethod
    def _forward_fn(model, inputs):
        out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
        return getattr(out, "logits", out)

    def prune_to(self, model, sparsity):
        from ..models.hf import sync_attention

        self._tp.step()
        for a in self._attn:
            sync_attention(a)
        return True


def _hidden_size_owners(model: nn.Module) -> list[nn.Module]:
    """Modules whose pruning would shrink a transformer's hidden size: embeddings and pooler."""
    return [m for n, m in model.named_modules() if n.endswith(("embeddings", "pooler"))]
