"""Sparse weights on disk: a mostly-zero tensor is stored as a packed bitmask plus its non-zero values.

`save_model` stores a floating-point tensor with at least `SPARSE_MIN_ZEROS` of its entries zero
(what unstructured / N:M pruning leaves) as two tensors in `model.safetensors`, provided that this
makes the file at least `SPARSE_MIN_SAVING` smaller (a dense model's all-zero BatchNorm means and
biases alone do not switch the layout):

    <name>.__bitmask__   uint8, numpy.packbits of the flattened `tensor != 0` (C order, big-endian bits)
    <name>.__values__    the non-zero entries in that order, in the tensor's dtype

and lists it in the manifest's `"sparse": {"format": "bitmask-v1", "tensors": {name: {"shape", "dtype"}}}`.
Every other tensor is stored as before, so a folder without the field (older prunetune) loads unchanged.
A zero is stored as +0.0 (a realised mask can leave -0.0); every other bit is kept.

Example:
    >>> import torch
    >>> w = torch.zeros(4, 8)
    >>> w[0, 1], w[3, 7] = 1.5, -2.0
    >>> stored, layout = pack({"w": w})
    >>> sorted(stored), layout["tensors"]["w"], stored["w.__values__"].tolist()
    (['w.__bitmask__', 'w.__values__'], {'shape': [4, 8], 'dtype': 'float32'}, [1.5, -2.0])
    >>> torch.equal(unpack(stored, layout, "model.safetensors")["w"], w)
    True
"""

from __future__ import annotations

import gzip
from typing import Any

import numpy as np
import torch
from safetensors.torch import save

from .errors import PrunetuneError

SPARSE_FORMAT = "bitmask-v1"
SPARSE_MIN_ZEROS = 0.5  # store sparse from half zeros on: the bitmask costs 1/32 of a float32 tensor
SPARSE_MIN_SAVING = 0.1  # ... and only when the sparse tensors make the whole file 10 % smaller
BITMASK, VALUES = ".__bitmask__", ".__values__"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def pays(t: torch.Tensor) -> bool:
    """Whether `t` is stored sparse: a floating-point tensor (of a dtype in the layout) at least half zeros."""
    if _dtype_name(t.dtype) not in _DTYPES or t.numel() < 16:
        return False
    return int(torch.count_nonzero(t)) <= (1.0 - SPARSE_MIN_ZEROS) * t.numel()


def pack(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors to write, the manifest's `sparse` entry or {} when the layout does not pay)."""
    out: dict[str, torch.Tensor] = {}
    layout: dict[str, Any] = {}
    total = sum(t.numel() * t.element_size() for t in state.values())
    saved = sum(t.numel() * t.element_size() - (-(-t.numel() // 8) + int(torch.count_nonzero(t)) * t.element_size())
                for t in state.values() if pays(t))
    if saved < SPARSE_MIN_SAVING * total:
        return dict(state), {}
    for name, t in state.items():
        if not pays(t):
            out[name] = t
            continue
        flat = t.detach().cpu().contiguous().reshape(-1)
        keep = flat != 0
        out[name + BITMASK] = torch.from_numpy(np.packbits(keep.numpy()))
        out[name + VALUES] = flat[keep].clone()
        layout[name] = {"shape": list(t.shape), "dtype": _dtype_name(t.dtype)}
    return out, ({"format": SPARSE_FORMAT, "tensors": layout} if layout else {})


def unpack(stored: dict[str, torch.Tensor], sparse: dict[str, Any], where: str) -> dict[str, torch.Tensor]:
    """The dense tensors of a file written by `pack`; `where` (the file) names any inconsistency."""
    if not sparse:
        return stored
    fix = "; re-save the model"
    if sparse.get("format") != SPARSE_FORMAT or not isinstance(sparse.get("tensors"), dict):
        raise PrunetuneError(f"{where}: sparse format {str(sparse.get('format'))[:40]!r} is not {SPARSE_FORMAT!r}"
                             "; re-save with this prunetune version")
    out = dict(stored)
    for name, spec in sparse["tensors"].items():
        bits, values = out.pop(name + BITMASK, None), out.pop(name + VALUES, None)
        if bits is None or values is None:
            raise PrunetuneError(f"{where}: sparse tensor {name} lacks its bitmask or values{fix}")
        try:
            shape = [int(s) for s in spec["shape"]]
            dtype = _DTYPES[spec["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise PrunetuneError(f"{where}: sparse tensor {name} has no valid shape / dtype in the manifest{fix}") from None
        numel = int(np.prod(shape)) if shape else 1
        if min(shape, default=1) < 0 or bits.dtype != torch.uint8 or bits.dim() != 1 or bits.numel() != -(-numel // 8):
            raise PrunetuneError(f"{where}: sparse tensor {name}: bitmask does not fit shape {shape}{fix}")
        keep = np.unpackbits(bits.numpy(), count=numel).astype(bool)
        count = int(np.unpackbits(bits.numpy()).sum())  # padding bits must be 0 too
        if values.dtype != dtype or values.dim() != 1 or count != values.numel() or int(keep.sum()) != count:
            raise PrunetuneError(f"{where}: sparse tensor {name}: bitmask marks {count} values but "
                                 f"{values.numel()} {_dtype_name(values.dtype)} values are stored{fix}")
        dense = torch.zeros(numel, dtype=dtype)
        dense[torch.from_numpy(keep)] = values
        out[name] = dense.reshape(shape)
    return out


def file_sizes(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """Bytes of the dense safetensors file and of it gzip-compressed; with `sparse_bytes` /
    `sparse_gzip_bytes` (the file `save_model` writes) when some tensor is stored sparse."""
    dense = save(state)
    sizes = {"size_bytes": len(dense), "gzip_bytes": len(gzip.compress(dense, compresslevel=6))}
    packed, layout = pack(state)
    if layout:
        data = save(packed)
        sizes.update(sparse_bytes=len(data), sparse_gzip_bytes=len(gzip.compress(data, compresslevel=6)))
    return sizes
