"""Measurement at every stage: accuracy, parameters, non-zeros, sparsity, MACs, bytes, latency, memory.

Every speedup is a ratio of latencies measured here with `torch.utils.benchmark`; nothing is inferred
from MACs. Masked models are measured after `realise`, i.e. as they would be shipped.
"""

from __future__ import annotations

import gzip
import os
import sys
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from .pruning.masks import realise
from .tasks import to_device


def count_params(model: nn.Module) -> tuple[int, int]:
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    return params, nonzero


def layer_weights(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    mods = dict(model.named_modules())
    return {n: mods[n].weight.detach() for n in names if n in mods}


def macs(model: nn.Module, example: Any) -> int:
    import torch_pruning as tp

    m, _ = tp.utils.count_ops_and_params(model, example)
    return int(m)


def serialized_sizes(model: nn.Module) -> tuple[int, int]:
    """Bytes of the safetensors file, and of it gzip-compressed (where unstructured zeros pay)."""
    from safetensors.torch import save

    data = save({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()})
    return len(data), len(gzip.compress(data, compresslevel=6))


def example_batch(data, batch: int) -> Any:
    """`batch` real inputs from `data` (repeated when it has fewer)."""
    n = len(data)
    idx = torch.arange(batch) % n
    x = data.x
    if isinstance(x, dict):
        return {k: v[idx] for k, v in x.items()}
    return x[idx]


@torch.inference_mode()
def latency_ms(model: nn.Module, forward, x: Any, threads: int, min_run_time: float) -> dict[str, float]:
    """p50 / p90 of per-call latency in ms over timed blocks (torch.utils.benchmark)."""
    from torch.utils import benchmark

    model.eval()
    for _ in range(3):
        forward(model, x)
    timer = benchmark.Timer(stmt="forward(model, x)", globals={"forward": forward, "model": model, "x": x}, num_threads=threads)
    m = timer.blocked_autorange(min_run_time=min_run_time)
    times = np.array(m.times) * 1000.0
    return {"p50": round(float(np.median(times)), 4), "p90": round(float(np.percentile(times, 90)), 4),
            "blocks": len(times), "calls_per_block": int(m.number_per_run)}


@torch.inference_mode()
def peak_memory_bytes(model: nn.Module, forward, x: Any, device: torch.device) -> int:
    """Parameters and buffers plus the peak of live allocations during one forward pass.

    On CUDA: max_memory_allocated. On CPU: the maximum of the running sum of the profiler's
    allocation and free events.
    """
    model.eval()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        forward(model, x)
        return int(torch.cuda.max_memory_allocated(device) - base) + _state_bytes(model)
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        forward(model, x)
    # Allocations are attributed to the op that made them (self memory); frees made outside an
    # op appear as "[memory]" events. In time order, their running sum peaks at the live maximum.
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    running, peak = 0, 0
    for e in events:
        running += e.self_cpu_memory_usage
        peak = max(peak, running)
    return int(peak) + _state_bytes(model)


@contextmanager
def _quiet_stderr():
    """Silence file descriptor 2: Kineto prints profiler start/stop lines from C++ on every use."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _state_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def measure_stage(model: nn.Module, task, bundle, spec, device: torch.device, reference: dict[str, Any]) -> dict[str, Any]:
    """The stage record `S` of report.json; `reference` holds the dense counts and target layer names."""
    shipped = realise(model).to(device).eval()
    result: dict[str, Any] = task.evaluate(shipped, bundle.test, bundle.eval_batch_size, device, bundle.class_names)
    params, nonzero = count_params(shipped)
    targets = layer_weights(shipped, reference["targets"])
    target_nonzero = sum(int(torch.count_nonzero(w)) for w in targets.values())
    threads = spec.threads or torch.get_num_threads()
    one = to_device(example_batch(bundle.test, 1), device)
    size, gz = serialized_sizes(shipped)
    result.update({
        "params": params,
        "nonzero_params": nonzero,
        # Relative to the dense model, so structured removal and zeroed weights compare directly.
        "sparsity": round(1.0 - nonzero / reference["params"], 6),
        "prunable_sparsity": round(1.0 - target_nonzero / reference["target_numel"], 6),
        "macs": macs(shipped, one),
        "size_bytes": size,
        "gzip_bytes": gz,
        "threads": threads,
        "device": str(device),
    })
    if spec.latency:
        big = to_device(example_batch(bundle.test, spec.latency_batch), device)
        result["latency_ms"] = {
            "batch_1": latency_ms(shipped, task.forward, one, threads, spec.min_run_time),
            "batch_N": {"batch": spec.latency_batch, **latency_ms(shipped, task.forward, big, threads, spec.min_run_time)},
        }
    if spec.memory:
        big = to_device(example_batch(bundle.test, spec.latency_batch), device)
        result["peak_memory_bytes"] = {"batch": spec.latency_batch, "bytes": peak_memory_bytes(shipped, task.forward, big, device)}
    return result


def reference_counts(model: nn.Module, targets: list[str]) -> dict[str, Any]:
    params, _ = count_params(model)
    return {"params": params, "targets": targets,
            "target_numel": sum(w.numel() for w in layer_weights(model, targets).values())}


def plan_rows(before: nn.Module, after: nn.Module, targets: list[str]) -> list[dict[str, Any]]:
    """Per-layer plan: shape before/after and sparsity relative to the dense layer."""
    from .pruning.layers import prunable_layers

    after_w = layer_weights(realise(after), [n for n, _ in prunable_layers(before)])
    rows = []
    for name, mod in prunable_layers(before):
        wb = mod.weight.detach()
        wa = after_w.get(name)
        nz = int(torch.count_nonzero(wa)) if wa is not None else 0
        rows.append({
            "layer": name,
            "type": type(mod).__name__,
            "shape_before": list(wb.shape),
            "shape_after": list(wa.shape) if wa is not None else [],
            "sparsity": round(1.0 - nz / wb.numel(), 6),
            "target": name in targets,
        })
    return rows
