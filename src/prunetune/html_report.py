"""report.html: one self-contained page per run folder.

Every plot is embedded as a `data:image/png;base64,...` URI and the page's Content-Security-Policy
forbids loading anything else, so the file can be mailed, archived or opened offline as it is.
All text from the report (layer names, class names, paths, notes) is escaped with `html.escape`.

Example:
    >>> report = json.loads(Path("runs/x/report.json").read_text())   # doctest: +SKIP
    >>> write_html(report, Path("runs/x"))                             # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from .report import STAGES, _fmt_bytes, speedups
from .tasks import Task

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1b1b1b; margin: 24px auto;
       max-width: 1200px; padding: 0 16px; background: #fff; }
h1 { font-size: 22px; margin: 0 0 8px; } h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d0d0; padding: 3px 8px; text-align: left; white-space: nowrap; }
th { background: #f2f2f2; white-space: normal; vertical-align: bottom; }
div.scroll { overflow-x: auto; } td.n { text-align: right; } tr.hl td { font-weight: 600; }
img { max-width: 100%; height: auto; display: block; margin: 8px 0; }
p.note { color: #555; font-size: 13px; } code { background: #f4f4f4; padding: 0 3px; }
"""

# Counts the images that decoded once the page has loaded: a headless browser's DOM shows
# data-loaded="N" data-images="M" on <body>.
ONLOAD = """window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  document.body.setAttribute("data-loaded", String(ok));
  document.body.setAttribute("data-images", String(imgs.length));
});"""


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _cell(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else ("yes" if v else "no")
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return str(v)


def table(head: list[str], rows: list[list[Any]], numeric: set[int] = frozenset(), cls: list[str] | None = None) -> str:
    """An HTML table; every header and cell is escaped; `numeric` columns are right-aligned."""
    out = ['<div class="scroll"><table>', "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"]
    for i, row in enumerate(rows):
        attr = f' class="{esc(cls[i])}"' if cls and cls[i] else ""
        cells = "".join(f'<td class="n">{esc(c)}</td>' if j in numeric else f"<td>{esc(c)}</td>" for j, c in enumerate(row))
        out.append(f"<tr{attr}>{cells}</tr>")
    out.append("</table></div>")
    return "\n".join(out)


def img(data: bytes, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


def _page(title: str, body: list[str]) -> str:
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title>",
        f"<style>{CSS}</style>",
        f"<script>{ONLOAD}</script>",
        "</head><body>",
        *body,
        "</body></html>",
        "",
    ])


def _lat(s: dict[str, Any], key: str) -> str:
    lat = s.get("latency_ms")
    return f"{lat[key]['p50']:.3f}" if lat else "-"


def _stage_table(stages: dict[str, Any], task: Task) -> str:
    metric = task.metric
    names = [n for n in STAGES if n in stages]
    sp = speedups(stages)
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
        speed = (f"{r['speedup_batch_1']:.2f}× / {r['speedup_batch_N']:.2f}×" if "speedup_batch_1" in r else "-")
        row = [name, f"{s[metric]:.2f}", f"{s[metric] - dense[metric]:+.2f}", f"{s['params']:,}",
               f"{s['nonzero_params']:,}", f"{s['sparsity']:.3f}", f"{s['prunable_sparsity']:.3f}",
               f"{s['macs'] / 1e6:.2f} M (÷{r['macs_ratio']:.2f})", _fmt_bytes(s["size_bytes"]), _fmt_bytes(s["gzip_bytes"]),
               f"{_lat(s, 'batch_1')} / {_lat(s, 'batch_N')}" if s.get("latency_ms") else "-", speed]
        if mem:
            pm = s.get("peak_memory_bytes")
            row.append(_fmt_bytes(pm["bytes"]) if pm else "-")
        rows.append(row)
    return table(head, rows, numeric=set(range(1, len(head))), cls=["hl" if n_ == "finetuned" else "" for n_ in names])


def _robustness(stages: dict[str, Any]) -> list[str]:
    """Accuracy under noise and attacks, stage by stage (nothing when evaluate.robustness was off)."""
    from .robustness import note, table_head, table_rows

    rows = table_rows(stages, STAGES)
    if rows is None:
        return []
    head = table_head(STAGES, stages)
    return ['<section id="robustness">', "<h2>Robustness (accuracy %)</h2>", table(head, rows, numeric=set(range(1, len(head)))),
            f'<p class="note">{esc(note(stages))}</p>', "</section>"]


def _per_class(columns: dict[str, dict[str, Any]]) -> str:
    """One row per class, one column per (label -> per_class_accuracy)."""
    classes: list[str] = []
    for pc in columns.values():
        classes += [c for c in pc if c not in classes]
    rows = [[c, *("-" if pc.get(c) is None else f"{pc[c]:.2f}" for pc in columns.values())] for c in classes]
    return table(["class", *columns], rows, numeric=set(range(1, len(columns) + 1)))


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
        out.append(table(keys, [[_cell(r.get(k)) for k in keys] for r in rows]))
    png = sweep.get("pareto_png") if isinstance(sweep, dict) else None
    if png:
        path = Path(png)
        if not path.is_absolute() and folder is not None:
            path = folder / path
        if path.is_file():
            out.append(img(path.read_bytes(), f"sweep: {Task.of_report(sweep).metric} against cost (Pareto front)"))
    out.append("</section>")
    return out


