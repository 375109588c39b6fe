"""How numbers read in reports, pages and the command line: bytes, a task's metric, speedups."""

from __future__ import annotations

from typing import Any


def pruned_text(row: dict[str, Any]) -> str:
    """A plan row's "pruned" cell: yes only for a layer actually pruned; a target left whole, and a layer
    kept whose inputs shrank with the layer before it (the classifier), say so. Reports written before
    rows carried `pruned` fall back to `target`."""
    pruned = row.get("pruned", row["target"])
    if row["target"]:
        return "yes" if pruned else "no (target, left whole)"
    return "inputs only (not a target)" if pruned else "no"

# Said where a report shows a teacher the recipe did not ask for.
AUTO_DISTILL = (" The default after channel pruning of an image classifier (finetune.distill: auto); set finetune.distill "
                "to null to fine-tune without a teacher.")

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


NO_CHANGE = "no measurable change"


def speedups(stages: dict[str, Any], measured: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Per stage: the MAC ratio and the measured speedups dense / stage at batch 1 and N.

    Without `measured`, `speedup_batch_<b>` is the ratio of the stages' p50 latencies (timed one after
    the other). With `measured[stage]` (timing.stage_speedup: the stage timed alternately with the
    dense model) the row also carries those records under `measured` and `speedup_batch_<b>` is their
    ratio of medians."""
    dense = stages["dense"]
    out = {}
    for name, s in stages.items():
        row: dict[str, Any] = {"macs_ratio": round(dense["macs"] / max(1, s["macs"]), 3)}
        if "latency_ms" in s and "latency_ms" in dense:
            for key in ("batch_1", "batch_N"):
                row[f"speedup_{key}"] = round(dense["latency_ms"][key]["p50"] / s["latency_ms"][key]["p50"], 3)
        if measured and name in measured:
            row["measured"] = measured[name]
            for key, rec in measured[name].items():
                row[f"speedup_{key}"] = rec["ratio"]
        out[name] = row
    return out


def compute_line(c: dict[str, Any]) -> str:
    """A sweep's compute (its sweep.json `compute`, search/compute.py) in one sentence: sweep.md, report.html, the CLI."""
    how = (f"fine-tuning seconds over the dense model's {c['dense_epoch_s']:.3g} s per training epoch"
           + (f" ({c['dense_epoch_s_from']})" if c.get("dense_epoch_s_from") else "")
           if c["basis"] == "measured" else "fine-tuning epochs weighted by MACs relative to dense (no dense epoch timing)")
    dense = f", including the dense training ({c['dense_training_epochs']} epochs)" if c["dense_training_epochs"] else ""
    text = (f"Compute: {c['dense_epochs']:.2f} dense-training-epoch equivalents ({how}{dense}); "
            f"{c['trials']} trials, {c['finetune_epochs']} fine-tuning epochs, {c['wall_s']:.0f} s of trial wall time.")
    if c.get("budget_dense_epochs") is not None:
        text += (f" Budget {c['budget_dense_epochs']:g} dense epochs: "
                 + (f"spent, or would be by a trial of the mean cost ({c.get('next_trial_expected', 0):.2f}); "
                    "no further trials were launched." if c["budget_spent"] else "not yet spent."))
    return text


def warm_line(w: dict[str, Any], file: str) -> str:
    """A sweep's warm start (its sweep.json `warm_start`) in one sentence: sweep.md and report.html."""
    if w.get("points"):
        pts = ", ".join(str(p["prune.sparsity"]) for p in w["points"])
        return f"Warm start: the first trials were enqueued at prune.sparsity {pts}, from {file} (layer drops assumed additive)."
    return (f"Warm start: {file} predicts prune.sparsity {w.get('predicted'):g} within the tolerance before fine-tuning "
            "(layer drops assumed additive); the bisection starts above it.")


def bisect_line(record: dict[str, Any] | None) -> str | None:
    """A sweep's bisection (its sweep.json `bisect`, search/bisect.py) in one sentence: the points bisected,
    what each gave, and the bracket the boundary lies in; None when it ran no trial."""
    if not record or not record.get("trials"):
        return None
    pts = ", ".join(f"{r['prune.sparsity']:g} ({r['outcome'] or 'no verdict'})" for r in record["trials"])
    start = (f"above the warm start's predicted {record['start']:g}" if record.get("start_from") == "warm_start"
             else f"from the range's low end {record['start']:g}")
    lo, hi = record["bracket"]
    return (f"Bisection of prune.sparsity {start} up to {record['range'][1]:g}: trials at {pts}; "
            f"the boundary lies in [{lo:g}, {hi:g}].")


def speedup_text(rec: dict[str, Any] | float | None) -> str:
    """A speedup as people read it: "2.71× (2.60–2.83)" (ratio and 95 % interval), "no measurable change"
    when the interval contains 1.0 or its verdict says so, a bare "1.23×" for a report from before
    intervals (a float), "-" for none."""
    if rec is None:
        return "-"
    if isinstance(rec, (int, float)):
        return f"{rec:.2f}×"
    if rec.get("verdict") == NO_CHANGE or rec["low"] <= 1.0 <= rec["high"]:
        return NO_CHANGE
    return f"{rec['ratio']:.2f}× ({rec['low']:.2f}–{rec['high']:.2f})"


def stage_speedup_text(row: dict[str, Any] | None, key: str) -> str:
    """A stage's speedup at `key` (batch_1 / batch_N) from its report.json `speedup` row, old or new."""
    row = row or {}
    rec = (row.get("measured") or {}).get(key)
    return speedup_text(rec if rec is not None else row.get(f"speedup_{key}"))


def speedup_notes(row: dict[str, Any] | None) -> list[str]:
    """What a reader must know about a stage's speedups: noise reasons and the masked-weights note,
    each once, prefixed by the batch it concerns ("b1: ..."); empty for a clean or old record."""
    notes: list[str] = []
    for key, rec in ((row or {}).get("measured") or {}).items():
        tag = "b1" if key == "batch_1" else f"b{rec.get('batch', 'N')}"
        if rec.get("noisy"):
            notes.append(f"{tag} noisy: " + "; ".join(rec.get("reasons") or ["unstable timing"]))
        if rec.get("note") and rec["note"] not in notes:
            notes.append(rec["note"])
    return notes


def interval_text(value: Any, low: Any = None, high: Any = None) -> str:
    """A cost with its interval, "0.870 (0.800–0.950)"; just the value without one; "" for none."""
    if value is None:
        return ""
    if low is None or high is None:
        return short(value)
    return f"{value:.3f} ({low:.3f}–{high:.3f})"


def row_speedup(r: dict[str, Any]) -> str:
    """A sweep trial's speedup: with its interval (`speedup_low` / `speedup_high`) as `speedup_text` shows
    one; a bare number for a trial stored before intervals; "" when none was measured."""
    if not r.get("speedup"):
        return ""
    if r.get("speedup_low") is not None and r.get("speedup_high") is not None:
        return speedup_text({"ratio": r["speedup"], "low": r["speedup_low"], "high": r["speedup_high"], "verdict": r.get("verdict")})
    return f"{r['speedup']:.2f}×"
