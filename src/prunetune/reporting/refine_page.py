"""report.html of a refine folder: before / after on the new data and on the original test set."""

from __future__ import annotations

from .format import size_cells
from .html import cell, esc, lat, notes_and_curves, page, per_class, table
from .model import RefineReport


def render_refine(report: RefineReport, images: dict[str, bytes]) -> str:
    """The page of a `prunetune refine` folder; `images` are its plots (plots.figures)."""
    r, ft, st = report.recipe, report.finetune, report.stages
    task = report.metric_task()
    m = task.metric
    title = f"prunetune refine: {r['name']}"
    body = [f"<h1>{esc(title)}</h1>",
            f"<p>Re-fine-tuned <code>{esc(report.source_model)}</code> on <code>{esc(r['data']['source'])}</code> data "
            f"at <code>{esc(r['data'].get('path'))}</code>: {esc(ft['epochs_run'])} epochs (best {esc(ft['best_epoch'])}, "
            f"{ft['wall_s']:.1f} s). Architecture and masks kept: "
            f"{'yes' if report.sparsity_kept else 'NO'}.</p>"]
    n = st["before"]["new_data"].get("latency_ms", {}).get("batch_N", {}).get("batch", "N")
    rows, cls = [], []
    for data, label in (("new_data", "new data"), ("original_test", "original test")):
        for stage in ("before", "after"):
            s = st[stage][data]
            rows.append([stage, label, cell(s.get("examples", "-")), task.format(s[m]),
                         task.format(s[m] - st["before"][data][m], signed=True), f"{s['nonzero_params']:,}",
                         f"{s['sparsity']:.3f}", *size_cells(s),
                         f"{lat(s, 'batch_1')} / {lat(s, 'batch_N')}" if s.get("latency_ms") else "-"])
            cls.append("hl" if stage == "after" else "")
    body += ['<section id="stages">', "<h2>Before and after</h2>",
             table(["stage", "test set", "examples", f"test {task.label}" + (" %" if task.percent else ""),
                    f"Δ {task.units}", "non-zero", "sparsity", "size", "gzip",
                    f"p50 ms b1 / b{n}"], rows, numeric=set(range(2, 10)), cls=cls),
             '<p class="note">The original test set shows what the new data made the model forget.</p>']
    body += notes_and_curves(report.notes, images)
    if "per_class_accuracy" in st["before"]["new_data"]:  # tasks with classes
        body += ['<section id="per-class">', "<h2>Per-class test accuracy (%)</h2>",
                 per_class({f"{stage} / {label}": st[stage][data]["per_class_accuracy"]
                            for data, label in (("new_data", "new"), ("original_test", "original"))
                            for stage in ("before", "after")}), "</section>"]
    return page(title, body)
