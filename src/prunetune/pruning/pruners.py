"""How to prune: masks (unstructured, N:M) or physical removal of channels (Torch-Pruning).

A pruner is set up once with every sparsity the schedule will ask for, then `prune_to` is
called with each in turn. Masked pruners leave parametrizations on the model (see masks.py);
the structured pruner shrinks tensors in place. `state_dict()` / `load_state_dict()` carry what a
pruner keeps between steps (a resumed run's pruner continues where the checkpointed one was).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import PrunetuneError
from ..models.hf import attention_modules, sync_attention
from ..models.hf_native import fewer_heads_problem, layer_widths, uniformity_problem
from ..registry import PRUNERS
from .decoder import DecoderPruner, decoder_blocks, is_causal_lm
from .depth import Calibration, check_depth, prune_depth
from .importance import Importance
from .layers import layer_type_of, prunable_layers
from .layerwise import Target, check_layer
from .masks import WeightMask, attach_mask, get_mask
from .sequence import structured_options
from .targets import layer_amounts


class Pruner:
    schedules: tuple[str, ...] = ("oneshot", "iterative", "gradual", "adaptive")
    masked = True
    # What prune.importance / prune.scope default to with this method (benchmarks/results/peer_glue.md).
    default_importance = "l2"
    default_scope = "layer"
    # Model family (models.hf.model_family) -> (importance, scope, evidence) where that family's best
    # known setting differs from the two above; `prunetune list`, the README and tests/test_examples.py read it.
    family_defaults: dict[str, tuple[str, str, str]] = {}
    per_layer_amounts = False  # supports prune.layer_sparsity

    def __init__(self, spec, importance: Importance, targets: list[str]) -> None:
        self.spec = spec
        self.importance = importance
        self.targets = targets
        self.notes: list[str] = []
        self.steps_done = 0  # pruning steps taken (counted by the controller)
        self.grown = 0  # the dynamic schedule: pruned weights its drop-and-grow steps grew back (counted by the controller)
        # prune.layer_sparsity resolved: target layer -> its own final amount (the others follow the schedule).
        self.amounts = layer_amounts(targets, getattr(spec, "layer_sparsity", None) or {})
        self.final = 0.0  # the schedule's last sparsity (set by `setup`)

    @classmethod
    def defaults_for(cls, family: str | None = None) -> tuple[str, str]:
        """(importance, scope) that prune.importance / prune.scope default to for a model of `family`."""
        imp, scope, _ = cls.family_defaults.get(family or "", (cls.default_importance, cls.default_scope, ""))
        return imp, scope

    def layer_amount(self, name: str, sparsity: float) -> float:
        """What layer `name` is pruned to when the schedule asks for `sparsity`: its own amount scaled
        as the schedule scales the global one (sparsity / final; its whole amount when the global
        sparsity is 0), or `sparsity` itself for a layer without one."""
        a = self.amounts.get(name)
        if a is None:
            return sparsity
        return a * sparsity / self.final if self.final else a

    def state_dict(self) -> dict[str, Any]:
        """What the pruner keeps between steps, JSON-able (masks live in the model's state)."""
        return {"steps_done": self.steps_done, "grown": self.grown}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after the steps of `state` (a `state_dict()`); call after `setup`, before the
        model is given its checkpointed shapes and weights."""
        self.steps_done, self.grown = int(state["steps_done"]), int(state.get("grown", 0))

    def setup(self, model: nn.Module, example_inputs: Any, sparsities: list[float]) -> None:
        raise NotImplementedError

    def prune_to(self, model: nn.Module, sparsity: float) -> bool:
        """Prune to `sparsity`; return True when parameters were replaced (optimizer must be rebuilt)."""
        raise NotImplementedError


def target_modules(model: nn.Module, names: list[str]) -> list[tuple[str, nn.Module]]:
    d = dict(model.named_modules())
    # A layer wrapped by peft (LoRA, IA3) keeps its weight in `base_layer`.
    return [(n, getattr(d[n], "base_layer", d[n])) for n in names]


def _original(mod: nn.Module, tensor: str = "weight") -> nn.Parameter:
    return mod.parametrizations[tensor].original


def _tensors(model: nn.Module, names: list[str]) -> list[tuple[str, nn.Module, str]]:
    """(layer, module, tensor) for every prunable tensor of the named layers (one per LSTM / GRU gate matrix)."""
    return [(n, mod, t) for n, mod in target_modules(model, names) for t in layer_type_of(mod).tensors(mod)]


class _MaskPruner(Pruner):
    def _check_reconstructable(self, model: nn.Module) -> None:
        if getattr(self.importance, "reconstructs", False):
            for name, mod in target_modules(model, self.targets):
                check_layer(name, mod)

    def setup(self, model, example_inputs, sparsities):
        self._check_reconstructable(model)
        self.final = sparsities[-1]
        for _, mod, t in _tensors(model, self.targets):
            attach_mask(mod, t)

    def weights_and_masks(self, model: nn.Module) -> list[tuple[torch.Tensor, WeightMask]]:
        """(original, mask parametrization) of every pruned tensor."""
        return [(_original(mod, t), get_mask(mod, t)) for _, mod, t in _tensors(model, self.targets)]

    def _scores(self, mod: nn.Module, tensor: str = "weight") -> torch.Tensor:
        orig = _original(mod, tensor)
        mask = get_mask(mod, tensor).mask
        s = self.importance.module_scores(mod, orig * mask, orig.grad).float().cpu()
        # Pruning is monotone: what is already masked stays masked.
        return s.masked_fill(~mask.cpu(), float("-inf"))

    def reconstruction_plan(self, model: nn.Module, sparsity: float) -> dict[str, tuple[nn.Module, Target]]:
        """{layer: (module, what it is pruned to)} for an importance that reconstructs weights (sparsegpt)."""
        raise NotImplementedError


def _set_dropped(mod: nn.Module, t: str, drop: torch.Tensor) -> None:
    """Mask the entries `drop` (flat, bool) of `mod`'s tensor `t`."""
    mask = get_mask(mod, t).mask
    mask.copy_((~drop).view_as(mask).to(mask.device))


@PRUNERS.register("unstructured")
class Unstructured(_MaskPruner):
    """Weight masks, ranked per layer or globally (`prune.scope`); per-layer amounts (`prune.layer_sparsity`)."""

    per_layer_amounts = True
    schedules = Pruner.schedules + ("dynamic",)

    # LAMP ranks all layers together with layer-adaptive scores (each layer's largest weight scores 1,
    # so no small layer is emptied): at 95 / 98 % it lost 0.22 / 0.83 pt where global L1 lost 0.57 /
    # 1.33 (benchmarks/results/fashion_mnist.md).
    default_importance = "lamp"
    default_scope = "global"

    @torch.no_grad()
    def prune_to(self, model, sparsity):
        # Every tensor is ranked on its own with scope `layer` (each LSTM / GRU gate matrix reaches the sparsity).
        mods = _tensors(model, self.targets)
        if self.spec.scope != "global":  # one tensor's scores at a time (all of a 336 M decoder's: 1.0x its fp32 size)
            for name, mod, t in mods:
                s = self._scores(mod, t).flatten()
                drop = torch.zeros(s.numel(), dtype=torch.bool)
                drop[torch.argsort(s, stable=True)[:int(round(self.layer_amount(name, sparsity) * s.numel()))]] = True
                _set_dropped(mod, t, drop)
            return False
        scores = [self._scores(m, t) for _, m, t in mods]
        flat = torch.cat([s.flatten() for s in scores])
        drop = torch.zeros(flat.numel(), dtype=torch.bool)
        drop[torch.argsort(flat, stable=True)[:int(round(sparsity * flat.numel()))]] = True
        for (_, mod, t), d in zip(mods, drop.split([s.numel() for s in scores])):
            _set_dropped(mod, t, d)
        return False

    def reconstruction_plan(self, model, sparsity):
        return {name: (mod, Target(amount=self.layer_amount(name, sparsity))) for name, mod in target_modules(model, self.targets)}


@PRUNERS.register("nm")
class NM(_MaskPruner):
    """N:M semi-structured masks: keep the N best of every M consecutive input weights."""

    schedules = ("oneshot",)

    def setup(self, model, example_inputs, sparsities):
        self._check_reconstructable(model)
        m = self.spec.m
        usable = []
        for name, mod, t in _tensors(model, self.targets):
            rows = layer_type_of(mod).to_rows(getattr(mod, t))
            where = name if t == "weight" else f"{name}.{t}"
            if rows.shape[1] % m and getattr(self.importance, "reconstructs", False):
                raise PrunetuneError(f"prune.m: {where} has {rows.shape[1]} inputs, not divisible by M={m}, which "
                                     "sparsegpt cannot prune N:M; exclude it (prune.exclude) or choose an M that divides it")
            if rows.shape[1] % m:
                self.notes.append(f"{where}: {rows.shape[1]} inputs not divisible by M={m}; left dense")
            else:
                usable.append((name, mod, t))
        if not usable:
            raise PrunetuneError(
                f"prune.m: no selected layer has an input size divisible by M={m}; choose another M or other layers"
            )
        self.targets = list(dict.fromkeys(n for n, _, _ in usable))
        self._usable = {(n, t) for n, _, t in usable}
        for _, mod, t in usable:
            attach_mask(mod, t)

    @torch.no_grad()
    def prune_to(self, model, sparsity):
        n, m = self.spec.n, self.spec.m
        for name, mod, t in _tensors(model, self.targets):
            if (name, t) not in self._usable:
                continue
            lt = layer_type_of(mod)
            mask = get_mask(mod, t).mask
            rows = lt.to_rows(self._scores(mod, t))
            groups = rows.reshape(rows.shape[0], -1, m)
            keep = torch.zeros_like(groups, dtype=torch.bool)
            keep.scatter_(2, groups.topk(n, dim=2).indices, True)
            new = lt.from_rows(keep.reshape(rows.shape).float(), mask.shape).bool()
            mask.copy_(new.to(mask.device) & mask)
        return False

    def reconstruction_plan(self, model, sparsity):
        n, m = self.spec.n, self.spec.m
        return {name: (mod, Target(n=n, m=m)) for name, mod in target_modules(model, self.targets)
                if (name, "weight") in self._usable}


@PRUNERS.register("structured")
class Structured(Pruner):
    """Remove whole conv filters / linear neurons through Torch-Pruning's dependency graph."""

    masked = False
    per_layer_amounts = True
    family_defaults = {"transformer": (
        "taylor", "layer", "SST-2, MiniLM-L6, heads + FFN -50 %, test accuracy (the benchmark keeps no per-run "
        "validation score): Taylor keeps 86.33 % right after pruning and 87.42 % after 2 epochs (dense 87.37); L2 keeps "
        "77.32 % and ends at 84.40 (-2.97 pt; -2.31 to -2.97 across fine-tuning methods) (benchmarks/results/sst2_minilm.md)")}

    def setup(self, model, example_inputs, sparsities):
        import torch_pruning as tp

        self._decoder = None
        self._tp = None
        self.final = sparsities[-1]
        if is_causal_lm(model) or decoder_blocks(model):  # decoders (GPT-2, Llama, NeoX): heads and MLP neurons
            if self.amounts:
                raise PrunetuneError("prune.layer_sparsity: not supported for decoder language models (heads and MLP "
                                     "neurons are pruned block by block); drop it and use prune.sparsity")
            self._decoder = DecoderPruner(self.spec, self.importance, self.targets, self.notes)
            self._decoder.setup(model, list(sparsities))
            heads_pruned = any(b.kind == "heads" and b.name in self._decoder.names for b in decoder_blocks(model))
            self._check_uniform(model, self._decoder.head_ratio if heads_pruned else 0.0)
            return
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
        self._check_uniform(model, head_ratio if attn else 0.0)
        # RNN / embedding support (importance, tracing, custom pruner, root types); fresh channel-group dicts.
        options = structured_options(model, self.targets, self.importance, self._forward_fn)
        self._tp = tp.pruner.BasePruner(
            model,
            example_inputs,
            pruning_ratio=final,
            iterative_steps=len(steps),
            # The schedule's sparsities, scaled for heads and per-layer amounts (whose final ratios may differ);
            # under a global sparsity of 0 (only layer_sparsity prunes) each ratio is applied whole at each step.
            iterative_pruning_ratio_scheduler=lambda ratio, n: [0.0] + [ratio * s / final if final else ratio for s in steps],
            pruning_ratio_dict={mod: a for (n, mod), a in zip(target_modules(model, list(self.amounts)), self.amounts.values())},
            ignored_layers=ignored,
            global_pruning=self.spec.scope == "global",
            max_pruning_ratio=0.95,
            round_to=self.spec.round_to,
            num_heads=heads,
            prune_num_heads=bool(heads),
            prune_head_dims=False,
            head_pruning_ratio=head_ratio,
            **options,
        )
        self._attn = list(attn.values())

    def _check_uniform(self, model: nn.Module, head_ratio: float) -> None:
        """`prune.uniform` is for transformers models whose config can express the pruned counts."""
        if not getattr(self.spec, "uniform", False):
            return
        if not layer_widths(model)[1]:
            raise PrunetuneError(f"prune.uniform: {type(model).__name__} has no transformer layers (attention heads, "
                                 "FFN neurons) to keep uniform; drop prune.uniform")
        why = fewer_heads_problem(model, head_ratio) if head_ratio > 0 else ""
        if why:
            raise PrunetuneError(f"prune.uniform: {why}; set prune.head_sparsity: 0 to prune FFN neurons only (a "
                                 "folder transformers loads), or drop prune.uniform")

    @staticmethod
    def _forward_fn(model, inputs):
        out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
        return getattr(out, "logits", out)

    def state_dict(self) -> dict[str, Any]:
        """Besides the step count, Torch-Pruning's iterative pruner state (`torch_pruning`, None for
        decoders, whose pruner keeps none): its step, the channel counts each ranking scope started
        from (later steps' counts are relative to these) and the head / channel-group tables, keyed
        by module name."""
        return {**super().state_dict(), "torch_pruning": None if self._tp is None else _tp_state(self._tp)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self._tp is not None and state.get("torch_pruning") is not None:
            _set_tp_state(self._tp, state["torch_pruning"])

    def prune_to(self, model, sparsity):
        if self._decoder is not None:
            return self._decoder.prune_to(model, sparsity)
        self._tp.step()
        for a in self._attn:
            sync_attention(a)
        why = uniformity_problem(model) if getattr(self.spec, "uniform", False) else ""
        if why:
            raise PrunetuneError(f"prune.uniform: after pruning, {why}; select the same projections in every layer "
                                 "(prune.include / exclude), or drop prune.uniform")
        return True


@PRUNERS.register("depth")
class Depth(Pruner):
    """Remove whole residual blocks / transformer layers (prune.sparsity: fraction of the removable ones)."""

    schedules = ("oneshot",)
    masked = False
    # Set by the controller: the calibration batches (prune.calibration_batches) and the task's loss.
    calibration: Calibration | None = None
    task = None

    def setup(self, model, example_inputs, sparsities):
        self.final = sparsities[-1]
        check_depth(model, self.final, "prune.sparsity")

    def prune_to(self, model, sparsity):
        kind = self.spec.depth.importance if self.spec.depth is not None else "cosine"
        self.notes += prune_depth(model, sparsity, kind, self.calibration(), self.task, "prune.sparsity")
        return True


def _tp_state(tp) -> dict[str, Any]:
    names = tp.DG._module2name
    return {"current_step": int(tp.current_step),
            "scope_initial_channels": {str(k): int(v) for k, v in tp._scope_initial_channels.items()},
            "num_heads": {names[m]: int(n) for m, n in tp.num_heads.items() if m in names},
            "out_channel_groups": {names[m]: int(n) for m, n in tp.out_channel_groups.items() if m in names}}


def _set_tp_state(tp, state: dict[str, Any]) -> None:
    modules = {n: m for m, n in tp.DG._module2name.items()}
    tp.current_step = state["current_step"]
    tp._scope_initial_channels = dict(state["scope_initial_channels"])
    for key in ("num_heads", "out_channel_groups"):
        table = getattr(tp, key)
        for name, n in state[key].items():
            table[modules[name]] = n


def _hidden_size_owners(model: nn.Module) -> list[nn.Module]:
    """Modules whose pruning would shrink a transformer's hidden size: embeddings and pooler."""
    return [m for n, m in model.named_modules() if n.endswith(("embeddings", "pooler"))]
