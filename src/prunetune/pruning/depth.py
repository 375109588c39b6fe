"""Depth pruning: whole residual blocks and transformer layers removed (`prune.method: depth`, or
`prune.depth` before a width method).

Stacks of repeated blocks that can go:

- ResNets (ours, torchvision's): an `nn.Sequential` stage whose blocks all have a `downsample`
  attribute; a block whose `downsample` is None adds its input unchanged (same shape in and out) and
  is removable; the stage-transition blocks (projection shortcut) are kept.
- transformers: BERT-family encoder layers (`*.encoder.layer`), GPT-2 `transformer.h`, Llama / Qwen /
  Mistral `model.layers`, GPT-NeoX `gpt_neox.layers`: every layer is removable.

Blocks are ranked on calibration batches (`prune.calibration_batches` training batches) by
`cosine` (default; ShortGPT's block influence, 1 - mean cosine similarity between a block's input and
output along the channel / hidden dimension: the most identity-like block goes first) or `skip_loss`
(the loss increase when the block's output is replaced by its input). The lowest-ranked blocks of all
stacks together are removed, never the last block of a stack.

Removed blocks leave their container (renumbered, as transformers numbers its layers); the new
container records `kept_blocks` (original indices) and `original_blocks`, which the saved manifest
carries (`depth`) so `load_model` rebuilds the same model. For transformers the config's
`num_hidden_layers` (and `layer_types`) follow, and each kept layer's `layer_idx` (the KV cache's
slot) is renumbered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..errors import PrunetuneError

LAYER_LISTS = ("encoder.layer", "transformer.h", "model.layers", "gpt_neox.layers")
PEFT_PREFIX = "base_model.model."


@dataclass
class Stack:
    """A container of repeated blocks and the positions of those that may be removed."""

    path: str
    container: nn.Module
    removable: list[int]
    hf: bool


def block_stacks(model: nn.Module) -> list[Stack]:
    """Every stack of repeated blocks with at least one removable block, in model order."""
    stacks = []
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Sequential, nn.ModuleList)) or len(m) < 2:
            continue
        kids = list(m)
        if isinstance(m, nn.Sequential) and all(hasattr(k, "downsample") for k in kids):
            stacks.append(Stack(name, m, [i for i, k in enumerate(kids) if k.downsample is None], False))
        elif isinstance(m, nn.ModuleList) and name.endswith(LAYER_LISTS):
            stacks.append(Stack(name, m, list(range(len(m))), True))
    return [s for s in stacks if s.removable]


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _out(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity along the channel (images: dim 1) or hidden (last) dimension."""
    dim = 1 if a.dim() == 4 else -1
    return nn.functional.cosine_similarity(a.float(), b.float(), dim=dim, eps=1e-8).mean()


@torch.no_grad()
def block_scores(model: nn.Module, stacks: list[Stack], batches: list[tuple[Any, Any]], task, kind: str) -> dict[tuple[str, int], float]:
    """(stack path, position) -> importance (lower: removed first), on the calibration `batches`."""
    blocks = {(s.path, i): s.container[i] for s in stacks for i in s.removable}
    was = model.training
    model.eval()
    try:
        if kind == "cosine":
            sums = {k: 0.0 for k in blocks}

            def probe(key):
                def hook(mod, args, kwargs, output):
                    sums[key] += float(_cosine(_hidden(args, kwargs), _out(output)))
                return hook

            handles = [b.register_forward_hook(probe(k), with_kwargs=True) for k, b in blocks.items()]
            try:
                for x, _ in batches:
                    task.forward(model, x)
            finally:
                for h in handles:
                    h.remove()
            return {k: 1.0 - v / len(batches) for k, v in sums.items()}

        def loss() -> float:
            return sum(float(task.loss(task.forward(model, x), y)) for x, y in batches) / len(batches)

        def skip(mod, args, kwargs, output):
            h = _hidden(args, kwargs)
            return (h, *output[1:]) if isinstance(output, tuple) else h

        base = loss()
        scores = {}
        for k, b in blocks.items():
            handle = b.register_forward_hook(skip, with_kwargs=True)
            try:
                scores[k] = loss() - base
            finally:
                handle.remove()
        return scores
    finally:
        model.train(was)


def block_count(amount: float, total: int) -> int:
    """How many of `total` removable blocks `amount` removes: amount x total rounded half up (0.5 x 7 = 4)."""
    return int(math.floor(amount * total + 0.5))


def check_depth(model: nn.Module, amount: float, field: str) -> list[Stack]:
    """The model's stacks, when removing amount x removable (rounded half up) blocks is possible (before any ranking:
    the pipeline checks this before measuring the dense model); else a PrunetuneError naming `field`."""
    stacks = block_stacks(model)
    if not stacks:
        where = "prune.method" if field == "prune.sparsity" else "prune.depth"
        raise PrunetuneError(f"{where}: depth pruning needs repeated residual blocks or transformer layers "
                             f"(resnet20/32/56/18, BERT, GPT-2, Llama, Qwen, GPT-NeoX); {type(model).__name__} has none: "
                             "use prune.method structured without prune.depth")
    total = sum(len(s.removable) for s in stacks)
    k = block_count(amount, total)
    if k < 1:
        raise PrunetuneError(f"{field}: {amount} removes none of the {total} removable blocks; raise it to at least "
                             f"{0.5 / total + 1e-3:.3f}")
    full = [s.path for s in stacks if len(s.removable) == len(s.container)]  # each keeps one block
    most = total - len(full)
    if k > most:
        raise PrunetuneError(f"{field}: {amount} removes {k} of {total} removable blocks, which would empty "
                             f"{', '.join(full)}; at most {most} can go ({most / total:.3f}), lower it")
    return stacks


