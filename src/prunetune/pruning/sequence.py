"""Sequence and embedding layers: LSTM / GRU / RNN gate tensors and embedding tables.

Prunable layer types (registered):

- `lstm`, `gru`, `rnn`: every gate tensor (`weight_ih_l{k}`, `weight_hh_l{k}`, `_reverse` for the
  backward direction; `weight_hr_l{k}` of a projected LSTM) is masked by the unstructured and N:M
  pruners (N:M groups run along each tensor's inputs). Structured pruning removes whole hidden
  units: for each removed unit, its row in every gate block of `weight_ih` / `weight_hh` and the
  biases, its column of `weight_hh`, and the consumer's input (the next layer of a stacked RNN, or
  the module after it) -- all through a Torch-Pruning custom pruner (`RNNPruner`).
- `embedding`: rows (`num_embeddings`, the ids) are never removed; structured pruning removes
  embedding dimensions (columns) with the matching inputs of every consumer.

Torch-Pruning traces a model through autograd; an RNN's autograd graph depends on the backend
(MKL-DNN on CPU, cuDNN on GPU) and its own LSTM pruner handles one layer only. While the
dependency graph is traced, each RNN therefore runs an opaque stand-in (`opaque_rnns`): a linear map
from its input to an output of the same shape (`[..., directions * hidden]`), so the graph sees one
node that consumes its input's channels and produces its output channels. A unidirectional RNN's
final states are derived from the last output step (a model may read `h_n`); a bidirectional RNN's
`h_n` cannot be expressed that way, and a model that reads it is refused with a clear error.

Hidden units of a stacked RNN's inner layers are internal to the module: the same number is removed
from each layer (nn.LSTM keeps one hidden size), the ones with the smallest weight norms.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import PrunetuneError
from ..registry import LAYER_TYPES
from .layers import SHAPE_SYNC, LayerType

GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}
RNN_TYPES = (nn.LSTM, nn.GRU, nn.RNN)


def gates(m: nn.RNNBase) -> int:
    for t, g in GATES.items():
        if isinstance(m, t):
            return g
    raise TypeError(f"not an RNN: {type(m).__name__}")


def directions(m: nn.RNNBase) -> list[str]:
    return ["", "_reverse"] if m.bidirectional else [""]


def rnn_weights(m: nn.RNNBase) -> tuple[str, ...]:
    """Every weight matrix of an RNN (biases excluded), layer by layer."""
    names = []
    for k in range(m.num_layers):
        for sfx in directions(m):
            names += [f"weight_ih_l{k}{sfx}", f"weight_hh_l{k}{sfx}"]
            if getattr(m, "proj_size", 0):
                names.append(f"weight_hr_l{k}{sfx}")
    return tuple(names)


def _rnn_shape(m: nn.RNNBase) -> list[int]:
    # The plan shows an RNN as [hidden units, inputs].
    return [int(m.hidden_size), int(m.input_size)]


for _name, _cls, _doc in (("lstm", nn.LSTM, "nn.LSTM: hidden units / every gate tensor"),
                          ("gru", nn.GRU, "nn.GRU: hidden units / every gate tensor"),
                          ("rnn", nn.RNN, "nn.RNN: hidden units / input and recurrent weights")):
    LAYER_TYPES.register(_name, _doc)(LayerType(_cls, weights=rnn_weights, shape=_rnn_shape))
LAYER_TYPES.register("embedding", "nn.Embedding: embedding dimensions (rows, the ids, are never removed)")(
    LayerType(nn.Embedding))


# ---------------------------------------------------------------- size attributes from tensors


def _sync_rnn(m: nn.RNNBase) -> None:
    w_ih, w_hh = m._parameters.get("weight_ih_l0"), m._parameters.get("weight_hh_l0")
    if w_ih is None and hasattr(m, "parametrizations") and "weight_ih_l0" in m.parametrizations:
        w_ih, w_hh = m.parametrizations.weight_ih_l0.original, m.parametrizations.weight_hh_l0.original
    m.input_size = int(w_ih.shape[1])
    m.hidden_size = int(w_hh.shape[1]) if not getattr(m, "proj_size", 0) else int(w_ih.shape[0]) // gates(m)
    m._init_flat_weights()


def _sync_embedding(m: nn.Embedding) -> None:
    m.num_embeddings, m.embedding_dim = (int(s) for s in m.weight.shape)


SHAPE_SYNC.update({nn.LSTM: _sync_rnn, nn.GRU: _sync_rnn, nn.RNN: _sync_rnn, nn.Embedding: _sync_embedding})


# ---------------------------------------------------------------- Torch-Pruning: a pruner for RNN hidden units


def _keep(n: int, drop: Any) -> torch.Tensor:
    mask = torch.ones(n, dtype=torch.bool)
    if len(drop):
        mask[torch.as_tensor(list(drop), dtype=torch.long)] = False
    return torch.nonzero(mask).flatten()


def _take(param: nn.Parameter, keep: torch.Tensor, dim: int) -> nn.Parameter:
    keep = keep.to(param.device)
    new = nn.Parameter(torch.index_select(param.data, dim, keep).contiguous(), requires_grad=param.requires_grad)
    if param.grad is not None:
        new.grad = torch.index_select(param.grad, dim, keep).contiguous()
    return new


def _gate_rows(keep: torch.Tensor, hidden: int, g: int) -> torch.Tensor:
    return torch.cat([keep + i * hidden for i in range(g)])


def _unit_norms(m: nn.RNNBase, layer: int, sfx: str) -> torch.Tensor:
    """Squared L2 norm of everything tied to each hidden unit of one layer and direction."""
    h, g = m.hidden_size, gates(m)
    w_ih = getattr(m, f"weight_ih_l{layer}{sfx}").detach().float()
    w_hh = getattr(m, f"weight_hh_l{layer}{sfx}").detach().float()
    score = w_ih.pow(2).sum(1).view(g, h).sum(0) + w_hh.pow(2).sum(1).view(g, h).sum(0) + w_hh.pow(2).sum(0)
    if layer + 1 < m.num_layers:
        d = 1 if sfx else 0
        for nxt in directions(m):
            w = getattr(m, f"weight_ih_l{layer + 1}{nxt}").detach().float()
            score = score + w[:, d * h:(d + 1) * h].pow(2).sum(0)
    return score.cpu()


def remove_hidden_units(m: nn.RNNBase, drop: dict[str, list[int]]) -> None:
    """Remove hidden units of the last layer (`drop`: direction suffix -> unit indices, the same count
    for every direction) and as many units, the weakest, from every inner layer."""
    if getattr(m, "proj_size", 0):
        raise PrunetuneError("prune.method structured: an LSTM with proj_size cannot lose hidden units; "
                             "use unstructured or N:M pruning, or exclude it (prune.exclude)")
    h, g, last = m.hidden_size, gates(m), m.num_layers - 1
    counts = {len(set(v)) for v in drop.values()}
    if len(counts) != 1:
        raise PrunetuneError("structured: both directions of a bidirectional RNN must lose as many units")
    n = counts.pop()
    if n == 0:
        return
    keeps: dict[tuple[int, str], torch.Tensor] = {}
    for layer in range(m.num_layers):
        for sfx in directions(m):
            if layer == last:
                keeps[layer, sfx] = _keep(h, sorted(set(drop[sfx])))
            else:
                keeps[layer, sfx] = torch.argsort(_unit_norms(m, layer, sfx), descending=True)[: h - n].sort().values
    for layer in range(m.num_layers):
        for sfx in directions(m):
            keep = keeps[layer, sfx]
            rows = _gate_rows(keep, h, g)
            suffix = f"l{layer}{sfx}"
            w_ih = getattr(m, f"weight_ih_{suffix}")
            if layer > 0:  # inputs: the previous layer's kept units (both directions)
                cols = torch.cat([keeps[layer - 1, s] + i * h for i, s in enumerate(directions(m))])
                w_ih = _take(w_ih, cols, 1)
            setattr(m, f"weight_ih_{suffix}", _take(w_ih, rows, 0))
            setattr(m, f"weight_hh_{suffix}", _take(_take(getattr(m, f"weight_hh_{suffix}"), rows, 0), keep, 1))
            if m.bias:
                for b in ("ih", "hh"):
                    setattr(m, f"bias_{b}_{suffix}", _take(getattr(m, f"bias_{b}_{suffix}"), rows, 0))
    m.hidden_size = h - n
    m._init_flat_weights()


def remove_inputs(m: nn.RNNBase, drop: list[int]) -> None:
    keep = _keep(m.input_size, sorted(set(drop)))
    for sfx in directions(m):
        setattr(m, f"weight_ih_l0{sfx}", _take(getattr(m, f"weight_ih_l0{sfx}"), keep, 1))
    m.input_size = len(keep)
    m._init_flat_weights()


def tp_pruners() -> dict[type, Any]:
    """`customized_pruners` for Torch-Pruning's BasePruner: one pruner for LSTM, GRU and RNN."""
    import torch_pruning as tp

    class RNNPruner(tp.pruner.function.BasePruningFunc):
        """Output channels are `directions * hidden` (the output sequence's features); inputs are `input_size`."""

        TARGET_MODULES = RNN_TYPES

        def prune_out_channels(self, layer: nn.RNNBase, idxs):
            h = layer.hidden_size
            idxs = [int(i) for i in idxs]
            drop = {sfx: [i - d * h for i in idxs if d * h <= i < (d + 1) * h] for d, sfx in enumerate(directions(layer))}
            remove_hidden_units(layer, drop)
            return layer

        def prune_in_channels(self, layer: nn.RNNBase, idxs):
            remove_inputs(layer, [int(i) for i in idxs])
            return layer

        def get_out_channels(self, layer):
            return (getattr(layer, "proj_size", 0) or layer.hidden_size) * (2 if layer.bidirectional else 1)

        def get_in_channels(self, layer):
            return layer.input_size

    p = RNNPruner()
    return {t: p for t in RNN_TYPES}


