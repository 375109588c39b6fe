"""Measurement at every stage: accuracy, parameters, non-zeros, sparsity, MACs, bytes, latency, memory.

Every speedup is a ratio of latencies measured here with `torch.utils.benchmark`; nothing is inferred
from MACs. Masked models are measured after `realise`, i.e. as they would be shipped.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from .artifacts import unique_state
from .pruning.depth import renamed, renames
from .pruning.hf_conv1d import is_hf_conv1d
from .pruning.layers import layer_shape, layer_weight, prunable_layers
from .pruning.masks import realise
from .robustness import measure_robustness
from .sparse_store import file_sizes
from .tasks import to_device


def count_params(model: nn.Module) -> tuple[int, int]:
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    return params, nonzero


def layer_weights(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """Each named layer's prunable weights (an LSTM / GRU: every gate tensor, flattened into one)."""
    mods = dict(model.named_modules())
    return {n: layer_weight(mods[n]) for n in names if n in mods}


def macs(model: nn.Module, example: Any) -> int:
    import torch_pruning as tp
    from torch_pruning.utils import op_counter

    for mod in model.modules():  # transformers' Conv1D (GPT-2) counts as the linear layer it is
        if is_hf_conv1d(mod):
            op_counter.CUSTOM_MODULES_MAPPING[type(mod)] = op_counter.linear_flops_counter_hook
    with contextlib.redirect_stdout(io.StringIO()):  # "No positional inputs found" for keyword inputs
        m, _ = tp.utils.count_ops_and_params(model, example)
    return int(m)


def serialized_sizes(model: nn.Module) -> dict[str, int]:
    """Bytes of the dense safetensors file and of it gzip-compressed (where unstructured zeros pay):
    `size_bytes`, `gzip_bytes`; plus `sparse_bytes`, `sparse_gzip_bytes` (the bitmask + values file
    `save_model` writes, see sparse_store) when some tensor is mostly zeros."""
    return file_sizes({k: v.detach().contiguous().cpu() for k, v in unique_state(model).items()})