def choose(stacks: list[Stack], scores: dict[tuple[str, int], float], amount: float) -> dict[str, list[int]]:
    """The blocks to remove: amount x removable (rounded half up) of the lowest-scored, never a stack's last block
    (`check_depth` has made sure there are enough)."""
    k = block_count(amount, sum(len(s.removable) for s in stacks))
    left = {s.path: len(s.container) for s in stacks}
    order = {s.path: j for j, s in enumerate(stacks)}
    drop: dict[str, list[int]] = {s.path: [] for s in stacks}
    for path, i in sorted(scores, key=lambda key: (scores[key], order[key[0]], key[1])):
        if sum(map(len, drop.values())) == k:
            break
        if left[path] > 1:
            drop[path].append(i)
            left[path] -= 1
    return {p: sorted(d) for p, d in drop.items() if d}


def remove_blocks(model: nn.Module, path: str, drop: list[int], hf: bool) -> nn.Module:
    """Replace the container at `path` by one without the blocks at positions `drop`; return it."""
    parent_name, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    keep = [i for i in range(len(old)) if i not in set(drop)]
    new = type(old)([old[i] for i in keep]) if isinstance(old, nn.ModuleList) else type(old)(*[old[i] for i in keep])
    before = getattr(old, "kept_blocks", list(range(len(old))))
    new.kept_blocks = [before[i] for i in keep]
    new.original_blocks = getattr(old, "original_blocks", len(old))
    setattr(parent, attr, new)
    if hf:
        _sync_hf(model, new, keep, len(old))
    return new


def _sync_hf(model: nn.Module, layers: nn.Module, keep: list[int], before: int) -> None:
    """The config counts the remaining layers; each keeps its own cache slot (`layer_idx`) in order."""
    config = getattr(model, "config", None)
    if config is not None:
        config.num_hidden_layers = len(layers)
        types = getattr(config, "layer_types", None)
        if isinstance(types, list) and len(types) == before:
            config.layer_types = [types[i] for i in keep]
    for j, layer in enumerate(layers):
        for m in layer.modules():
            if isinstance(getattr(m, "layer_idx", None), int):
                m.layer_idx = j


def prune_depth(model: nn.Module, amount: float, importance: str, batches: list[tuple[Any, Any]], task,
                field: str = "prune.sparsity") -> list[str]:
    """Remove amount x removable (rounded half up) blocks ranked by `importance`; return one note per stack."""
    stacks = check_depth(model, amount, field)
    scores = block_scores(model, stacks, batches, task, importance)
    drop = choose(stacks, scores, amount)
    notes = []
    for s in stacks:
        if s.path in drop:
            original = getattr(s.container, "kept_blocks", list(range(len(s.container))))
            gone = [original[i] for i in drop[s.path]]
            ranked = ", ".join(f"{original[i]} ({scores[(s.path, i)]:.4f})" for i in drop[s.path])
            remove_blocks(model, s.path, drop[s.path], s.hf)
            notes.append(f"depth: removed {len(gone)} of {len(s.container)} blocks of {s.path}: {ranked} by {importance}")
    return notes


def renames(model: nn.Module) -> dict[str, str | None]:
    """Original block prefix (`layer1.2`) -> its name now (`layer1.1`), None when removed."""
    moved: dict[str, str | None] = {}
    for path, m in model.named_modules():
        kept = getattr(m, "kept_blocks", None)
        if kept is None:
            continue
        for i in range(getattr(m, "original_blocks", len(kept))):
            moved[f"{path}.{i}"] = f"{path}.{kept.index(i)}" if i in kept else None
    return moved


def renamed(name: str, moved: dict[str, str | None]) -> str | None:
    """`name` (of the model before depth pruning) in the pruned model; None when its block was removed."""
    for old, new in moved.items():
        if name == old or name.startswith(old + "."):
            return None if new is None else new + name[len(old):]
    return name


def depth_record(model: nn.Module) -> dict[str, dict[str, Any]]:
    """What a manifest keeps: container path -> kept original indices and the original count."""
    return {path: {"kept": list(m.kept_blocks), "of": int(m.original_blocks)}
            for path, m in model.named_modules() if getattr(m, "kept_blocks", None) is not None}


def restore_depth(model: nn.Module, record: dict[str, Any], where: str) -> None:
    """Rebuild a saved depth-pruned model: drop the blocks `record` (a `depth_record`) says were removed.

    A transformers model built from its saved config already has the remaining layers: it only gets
    the record back (so a re-save keeps it)."""
    for path, r in record.items():
        kept, of = (r.get("kept"), r.get("of")) if isinstance(r, dict) else (None, None)
        names = dict(model.named_modules())
        at = path if path in names else path.removeprefix(PEFT_PREFIX)
        box = names.get(at)
        ok = (isinstance(of, int) and isinstance(kept, list) and all(isinstance(i, int) for i in kept)
              and sorted(set(kept)) == kept and kept and 0 <= kept[0] and kept[-1] < of)
        if not ok or not isinstance(box, (nn.Sequential, nn.ModuleList)) or len(box) not in (of, len(kept)):
            raise PrunetuneError(f"{where}: depth entry {path!r} does not fit the model; re-save the model")
        if len(box) == of and of != len(kept):
            remove_blocks(model, at, [i for i in range(of) if i not in kept], at.endswith(LAYER_LISTS))
        else:
            box.kept_blocks, box.original_blocks = list(kept), of


Calibration = Callable[[], list[tuple[Any, Any]]]
