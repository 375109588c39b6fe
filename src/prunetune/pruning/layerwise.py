"""Layer-by-layer calibration for weight reconstruction (SparseGPT): one block's Hessians at a time.

The model's repeated blocks (the `nn.ModuleList` holding most of the target layers: a transformer's
`layers` / `h` / `encoder.layer`) are found and checked on one calibration batch: each block must run
once per forward, in order, each taking the previous one's output. Then the calibration inputs of
the first block are captured (the forward stops there), and for each block in turn:

1. its target layers' Hessians H = 2 X X^T / tokens are accumulated (float32, on the CPU) over the
   block's calibration inputs; layers fed the same tensor (q, k, v) share one computation;
2. each target layer is pruned and reconstructed, and its Hessian freed;
3. the pruned block is run again: its outputs are the next block's calibration inputs.

So memory holds the model, one block's inputs and outputs, and one block's Hessians. Target layers
outside the blocks (a toy MLP's layers, a classifier head) are calibrated one at a time, in the order
the model runs them, each with a full forward over the calibration inputs. Key/value caches are
dropped from the captured block arguments (a block is run twice per batch). Padding tokens (attention
mask 0) are left out of the Hessians.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..errors import PrunetuneError
from .hf_conv1d import is_hf_conv1d
from .layers import layer_type_of
from .masks import get_mask
from .sparsegpt import reconstruct


@dataclass
class Target:
    """What one layer is pruned to: `amount` (unstructured) or `n`:`m`."""

    amount: float = 0.0
    n: int = 0
    m: int = 0


class _Stop(Exception):
    """Raised by a hook to end a forward pass early (its inputs are captured)."""


def _is_cache(v: Any) -> bool:
    return any(c.__name__.endswith("Cache") for c in type(v).__mro__)


def _no_cache(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    args = tuple(None if _is_cache(a) else a for a in args)
    kwargs = {k: (None if _is_cache(v) else v) for k, v in kwargs.items()}
    if "use_cache" in kwargs:
        kwargs["use_cache"] = False
    return args, kwargs


class _Hessians:
    """Forward pre-hooks accumulating 2 X X^T / tokens of each hooked layer's input."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self.h: dict[nn.Module, torch.Tensor] = {}
        self.tokens: dict[nn.Module, int] = {}
        self.token_mask: torch.Tensor | None = None
        self._last: tuple[Any, torch.Tensor, int] | None = None  # (input, its X^T X, tokens): q, k, v share it
        self.handles = [m.register_forward_pre_hook(self._hook) for m in modules]

    def _hook(self, mod: nn.Module, args: tuple) -> None:
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor):
            return
        if self._last is not None and self._last[0] is x:
            xtx, count = self._last[1], self._last[2]
        else:
            rows = x.detach()
            mask = self.token_mask
            if mask is not None and rows.dim() == 3 and tuple(rows.shape[:2]) == tuple(mask.shape):
                rows = rows[mask.to(rows.device).bool()]  # real tokens only
            rows = rows.reshape(-1, rows.shape[-1]).float()
            xtx, count = (rows.t() @ rows).cpu(), int(rows.shape[0])
            self._last = (x, xtx, count)
        self.h[mod] = self.h[mod] + xtx if mod in self.h else xtx.clone()
        self.tokens[mod] = self.tokens.get(mod, 0) + count

    def pop(self, mod: nn.Module) -> torch.Tensor | None:
        h = self.h.pop(mod, None)
        return None if h is None else h * (2.0 / max(1, self.tokens[mod]))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self._last = None


def check_layer(name: str, mod: nn.Module) -> None:
    """Refuse (PrunetuneError) a layer SparseGPT cannot reconstruct."""
    if not (isinstance(mod, nn.Linear) or is_hf_conv1d(mod)):
        raise PrunetuneError(f"prune.importance: sparsegpt reconstructs linear layers (nn.Linear, GPT-2 Conv1D), not "
                             f"{name} ({type(mod).__name__}); use wanda or l2, or exclude the layer")


@torch.no_grad()
def _prune_layer(name: str, mod: nn.Module, hessian: torch.Tensor | None, t: Target) -> None:
    if hessian is None:
        raise PrunetuneError(f"prune.importance: sparsegpt saw no input reach {name} during calibration; use l1 or l2, "
                             "or exclude the layer")
    lt = layer_type_of(mod)
    weight = mod.parametrizations.weight.original
    mask = get_mask(mod).mask
    rows = lt.to_rows(weight.detach().cpu())
    new, keep = reconstruct(rows, hessian, t.amount, t.n, t.m, pruned=~lt.to_rows(mask.cpu()), name=name)
    weight.copy_(lt.from_rows(new, weight.shape).to(weight.device, weight.dtype))
    mask.copy_(lt.from_rows(keep, mask.shape).to(mask.device))


def _stack(model: nn.Module, targets: set[nn.Module]) -> list[nn.Module]:
    """The ModuleList whose items (blocks, not target layers themselves) hold the most target layers."""
    best: list[nn.Module] = []
    most = 0
    for ml in model.modules():
        if not isinstance(ml, nn.ModuleList) or len(ml) < 2 or any(c in targets for c in ml):
            continue
        count = sum(1 for c in ml for t in c.modules() if t in targets)
        if count > most:
            best, most = list(ml), count
    return best