def example_batch(data, batch: int, seq_len: int | None = None) -> Any:
    """`batch` real inputs from `data` (repeated when it has fewer).

    For text, `seq_len` gives every sequence exactly that many tokens (real tokens, padded with
    repeats of the data when short), all attended: the fixed-shape input a latency figure names."""
    n = len(data)
    idx = torch.arange(batch) % n
    x = data.take(idx)
    if seq_len is None or not isinstance(x, dict):
        return x
    ids = x["input_ids"]
    reps = -(-seq_len // ids.shape[1])
    ids = ids.repeat(1, reps)[:, :seq_len].contiguous()
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


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
    return _cpu_peak(lambda: forward(model, x)) + _state_bytes(model)


def _cpu_peak(fn) -> int:
    """Peak of live CPU allocations while `fn` runs, from the profiler's memory events."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # Allocations are attributed to the op that made them (self memory); frees made outside an
    # op appear as "[memory]" events. In time order, their running sum peaks at the live maximum.
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    running, peak = 0, 0
    for e in events:
        running += e.self_cpu_memory_usage
        peak = max(peak, running)
    return int(peak)


def training_memory(model: nn.Module, task, bundle, spec, device: torch.device) -> int:
    """Peak memory of one training step at the fine-tuning batch size: the profiler's peak of live
    allocations in a forward + backward pass (gradients included), plus parameters and buffers and
    AdamW's two state tensors per trainable parameter (what an optimizer step adds)."""
    x = to_device(example_batch(bundle.train, spec.batch_size), device)
    y = bundle.train.y[torch.arange(spec.batch_size) % len(bundle.train)].to(device)
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    was = model.training
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        task.loss(task.forward(model, x), y).backward()
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = _cpu_peak(lambda: task.loss(task.forward(model, x), y).backward())
    model.zero_grad(set_to_none=True)
    model.train(was)
    return int(peak) + _state_bytes(model) + 2 * trainable


def process_peak_rss_bytes() -> int:
    """This process's peak resident set size: VmHWM of /proc/self/status on Linux, else `ru_maxrss`.

    `ru_maxrss` is not used on Linux because it keeps the peak of the process image replaced by exec:
    a command started by a large parent (a test runner, a benchmark harness) reports the parent's RSS."""
    try:
        with open("/proc/self/status", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB elsewhere


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
    result.update(task.stage_extras(shipped, bundle, spec, device))  # e.g. a causal LM's generations
    params, nonzero = count_params(shipped)
    targets = layer_weights(shipped, reference["targets"])
    target_nonzero = sum(int(torch.count_nonzero(w)) for w in targets.values())
    threads = spec.threads or torch.get_num_threads()
    seq = spec.sequence_length
    one = to_device(example_batch(bundle.test, 1, seq), device)
    result.update({
        "params": params,
        "nonzero_params": nonzero,
        # Relative to the dense model, so structured removal and zeroed weights compare directly.
        "sparsity": round(1.0 - nonzero / reference["params"], 6),
        "prunable_sparsity": round(1.0 - target_nonzero / reference["target_numel"], 6) if reference["target_numel"] else 0.0,
        **_encoder_sparsity(shipped, reference),
        "macs": macs(shipped, one),
        **serialized_sizes(shipped),  # size_bytes, gzip_bytes (+ sparse_bytes, sparse_gzip_bytes)
        "threads": threads,
        "device": str(device),
    })
    if spec.latency:
        big = to_device(example_batch(bundle.test, spec.latency_batch, seq), device)
        result["latency_ms"] = {
            "batch_1": latency_ms(shipped, task.forward, one, threads, spec.min_run_time),
            "batch_N": {"batch": spec.latency_batch, **latency_ms(shipped, task.forward, big, threads, spec.min_run_time)},
        }
    if spec.memory:
        big = to_device(example_batch(bundle.test, spec.latency_batch, seq), device)
        result["peak_memory_bytes"] = {"batch": spec.latency_batch, "bytes": peak_memory_bytes(shipped, task.forward, big, device)}
    if getattr(spec, "robustness", None) is not None:
        result["robustness"] = measure_robustness(shipped, task, bundle, spec.robustness, device)
    return result


def _encoder_linears(model: nn.Module) -> list[nn.Module]:
    """The linear layers of a transformer's encoder blocks (embeddings, pooler and head excluded)."""
    return [m for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".encoder." in f".{n}"]


def _encoder_sparsity(model: nn.Module, reference: dict[str, Any]) -> dict[str, Any]:
    if not reference.get("encoder_numel"):
        return {}
    nz = sum(int(torch.count_nonzero(m.weight)) for m in _encoder_linears(model))
    return {"encoder_linear_sparsity": round(1.0 - nz / reference["encoder_numel"], 6)}


def reference_counts(model: nn.Module, targets: list[str]) -> dict[str, Any]:
    params, _ = count_params(model)
    return {"params": params, "targets": targets,
            "target_numel": sum(w.numel() for w in layer_weights(model, targets).values()),
            "encoder_numel": sum(m.weight.numel() for m in _encoder_linears(model))}


def plan_rows(before: nn.Module, after: nn.Module, targets: list[str]) -> list[dict[str, Any]]:
    """Per-layer plan: shape before/after, sparsity relative to the dense layer, whether the layer was a
    target, and whether it was actually pruned (a smaller shape or zeros the dense layer did not have:
    a target the method leaves whole, such as a transformer's pooler, is not)."""
    plain = realise(after)
    after_mods = dict(plain.named_modules())
    moved = renames(plain)  # depth pruning renumbers the remaining blocks; a removed block's layers are gone
    now = {n: renamed(n, moved) for n, _ in prunable_layers(before)}
    after_w = layer_weights(plain, [n for n in now.values() if n is not None])
    rows = []
    for name, mod in prunable_layers(before):
        wb = layer_weight(mod)
        wa = after_w.get(now[name]) if now[name] is not None else None
        nz = int(torch.count_nonzero(wa)) if wa is not None else 0
        shape_after = layer_shape(after_mods[now[name]]) if wa is not None else []
        rows.append({
            "layer": name,
            "type": type(mod).__name__,
            "shape_before": layer_shape(mod),
            "shape_after": shape_after,
            "sparsity": round(1.0 - nz / wb.numel(), 6),
            "target": name in targets,
            "pruned": shape_after != layer_shape(mod) or nz < int(torch.count_nonzero(wb)),
        })
    return rows
