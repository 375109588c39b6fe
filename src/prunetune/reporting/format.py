"""How numbers read in reports, pages and the command line: bytes, a task's metric, speedups."""

from __future__ import annotations

from typing import Any

STAGES = ("dense", "pruned", "finetuned")


def fmt_bytes(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


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