def _images(report: dict[str, Any], images: dict[str, bytes] | None) -> dict[str, bytes]:
    if images is not None:
        return images
    from .report import figures

    return figures(report)


def render_run(report: dict[str, Any], folder: Path | None = None, images: dict[str, bytes] | None = None) -> str:
    r, stages, ft = report["recipe"], report["stages"], report["finetune"]
    task = Task.of_report(report)
    images = _images(report, images)
    title = f"prunetune run: {r['name']}"
    body = [f"<h1>{esc(title)}</h1>",
            f"<p>Model <code>{esc(r['model']['name'])}</code>, data <code>{esc(r['data']['source'])}</code>; "
            f"pruning <code>{esc(r['prune']['method'])}</code> ({esc(r['prune']['importance'])}, "
            f"{esc(r['prune']['schedule']['kind'])}), target sparsity {esc(r['prune']['sparsity'])}; fine-tuning "
            f"<code>{esc(r['finetune']['method'])}</code> {esc(ft['epochs_run'])} epochs (best {esc(ft['best_epoch'])}, "
            f"{ft['wall_s']:.1f} s).</p>"]
    if report.get("distill"):
        d = report["distill"]
        body.append(f'<p id="distill">Distilled from <code>{esc(d["teacher"])}</code> (test {esc(task.metric)} '
                    f"{task.format(d['teacher_test_' + task.metric])}), alpha {esc(d['alpha'])}, T {esc(d['temperature'])}; teacher logits "
                    f"{'cached per example' if d['cached_logits'] else 'per batch'}, teacher time {d['teacher_s']:.1f} s.</p>")
    body += ['<section id="stages">', "<h2>Stages</h2>", _stage_table(stages, task)]
    d = stages["dense"]
    body.append(f'<p class="note">Latency: <code>torch.utils.benchmark</code>, {esc(d["threads"])} thread(s), device '
                f"{esc(d.get('device', 'cpu'))}; speedup = dense p50 / stage p50 (measured, never inferred from MACs).</p>")
    body += _notes_and_curves(report, images)
    body += _robustness(stages)
    from .lm.report import html_section as samples_section

    body += samples_section(stages, STAGES)  # language models: generations per stage
    body += ['<section id="plan">', "<h2>Per-layer plan</h2>"]
    if "sparsity.png" in images:
        body.append(img(images["sparsity.png"], "per-layer sparsity"))
    body.append(table(["layer", "type", "shape before", "shape after", "sparsity", "pruned"],
                      [[p["layer"], p["type"], p["shape_before"], p["shape_after"], f"{p['sparsity']:.3f}",
                        "yes" if p["target"] else "no"] for p in report["plan"]], numeric={4}))
    body.append("</section>")
    if "per_class_accuracy" in stages["dense"]:
        body += ['<section id="per-class">', "<h2>Per-class test accuracy (%)</h2>",
                 _per_class({s: stages[s]["per_class_accuracy"] for s in STAGES if s in stages}), "</section>"]
    if "sweep" in report:
        body += _sweep(report["sweep"], folder)
    body.append(f'<p class="note">prunetune {esc(report.get("prunetune_version", ""))}, '
                f"torch {esc(report.get('torch_version', ''))}</p>")
    return _page(title, body)


def _notes_and_curves(report: dict[str, Any], images: dict[str, bytes]) -> list[str]:
    """The notes closing the stage section, then the training-curves section (run and refine pages)."""
    out = []
    if report.get("notes"):
        out.append("<ul>" + "".join(f"<li>{esc(x)}</li>" for x in report["notes"]) + "</ul>")
    out += ["</section>", '<section id="curves">', "<h2>Training curves</h2>"]
    if "curves.png" in images:
        out.append(img(images["curves.png"], "training curves: loss and validation accuracy per epoch"))
    out.append("</section>")
    return out


