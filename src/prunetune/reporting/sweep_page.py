"""report.html of a sweep folder: the balance point, the Pareto plot and every trial."""

from __future__ import annotations

from pathlib import Path

from .format import bisect_line, compute_line, fmt_bytes, interval_text, row_speedup, speedup_notes, stage_speedup_text, warm_line
from .html import cell, esc, img, page, table
from .model import SweepReport


def render_sweep(doc: SweepReport, folder: Path | None) -> str:
    """The page of a sweep folder; the Pareto plot is `folder/pareto.png` when it exists."""
    task = doc.metric_task()
    metric, key, higher = task.metric, task.key, task.higher_is_better
    body = [f"<h1>Sweep {esc(doc.study)}</h1>",
            f"<p>Validation {esc(metric)} ({'max' if higher else 'min'}) against {esc(doc.objective_label)} (min). "
            f"Dense validation {esc(metric)} <b>{task.format(doc.dense[key])}</b>, tolerance {doc.tolerance} "
            f"{esc(task.units)} (threshold {task.format(doc.threshold)}). "
            f"Trials: {esc(', '.join(f'{n} {s}' for s, n in doc.counts.items()))}.</p>"]
    if doc.compute:
        body.append(f"<p>{esc(compute_line(doc.compute))}</p>")
    if doc.fidelity and doc.fidelity.get("setting") != "full":
        body.append(f"<p>Fidelity: {esc(doc.fidelity['rule'])}.</p>")
    if doc.warm_start:
        body.append(f"<p>{esc(warm_line(doc.warm_start, doc.warm_start['file']))}</p>")
    if line := bisect_line(doc.bisect):
        body.append(f"<p>{esc(line)}</p>")
    b = doc.balance
    if b:
        t = b.get("test") or {}
        rows = [[f"validation {metric}", task.format(b[key])], [doc.objective_label, interval_text(b["cost"], b.get("cost_low"), b.get("cost_high"))]]
        if t:
            rows += [[f"test {metric} (dense)", f"{task.format(t[metric])} ({task.format(t['dense_' + metric])})"],
                     ["measured speedup batch 1 / N", f"{stage_speedup_text(t, 'batch_1')} / {stage_speedup_text(t, 'batch_N')}"
                      + "".join(f"; {n}" for n in speedup_notes(t))],
                     ["parameters / non-zeros", f"{t['params']:,} / {t['nonzero_params']:,}"],
                     ["size (gzip)", f"{fmt_bytes(t['size_bytes'])} ({fmt_bytes(t['gzip_bytes'])})"]]
        body += [f"<h2>Balance point: trial {doc.balance_trial}</h2>",
                 f"<p>{esc(', '.join(f'{k} = {v}' for k, v in b['params'].items()))}</p>", table(["", "value"], rows)]
    else:
        body.append("<p>No trial is within the tolerance yet.</p>")
    png = folder / "pareto.png" if folder is not None else None
    if png is not None and png.is_file():
        body += ["<h2>Pareto front</h2>",
                 img(png.read_bytes(), f"sweep: validation {metric} against cost, Pareto front and balance point")]
    head = ["trial", "state", "params", f"val {task.label}", "cost", "speedup", "epochs", "dense epochs", "Pareto", "note"]
    trs = [[r["trial"], r["state"], ", ".join(f"{k}={v}" for k, v in r["params"].items()), r.get(key),
            interval_text(r["cost"], r.get("cost_low"), r.get("cost_high")), row_speedup(r), r.get("epochs_run"),
            r.get("dense_epochs"), "balance" if r["balance"] else ("yes" if r["pareto"] else ""), r.get("note", "")]
           for r in doc.rows]
    body += ["<h2>Trials</h2>", table(head, [[cell(v) for v in r] for r in trs], numeric={0, 3, 4, 5, 6, 7})]
    return page(f"prunetune sweep {doc.study}", body)
