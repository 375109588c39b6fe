"""Compare two run folders' results: a resumed run against an uninterrupted one, a run against its
rerun (benchmarks/reliability.py). Timings and bookkeeping are left out; masks must be equal and
weights equal within a tolerance.

Example:
    >>> compare_runs("runs/ref", "runs/resumed")     # doctest: +SKIP
    []
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .sparse_store import unpack

# Report fields that are measurements of time or of the machine, not results of the run.
TIMING_KEYS = frozenset({"epoch_s", "wall_s", "s_per_step", "latency_ms", "peak_memory_bytes", "train_peak_memory_bytes",
                         "threads", "teacher_s", "speedup_batch_1", "speedup_batch_N", "process_peak_rss_bytes",
                         "measured", "ort_speedup_measured"})  # measured: alternating speedup records (timing.py)


def _diff(a: Any, b: Any, where: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k in TIMING_KEYS:
                continue
            if k not in a or k not in b:
                out.append(f"{where}{k}: only in {'the first' if k in a else 'the second'}")
            else:
                _diff(a[k], b[k], f"{where}{k}.", out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{where}{i}.", out)
    elif a != b:
        out.append(f"{where.rstrip('.')}: {a!r} != {b!r}")


def compare_runs(a: str | Path, b: str | Path, atol: float = 1e-6) -> list[str]:
    """Differences between two run folders' results: report.json without timings and bookkeeping
    (the checkpoint section, how the dense model was obtained, whether the teacher's logits were read from the
    disk cache), masks exactly, weights within `atol`.

    An empty list means the runs ended identically (e.g. a resumed run and an uninterrupted one)."""
    a, b = Path(a), Path(b)
    ra, rb = (json.loads((p / "report.json").read_text()) for p in (a, b))
    for r in (ra, rb):
        r.pop("checkpoint", None)
        for key in ("source", "cache", "split"):  # how the dense model was obtained; its weights are compared
            (r.get("dense") or {}).pop(key, None)
        (r.get("distill") or {}).pop("logits_from_cache", None)  # where the teacher's logits came from, not what they were
    out: list[str] = []
    _diff(ra, rb, "", out)
    for name in ("model.safetensors", "masks.safetensors"):
        pa, pb = a / "model" / name, b / "model" / name
        if pa.exists() != pb.exists():
            out.append(f"model/{name}: only in one run")
            continue
        if not pa.exists():
            continue
        # Sparse-stored tensors (the manifest's `sparse` field) compare as the dense tensors they are.
        ta, tb = (unpack(load_file(str(p)), json.loads((p.parent / "manifest.json").read_text()).get("sparse") or {}, str(p))
                  if name == "model.safetensors" else load_file(str(p)) for p in (pa, pb))
        if ta.keys() != tb.keys():
            out.append(f"model/{name}: different tensors")
            continue
        for k in ta:
            if ta[k].shape != tb[k].shape:
                out.append(f"model/{name}:{k}: shape {list(ta[k].shape)} != {list(tb[k].shape)}")
            elif ta[k].dtype == torch.bool or name == "masks.safetensors":
                if not torch.equal(ta[k], tb[k]):
                    out.append(f"model/{name}:{k}: masks differ")
            else:
                d = float((ta[k].double() - tb[k].double()).abs().max()) if ta[k].numel() else 0.0
                if not d <= atol:
                    out.append(f"model/{name}:{k}: max abs difference {d:.3g} > {atol}")
    return out
