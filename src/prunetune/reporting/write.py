"""Writing a folder's reports: report.json, report.md, the plots and report.html of a run or a refine;
sweep.json, sweep.md, pareto.png and report.html of a sweep. The page and the document follow the
report's `kind`.

Example:
    >>> write_html(load_report(Path("runs/x/report.json")), Path("runs/x"))   # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .markdown import markdown
from .model import RefineReport, RunReport, SweepReport, load_report
from .plots import figures, pareto_plot, write_plots
from .refine_page import render_refine
from .run_page import render_run
from .sweep_page import render_sweep

AnyReport = RunReport | RefineReport | SweepReport


def render(report: AnyReport | dict[str, Any], folder: Path | None = None, images: dict[str, bytes] | None = None) -> str:
    """The report.html page of a report (typed, or as read from its JSON file), by its kind; the
    plots of a run or refine are rendered from the report unless `images` are given."""
    rep = report if isinstance(report, (RunReport, RefineReport, SweepReport)) else load_report(report)
    if isinstance(rep, SweepReport):
        return render_sweep(rep, folder)
    images = figures(rep) if images is None else images
    if isinstance(rep, RefineReport):
        return render_refine(rep, images)
    return render_run(rep, folder, images)


def write_html(report: AnyReport | dict[str, Any], folder: Path, images: dict[str, bytes] | None = None) -> Path:
    """Write `folder/report.html`; `images` ({"curves.png": bytes, ...}) are rendered from the report when omitted."""
    folder = Path(folder)
    path = folder / "report.html"
    path.write_text(render(report, folder, images), encoding="utf-8")
    return path


def write_reports(report: dict[str, Any], folder: Path) -> None:
    """report.json (the dict as given), report.md, the PNG plots and report.html of a run or refine report."""
    rep = load_report(report)
    (folder / "report.json").write_text(json.dumps(report, indent=2))
    (folder / "report.md").write_text(markdown(rep))
    images = figures(rep)
    write_plots(folder, images)
    write_html(rep, folder, images)


def write_sweep(doc: dict[str, Any], folder: Path, dense_cost: float | None) -> list[str]:
    """sweep.json (the dict as given), sweep.md, pareto.png (the dense model drawn at `dense_cost`) and
    report.html into `folder`; their names."""
    rep = load_report(doc)
    (folder / "sweep.json").write_text(json.dumps(doc, indent=2))
    (folder / "sweep.md").write_text(markdown(rep))
    pareto_plot(rep, folder / "pareto.png", dense_cost)
    write_html(rep, folder)
    return ["sweep.json", "sweep.md", "pareto.png", "report.html"]
