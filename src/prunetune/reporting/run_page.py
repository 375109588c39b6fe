"""report.html of a run folder: stages, curves, robustness, generations, per-layer plan, per class."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import classes, robustness, samples
from .format import AUTO_DISTILL, STAGES, pruned_text, fmt_bytes, size_cells, speedup_notes, speedups, stage_speedup_text
from .html import cell, esc, img, lat, notes_and_curves, page, per_class, table
from ..tasks import Task
from .model import RunReport


def stage_table(stages: dict[str, Any], task: Task, speedup: dict[str, Any] | None = None) -> str:
    """Dense, pruned and fine-tuned side by side: metric, counts, MACs, sizes, latency, speedups."""
    metric = task.metric
    names = [n for n in STAGES if n in stages]
    sp = speedup or speedups(stages)  # a report from before `speedup` was stored: from the stages
    dense = stages["dense"]
    n = dense.get("latency_ms", {}).get("batch_N", {}).get("batch", "N")
    mem = any("peak_memory_bytes" in stages[s] for s in names)
    head = ["stage", f"test {task.label}" + (" %" if task.percent else ""), "Δ", "params", "non-zero", "sparsity", "prunable sparsity", "MACs (÷)",
            "size", "gzip", f"p50 ms b1 / b{n}", f"measured speedup b1 / b{n}"]
    if mem:
        head.append(f"peak memory b{n}")
    rows = []
    for name in names:
        s, r = stages[name], sp[name]
        speed = (f"{stage_speedup_text(r, 'batch_1')} / {stage_speedup_text(r, 'batch_N')}" if "speedup_batch_1" in r else "-")
        row = [name, f"{s[metric]:.2f}", f"{s[metric] - dense[metric]:+.2f}", f"{s['params']:,}",
               f"{s['nonzero_params']:,}", f"{s['sparsity']:.3f}", f"{s['prunable_sparsity']:.3f}",
               f"{s['macs'] / 1e6:.2f} M (÷{r['macs_ratio']:.2f})", *size_cells(s),
               f"{lat(s, 'batch_1')} / {lat(s, 'batch_N')}" if s.get("latency_ms") else "-", speed]
        if mem:
            pm = s.get("peak_memory_bytes")
            row.append(fmt_bytes(pm["bytes"]) if pm else "-")
        rows.append(row)
    return table(head, rows, numeric=set(range(1, len(head))), cls=["hl" if n_ == "finetuned" else "" for n_ in names])


def _sweep(sweep: Any, folder: Path | None) -> list[str]:
    """Generic: a table of the sweep's rows (list of dicts) and its Pareto plot when the file exists."""
    rows = sweep.get("rows", []) if isinstance(sweep, dict) else sweep
    rows = [r for r in rows or [] if isinstance(r, dict)]
    title = sweep.get("title", "Sweep") if isinstance(sweep, dict) else "Sweep"
    out = ['<section id="sweep">', f"<h2>{esc(title)}</h2>"]
    if rows:
        keys: list[str] = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        out.append(table(keys, [[cell(r.get(k)) for k in keys] for r in rows]))
    png = sweep.get("pareto_png") if isinstance(sweep, dict) else None
    if png:
        path = Path(png)
        if not path.is_absolute() and folder is not None:
            path = folder / path
        if path.is_file():
            out.append(img(path.read_bytes(), f"sweep: {Task.of_report(sweep).metric} against cost (Pareto front)"))
    out.append("</section>")
    return out


def render_run(report: RunReport, folder: Path | None, images: dict[str, bytes]) -> str:
    """The page of a run folder; `images` are the run's plots (plots.figures)."""
    r, stages, ft = report.recipe, report.stages, report.finetune
    task = report.metric_task()
    title = f"prunetune run: {r['name']}"
    body = [f"<h1>{esc(title)}</h1>",
            f"<p>Model <code>{esc(r['model']['name'])}</code>, data <code>{esc(r['data']['source'])}</code>; "
            f"pruning <code>{esc(r['prune']['method'])}</code> ({esc(r['prune']['importance'])}, "
            f"{esc(r['prune']['schedule']['kind'])}), target sparsity {esc(r['prune']['sparsity'])}; fine-tuning "
            f"<code>{esc(r['finetune']['method'])}</code> {esc(ft['epochs_run'])} epochs (best {esc(ft['best_epoch'])}, "
            f"{ft['wall_s']:.1f} s).</p>"]
    if report.distill:
        d = report.distill
        body.append(f'<p id="distill">Distilled from <code>{esc(d["teacher"])}</code> (test {esc(task.metric)} '
                    f"{task.format(d['teacher_test_' + task.metric])}), alpha {esc(d['alpha'])}, T {esc(d['temperature'])}; teacher logits "
                    f"{'cached per example' if d['cached_logits'] else 'per batch'}, teacher time {d['teacher_s']:.1f} s."
                    f"{esc(AUTO_DISTILL) if d.get('auto') else ''}</p>")
    body += ['<section id="stages">', "<h2>Stages</h2>", stage_table(stages, task, report.speedup)]
    d = stages["dense"]
    sp = report.speedup or {}
    timed = any((sp.get(s) or {}).get("measured") for s in STAGES)
    how = ("speedup = dense / stage median latency, each stage timed alternately with the dense model, with its 95 % "
           "bootstrap interval (&quot;no measurable change&quot; when the interval contains 1)" if timed
           else "speedup = dense p50 / stage p50")
    body.append(f'<p class="note">Latency: <code>torch.utils.benchmark</code>, {esc(d["threads"])} thread(s), device '
                f"{esc(d.get('device', 'cpu'))}; {how} (measured, never inferred from MACs).</p>")
    notes = [f"{s}: {n}" for s in STAGES for n in speedup_notes(sp.get(s))]
    if notes:
        body.append('<ul class="note" id="latency-notes">' + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    body += notes_and_curves(report.notes, images)
    body += robustness.html_section(stages, STAGES)
    body += samples.html_section(stages, STAGES)  # language models: generations per stage
    body += ['<section id="plan">', "<h2>Per-layer plan</h2>"]
    if "sparsity.png" in images:
        body.append(img(images["sparsity.png"], "per-layer sparsity"))
    body.append(table(["layer", "type", "shape before", "shape after", "sparsity", "pruned"],
                      [[p["layer"], p["type"], p["shape_before"], p["shape_after"], f"{p['sparsity']:.3f}",
                        pruned_text(p)] for p in report.plan], numeric={4}))
    body.append("</section>")
    if "per_class_accuracy" in stages["dense"]:
        body += ['<section id="per-class">', "<h2>Per-class test accuracy (%)</h2>",
                 per_class({s: stages[s]["per_class_accuracy"] for s in STAGES if s in stages}), "</section>"]
    body += classes.html_section(stages, images)
    if report.sweep is not None:
        body += _sweep(report.sweep, folder)
    body.append(f'<p class="note">prunetune {esc(report.prunetune_version)}, '
                f"torch {esc(report.torch_version)}</p>")
    return page(title, body)