# ---------------------------------------------------------------- tracing: RNNs as opaque nodes


@contextmanager
def opaque_rnns(model: nn.Module) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Run every RNN of `model` as a traceable stand-in (see the module docstring).

    Yields a list that collects (module name, placeholder) for final states the stand-in cannot
    express; `reads_any` tells whether a model output depends on one."""
    placeholders: list[tuple[str, torch.Tensor]] = []
    patched = []
    for name, mod in model.named_modules():
        if isinstance(mod, RNN_TYPES):
            mod.forward = _stand_in(mod, name, placeholders)
            patched.append(mod)
    try:
        yield placeholders
    finally:
        for mod in patched:
            del mod.forward


def _stand_in(mod: nn.RNNBase, name: str, placeholders: list):
    def forward(input, hx=None):  # noqa: A002 - nn.RNNBase's own argument name
        from torch.nn.utils.rnn import PackedSequence

        dirs = 2 if mod.bidirectional else 1
        ref = input.data if isinstance(input, PackedSequence) else input
        w = torch.zeros(dirs * mod.hidden_size, ref.shape[-1], dtype=ref.dtype, device=ref.device, requires_grad=True)
        out = F.linear(ref, w)
        layers = mod.num_layers * dirs

        def state() -> torch.Tensor:
            if dirs == 1 and not isinstance(input, PackedSequence):
                if ref.dim() == 2:  # unbatched [T, F]
                    return out[-1].unsqueeze(0).repeat(layers, 1)
                last = out[:, -1] if mod.batch_first else out[-1]
                return last.unsqueeze(0).repeat(layers, 1, 1)
            batch = ref.shape[0 if mod.batch_first else 1] if ref.dim() == 3 else None
            shape = (layers, mod.hidden_size) if batch is None else (layers, batch, mod.hidden_size)
            if isinstance(input, PackedSequence):
                shape = (layers, int(input.batch_sizes[0]), mod.hidden_size)
            p = torch.zeros(shape, dtype=ref.dtype, device=ref.device, requires_grad=True)
            placeholders.append((name, p))
            return p

        if isinstance(input, PackedSequence):
            out = PackedSequence(out, input.batch_sizes, input.sorted_indices, input.unsorted_indices)
        h = state()
        return (out, (h, state())) if isinstance(mod, nn.LSTM) else (out, h)

    return forward


def reads_any(outputs: Any, leaves: list[torch.Tensor]) -> bool:
    """Whether any of `outputs` (tensors, possibly nested) depends on one of the leaf tensors."""
    from torch.utils._pytree import tree_leaves

    if not leaves:
        return False
    want = {id(t) for t in leaves}
    stack = [t.grad_fn for t in tree_leaves(outputs) if isinstance(t, torch.Tensor) and t.grad_fn is not None]
    seen: set[int] = set()
    while stack:
        fn = stack.pop()
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        var = getattr(fn, "variable", None)
        if var is not None and id(var) in want:
            return True
        stack.extend(f for f, _ in fn.next_functions if f is not None)
    return False


# ---------------------------------------------------------------- importance of embedding / RNN members


class SequenceAware:
    """Wraps a Torch-Pruning group importance so that RNN and embedding members of a group count.

    Torch-Pruning scores conv / linear / norm members only; a group rooted at an embedding whose
    only consumer is an LSTM would have no score at all. Each RNN / embedding member adds its
    per-channel `score(weight, grad)` summed over the tensors tied to that channel; the group's score
    is the mean of the wrapped importance and these (scaled to the wrapped importance's mean), so
    groups stay comparable in a global ranking."""

    def __init__(self, base, importance) -> None:
        self.base, self.importance = base, importance

    def __getattr__(self, name: str) -> Any:  # anything else Torch-Pruning asks the importance
        return getattr(self.base, name)

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        base = self.base(group)
        if type(self.importance).__name__ == "RandomImportance":
            return base
        n = len(group[0].idxs)
        extra = torch.zeros(n)
        found = False
        for i, (dep, idxs) in enumerate(group):
            layer, fn = dep.target.module, dep.handler
            root = group[i].root_idxs
            if root is None or any(r is None for r in root) or not isinstance(layer, (nn.Embedding, *RNN_TYPES)):
                continue
            local = self._local(layer, fn.__name__ == "prune_out_channels", list(idxs))
            if local is None:
                continue
            extra.index_add_(0, torch.as_tensor(root, dtype=torch.long), local.float().cpu())
            found = True
        if not found:
            return base
        extra = extra / extra.mean().clamp_min(1e-12)
        if base is None:
            return extra
        # The mean of the two, on the wrapped importance's scale (comparable across groups when global).
        base = base.float().cpu()
        return (base + extra * base.mean()) / 2

    def _score(self, w: torch.Tensor) -> torch.Tensor:
        return self.importance.scores(w, w.grad).float()

    def _local(self, layer: nn.Module, out: bool, idxs: list[int]) -> torch.Tensor | None:
        if isinstance(layer, nn.Embedding):
            return self._score(layer.weight).sum(0)[idxs]
        h, g = layer.hidden_size, gates(layer)
        if not out:  # inputs: columns of the first layer's input weights
            s = sum(self._score(getattr(layer, f"weight_ih_l0{sfx}")).sum(0) for sfx in directions(layer))
            return s[idxs]
        parts = []
        last = layer.num_layers - 1
        for sfx in directions(layer):
            w_ih, w_hh = getattr(layer, f"weight_ih_l{last}{sfx}"), getattr(layer, f"weight_hh_l{last}{sfx}")
            s_hh = self._score(w_hh)
            parts.append(self._score(w_ih).sum(1).view(g, h).sum(0) + s_hh.sum(1).view(g, h).sum(0) + s_hh.sum(0))
        return torch.cat(parts)[idxs]


def check_rnns(model: nn.Module, targets: list[str]) -> None:
    """Refuse structured pruning of RNNs it cannot shrink exactly."""
    mods = dict(model.named_modules())
    for name in targets:
        m = mods.get(name)
        if isinstance(m, nn.LSTM) and m.proj_size:
            raise PrunetuneError(f"prune.method structured: {name} is an LSTM with proj_size, whose hidden units "
                                 "cannot be removed; use unstructured or N:M pruning, or add it to prune.exclude")


def structured_options(model: nn.Module, targets: list[str], importance, forward_fn) -> dict[str, Any]:
    """Torch-Pruning BasePruner arguments for models with RNNs and embeddings (and plain ones alike):
    the importance, a forward function that traces RNNs as opaque nodes, the RNN pruner, the root
    types (embeddings and GRUs when one is targeted) and the direction groups of bidirectional RNNs."""
    import torch_pruning as tp

    mods = dict(model.named_modules())
    chosen = [mods[n] for n in targets if n in mods]
    check_rnns(model, targets)
    rnns = [m for m in model.modules() if isinstance(m, RNN_TYPES)]
    roots = [tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR, tp.ops.TORCH_LSTM]
    roots += sorted({type(m) for m in chosen if isinstance(m, (nn.Embedding, nn.GRU, nn.RNN))}, key=lambda t: t.__name__)
    base = importance.structured()
    has_seq = any(isinstance(m, (nn.Embedding, *RNN_TYPES)) for m in chosen) or bool(rnns)
    names = {id(m): n for n, m in mods.items()}
    target_ids = {id(m) for m in chosen}

    def traced(model_, inputs):
        if not rnns:
            return forward_fn(model_, inputs)
        with opaque_rnns(model_) as placeholders:
            out = forward_fn(model_, inputs)
            read = [n for n, p in placeholders if reads_any(out, [p]) and id(mods.get(n)) in target_ids]
        if read:
            raise PrunetuneError(
                f"prune.method structured: the model reads the final hidden state h_n of the bidirectional {read[0]}, "
                "whose units cannot be followed through it; read its output sequence instead, use unstructured "
                f"pruning, or add {read[0]} to prune.exclude")
        return out

    return {
        "importance": SequenceAware(base, importance) if has_seq else base,
        "forward_fn": traced,
        "customized_pruners": tp_pruners() if rnns else None,
        "root_module_types": roots,
        # Both directions of a bidirectional RNN lose the same units (its outputs: [forward | backward]).
        "out_channel_groups": {m: 2 for m in rnns if m.bidirectional and id(m) in target_ids and names.get(id(m))},
        "in_channel_groups": {},
    }
