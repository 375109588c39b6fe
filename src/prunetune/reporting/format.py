"""How numbers read in reports, pages and the command line: bytes, a task's metric, speedups."""

from __future__ import annotations

from typing import Any

STAGES = ("dense", "pruned", "finetuned")


def fmt_bytes(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def size_cells(s: dict[str, Any]) -> tuple[str, str]:
    """A stage's "size" and "gzip" cells: the dense safetensors layout, and beside it the bitmask +
    values file model/ holds when the stage is mostly zeros (`sparse_bytes`; absent in older reports)."""
    size, gz = fmt_bytes(s["size_bytes"]), fmt_bytes(s["gzip_bytes"])
    if "sparse_bytes" in s:
        size += f" (sparse {fmt_bytes(s['sparse_bytes'])})"
        gz += f" (sparse {fmt_bytes(s['sparse_gzip_bytes'])})"
    return size, gz


def short(v: Any) -> str:
    """A parameter or cost as a sweep shows it: four significant digits for floats."""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def speedups(stages: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Measured latency ratios dense / stage (p50), beside the MAC ratio."""
    dense = stages["dense"]
    out = {}
    for name, s in stages.items():
        row = {"macs_ratio": round(dense["macs"] / max(1, s["macs"]), 3)}
        if "latency_ms" in s and "latency_ms" in dense:
            for key in ("batch_1", "batch_N"):
                row[f"speedup_{key}"] = round(dense["latency_ms"][key]["p50"] / s["latency_ms"][key]["p50"], 3)
        out[name] = row
    return out


def compute_line(c: dict[str, Any]) -> str:
    """A sweep's compute (its sweep.json `compute`, search/compute.py) in one sentence: sweep.md, report.html, the CLI."""
    how = (f"fine-tuning seconds over the dense model's {c['dense_epoch_s']:.3g} s per training epoch"
           if c["basis"] == "measured" else "fine-tuning epochs weighted by MACs relative to dense (no dense epoch timing)")
    dense = f", including the dense training ({c['dense_training_epochs']} epochs)" if c["dense_training_epochs"] else ""
    text = (f"Compute: {c['dense_epochs']:.2f} dense-training-epoch equivalents ({how}{dense}); "
            f"{c['trials']} trials, {c['finetune_epochs']} fine-tuning epochs, {c['wall_s']:.0f} s of trial wall time.")
    if c.get("budget_dense_epochs") is not None:
        text += (f" Budget {c['budget_dense_epochs']:g} dense epochs: "
                 + ("spent, no further trials were launched." if c["budget_spent"] else "not yet spent."))
    return text

