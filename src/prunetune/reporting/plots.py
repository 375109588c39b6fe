"""The reports' figures (matplotlib, rendered off-screen): training curves and per-layer sparsity of a
run, the Pareto plot of a sweep."""

from __future__ import annotations

import io
from pathlib import Path

from . import classes
from .model import RefineReport, RunReport, SweepReport


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figures(report: RunReport | RefineReport) -> dict[str, bytes]:
    """The plots as PNG bytes, rendered in memory: {"curves.png": ..., "sparsity.png": ..., "confusion.png": ...}.

    sparsity.png needs a per-layer plan and confusion.png a classification run's confusion matrix (run
    reports); a report without them gets only the curves.
    """
    plt = _pyplot()

    def png(fig) -> bytes:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        return buf.getvalue()

    out = {}
    task = report.metric_task()
    metric = task.metric
    dense_history = report.dense.get("history", []) if isinstance(report, RunReport) else []
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, hist in (("dense", dense_history), ("fine-tune", report.finetune["history"])):
        if not hist:
            continue
        x = range(1, len(hist) + 1)
        axes[0].plot(x, [h["train_loss"] for h in hist], marker="o", label=f"{label} train")
        axes[0].plot(x, [h["val_loss"] for h in hist], marker="x", ls="--", label=f"{label} val")
        axes[1].plot(x, [h.get(f"val_{metric}") for h in hist], marker="o", label=label)
    axes[0].set(title="loss", xlabel="epoch")
    axes[1].set(title=f"validation {metric}" + (" (%)" if task.percent else ""), xlabel="epoch")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    out["curves.png"] = png(fig)

    plan = report.plan if isinstance(report, RunReport) else []
    if plan:
        fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(plan) + 2), 3.8))
        ax.bar(range(len(plan)), [p["sparsity"] for p in plan], color=["tab:blue" if p["target"] else "tab:gray" for p in plan])
        ax.set_xticks(range(len(plan)), [p["layer"] for p in plan], rotation=60, ha="right", fontsize=7)
        ax.set(ylim=(0, 1), ylabel="sparsity vs dense", title="per-layer sparsity (grey: not pruned)")
        fig.tight_layout()
        out["sparsity.png"] = png(fig)
    if isinstance(report, RunReport):
        fig = classes.confusion_figure(plt, report.stages)
        if fig is not None:
            out["confusion.png"] = png(fig)
    return out


def write_plots(folder: Path, images: dict[str, bytes]) -> list[str]:
    """Write the rendered plots (from `figures`) into `folder`; their file names."""
    for name, data in images.items():
        (folder / name).write_bytes(data)
    return list(images)


def pareto_plot(doc: SweepReport, path: Path, dense_cost: float | None) -> None:
    """pareto.png of a sweep: every trial's metric against its cost, the front, the tolerance line, the
    balance point and the dense model (at `dense_cost`; not drawn when None)."""
    plt = _pyplot()
    task = doc.metric_task()
    metric, key, higher = task.metric, task.key, task.higher_is_better
    dense_val, thr = doc.dense[key], doc.threshold
    done = [r for r in doc.rows if r.get(key) is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ax.scatter([r["cost"] for r in done], [r[key] for r in done], s=18, color="#9aa5b1", label="trials")
    front = sorted((r for r in done if r["pareto"]), key=lambda r: r["cost"])
    if front:
        ax.plot([r["cost"] for r in front], [r[key] for r in front], "-o", color="#1f6feb", ms=5, label="Pareto front")
    if dense_cost is not None:
        ax.scatter([dense_cost], [dense_val], marker="*", s=160, color="black", label="dense", zorder=5)
    ax.axhline(thr, ls="--", color="#d1242f", lw=1,
               label=f"dense {'−' if higher else '+'} {doc.tolerance} {task.units}")
    bal = next((r for r in done if r["balance"]), None)
    if bal:
        ax.scatter([bal["cost"]], [bal[key]], s=140, facecolors="none", edgecolors="#d1242f", lw=2,
                   label=f"balance point (trial {bal['trial']})", zorder=6)
    if doc.objective == "latency":
        ax.axvline(1.0, color="black", lw=0.6, alpha=0.4)
    ax.set_xlabel(doc.objective_label)
    ax.set_ylabel(f"validation {metric} (%)" if task.percent
                  else f"validation {metric} ({'higher' if higher else 'lower'} is better)")
    if doc.objective != "latency":
        ax.set_xscale("log")
    vals = [r[key] for r in done]
    if task.percent:
        lo, hi = min(vals + [thr]), max(vals + [dense_val])
        ax.set_ylim(max(lo - 1, thr - 8), hi + 1)  # far-off trials fall below the frame
    else:
        # Far-off trials (a perplexity that exploded) fall outside the frame: it reaches at most four
        # times the dense-to-threshold distance beyond the threshold.
        sign = 1.0 if higher else -1.0
        best = max(vals + [dense_val], key=lambda v: sign * v)
        worst = min(vals + [thr], key=lambda v: sign * v)
        reach = 4 * max(abs(best - thr), abs(doc.tolerance), 1e-9)
        worst = max(worst, thr - reach) if higher else min(worst, thr + reach)
        pad = 0.05 * max(abs(best - worst), 1e-9)
        ax.set_ylim(min(best, worst) - pad, max(best, worst) + pad)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right" if higher else "upper right")
    ax.set_title(f"sweep {doc.study}: {metric} against {doc.objective_label}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def sensitivity_figure(doc: dict) -> bytes:
    """sensitivity.png of `prunetune sensitivity`: one line per layer (amount pruned alone against the
    validation metric, from the dense model at amount 0), the dense model as a dashed line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    xs = [0.0] + [float(a) for a in doc["amounts"]]
    for row in doc["layers"]:
        pts = [(x, y) for x, y in zip(xs, [doc["dense"]] + [row["scores"][str(float(a))] for a in doc["amounts"]])
               if y is not None]  # None: an amount the pruner could not reach in that layer
        ax.plot(*zip(*pts), "-o", ms=4, label=f"{row['layer']} ({row['params']:,})")
    ax.axhline(doc["dense"], ls="--", color="black", lw=1, label="dense")
    ax.set(xlabel="amount pruned in that layer alone", xlim=(0, 1),
           ylabel=f"validation {doc['metric']} ({'higher' if doc['higher_is_better'] else 'lower'} is better)",
           title=f"sensitivity: {doc['method']} ({doc['importance']}), no fine-tuning")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(doc["layers"]) > 8 else 1)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