def _hidden(args: tuple, kwargs: dict) -> Any:
    return args[0] if args else kwargs.get("hidden_states")


def _with_hidden(args: tuple, kwargs: dict, h: torch.Tensor) -> tuple[tuple, dict]:
    return ((h,) + args[1:], kwargs) if args else (args, {**kwargs, "hidden_states": h})


def _out(o: Any) -> Any:
    return o[0] if isinstance(o, (tuple, list)) else o


def _probe(run: Callable[[Any], Any], first: Any, stack: list[nn.Module], targets: list[nn.Module]) -> tuple[bool, list]:
    """(the blocks chain, target layers in the order the model first runs them) on one batch."""
    calls: list[tuple[int, Any, Any]] = []  # (block, input, output)
    order: list[nn.Module] = []
    handles = [m.register_forward_pre_hook(lambda m, a: order.append(m) if m not in order else None) for m in targets]
    for i, b in enumerate(stack):
        handles.append(b.register_forward_pre_hook(
            lambda m, a, k, i=i: calls.append((i, _hidden(a, k), None)), with_kwargs=True))
        handles.append(b.register_forward_hook(
            lambda m, a, o, i=i: calls.__setitem__(-1, (calls[-1][0], calls[-1][1], _out(o)))))
    try:
        run(first)
    finally:
        for h in handles:
            h.remove()
    chained = bool(stack) and [c[0] for c in calls] == list(range(len(stack))) and all(
        isinstance(a[2], torch.Tensor) and isinstance(b[1], torch.Tensor) and a[2].shape == b[1].shape
        and (a[2] is b[1] or torch.equal(a[2], b[1])) for a, b in zip(calls, calls[1:]))
    return chained, order


@torch.no_grad()
def reconstruct_model(model: nn.Module, forward: Callable[[Any], Any], inputs: Iterable[Any],
                      plan: dict[str, tuple[nn.Module, Target]]) -> None:
    """Prune every layer of `plan` ({name: (module, target)}, masked modules) with SparseGPT, block by block.

    `forward(x)` runs the model on one calibration item of `inputs` (a tensor or a dict of tensors; a
    dict's `attention_mask` marks real tokens)."""
    for name, (mod, _) in plan.items():
        check_layer(name, mod)
    inputs = list(inputs)
    if not inputs:
        raise PrunetuneError("prune.calibration_batches: sparsegpt needs calibration data; the training split is empty")
    mods = {mod: name for name, (mod, _) in plan.items()}
    state: dict[str, Any] = {"mask": None}

    def run(x: Any) -> None:
        state["mask"] = x.get("attention_mask") if isinstance(x, dict) else None
        forward(x)

    stack = _stack(model, set(mods))
    chained, order = _probe(run, inputs[0], stack, list(mods))
    if not chained:
        stack = []
    inside = {t for b in stack for t in b.modules() if t in mods}
    first = next((i for i, t in enumerate(order) if t in inside), len(order))
    before = [t for t in order[:first] if t not in inside]
    after = [t for t in order[first:] if t not in inside] + [t for t in mods if t not in order]

    def one_at_a_time(layers: list[nn.Module]) -> None:
        for mod in layers:
            hs = _Hessians([mod])
            try:
                for x in inputs:
                    hs.token_mask = state["mask"] = x.get("attention_mask") if isinstance(x, dict) else None
                    forward(x)
            finally:
                hs.remove()
            _prune_layer(mods[mod], mod, hs.pop(mod), plan[mods[mod]][1])

    one_at_a_time(before)
    if stack:
        _blocks(stack, run, inputs, mods, plan)
    one_at_a_time(after)


def _blocks(stack: list[nn.Module], run: Callable[[Any], Any], inputs: list[Any], mods: dict[nn.Module, str],
            plan: dict[str, tuple[nn.Module, Target]]) -> None:
    captured: list[tuple[tuple, dict, Any]] = []

    def catch(m: nn.Module, args: tuple, kwargs: dict) -> None:
        a, k = _no_cache(args, kwargs)
        captured.append((a, k, None))
        raise _Stop

    handle = stack[0].register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for x in inputs:
            try:
                run(x)
            except _Stop:
                pass
            mask = x.get("attention_mask") if isinstance(x, dict) else None
            captured[-1] = (captured[-1][0], captured[-1][1], mask)
    finally:
        handle.remove()
    for block in stack:
        layers = [t for t in block.modules() if t in mods]
        if layers:
            hs = _Hessians(layers)
            try:
                for a, k, mask in captured:
                    hs.token_mask = mask
                    block(*a, **k)
            finally:
                hs.remove()
            for mod in layers:
                _prune_layer(mods[mod], mod, hs.pop(mod), plan[mods[mod]][1])
        captured = [(*_with_hidden(a, k, _out(block(*a, **k))), mask) for a, k, mask in captured]