def render_refine(report: dict[str, Any], folder: Path | None = None, images: dict[str, bytes] | None = None) -> str:
    """The page of a `prunetune refine` folder: before / after on the new data and on the original test set."""
    images = _images(report, images)
    r, ft, st = report["recipe"], report["finetune"], report["stages"]
    task = Task.of_report(report)
    m = task.metric
    title = f"prunetune refine: {r['name']}"
    body = [f"<h1>{esc(title)}</h1>",
            f"<p>Re-fine-tuned <code>{esc(report['source_model'])}</code> on <code>{esc(r['data']['source'])}</code> data "
            f"at <code>{esc(r['data'].get('path'))}</code>: {esc(ft['epochs_run'])} epochs (best {esc(ft['best_epoch'])}, "
            f"{ft['wall_s']:.1f} s). Architecture and masks kept: "
            f"{'yes' if report.get('sparsity_kept') else 'NO'}.</p>"]
    n = st["before"]["new_data"].get("latency_ms", {}).get("batch_N", {}).get("batch", "N")
    rows, cls = [], []
    for data, label in (("new_data", "new data"), ("original_test", "original test")):
        for stage in ("before", "after"):
            s = st[stage][data]
            rows.append([stage, label, _cell(s.get("examples", "-")), task.format(s[m]),
                         task.format(s[m] - st['before'][data][m], signed=True), f"{s['nonzero_params']:,}",
                         f"{s['sparsity']:.3f}", _fmt_bytes(s["size_bytes"]), _fmt_bytes(s["gzip_bytes"]),
                         f"{_lat(s, 'batch_1')} / {_lat(s, 'batch_N')}" if s.get("latency_ms") else "-"])
            cls.append("hl" if stage == "after" else "")
    body += ['<section id="stages">', "<h2>Before and after</h2>",
             table(["stage", "test set", "examples", f"test {task.label}" + (" %" if task.percent else ""),
                    f"Δ {task.units}", "non-zero", "sparsity", "size", "gzip",
                    f"p50 ms b1 / b{n}"], rows, numeric=set(range(2, 10)), cls=cls),
             '<p class="note">The original test set shows what the new data made the model forget.</p>']
    body += _notes_and_curves(report, images)
    if "per_class_accuracy" in st["before"]["new_data"]:  # tasks with classes
        body += ['<section id="per-class">', "<h2>Per-class test accuracy (%)</h2>",
                 _per_class({f"{stage} / {label}": st[stage][data]["per_class_accuracy"]
                             for data, label in (("new_data", "new"), ("original_test", "original"))
                             for stage in ("before", "after")}), "</section>"]
    return _page(title, body)


def render(report: dict[str, Any], folder: Path | None = None, images: dict[str, bytes] | None = None) -> str:
    """The page for a run report, or for a refine report (it has `source_model`)."""
    if "source_model" in report:
        return render_refine(report, folder, images)
    return render_run(report, folder, images)


def write_html(report: dict[str, Any], folder: Path, images: dict[str, bytes] | None = None) -> Path:
    """Write `folder/report.html`; `images` ({"curves.png": bytes, ...}) are rendered from the report when omitted."""
    folder = Path(folder)
    path = folder / "report.html"
    path.write_text(render(report, folder, images), encoding="utf-8")
    return path


def render_sweep(doc: dict[str, Any], folder: Path) -> str:
    """The page of a sweep folder: balance point, Pareto plot and every trial."""
    task = Task.of_report(doc)
    metric, key, higher = task.metric, task.key, task.higher_is_better
    body = [f"<h1>Sweep {esc(doc['study'])}</h1>",
            f"<p>Validation {esc(metric)} ({'max' if higher else 'min'}) against {esc(doc['objective_label'])} (min). "
            f"Dense validation {esc(metric)} <b>{task.format(doc['dense'][key])}</b>, tolerance {doc['tolerance']} "
            f"{esc(task.units)} (threshold {task.format(doc['threshold'])}). "
            f"Trials: {esc(', '.join(f'{n} {s}' for s, n in doc['counts'].items()))}.</p>"]
    b = doc.get("balance")
    if b:
        t = b.get("test") or {}
        rows = [[f"validation {metric}", task.format(b[key])], [doc["objective_label"], _cell(b["cost"])]]
        if t:
            rows += [[f"test {metric} (dense)", f"{task.format(t[metric])} ({task.format(t['dense_' + metric])})"],
                     ["measured speedup batch 1 / N", f"{_cell(t.get('speedup_batch_1'))}× / {_cell(t.get('speedup_batch_N'))}×"],
                     ["parameters / non-zeros", f"{t['params']:,} / {t['nonzero_params']:,}"],
                     ["size (gzip)", f"{_fmt_bytes(t['size_bytes'])} ({_fmt_bytes(t['gzip_bytes'])})"]]
        body += [f"<h2>Balance point: trial {doc['balance_trial']}</h2>",
                 f"<p>{esc(', '.join(f'{k} = {v}' for k, v in b['params'].items()))}</p>", table(["", "value"], rows)]
    else:
        body.append("<p>No trial is within the tolerance yet.</p>")
    png = folder / "pareto.png"
    if png.is_file():
        body += ["<h2>Pareto front</h2>",
                 img(png.read_bytes(), f"sweep: validation {metric} against cost, Pareto front and balance point")]
    head = ["trial", "state", "params", f"val {task.label}", "cost", "speedup", "Pareto", "note"]
    trs = [[r["trial"], r["state"], ", ".join(f"{k}={v}" for k, v in r["params"].items()), r.get(key), r["cost"],
            r.get("speedup"), "balance" if r["balance"] else ("yes" if r["pareto"] else ""), r.get("note", "")] for r in doc["rows"]]
    body += ["<h2>Trials</h2>", table(head, [[_cell(v) for v in r] for r in trs], numeric={0, 3, 4, 5})]
    return _page(f"prunetune sweep {doc['study']}", body)
