"""report.json, report.md and PNG plots of a run folder (regenerable from report.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .tasks import Task

STAGES = ("dense", "pruned", "finetuned")


def _fmt_bytes(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


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


def markdown(report: dict[str, Any]) -> str:
    stages = report["stages"]
    sp = speedups(stages)
    r = report["recipe"]
    task = Task.of_report(report)
    metric = task.metric
    lines = [
        f"# prunetune run: {r['name']}",
        "",
        f"Model `{r['model']['name']}`, data `{r['data']['source']}`; pruning `{r['prune']['method']}` "
        f"({r['prune']['importance']}, {r['prune']['schedule']['kind']}), target sparsity {r['prune']['sparsity']}; "
        f"fine-tuning `{r['finetune']['method']}` {report['finetune']['epochs_run']} epochs "
        f"(best {report['finetune']['best_epoch']}, {report['finetune']['wall_s']:.1f} s).",
        "",
    ]
    if report.get("distill"):
        d = report["distill"]
        lines += [f"Distilled from `{d['teacher']}` (test {metric} {task.format(d['teacher_test_' + metric])}), alpha {d['alpha']}, "
                  f"T {d['temperature']}; teacher logits {'cached per example' if d['cached_logits'] else 'per batch'}, "
                  f"teacher time {d['teacher_s']:.1f} s.", ""]
    any_lat = "latency_ms" in stages["dense"]
    n = stages["dense"].get("latency_ms", {}).get("batch_N", {}).get("batch", "N")
    head = f"| stage | test {task.label} | Δ | params | non-zero | sparsity | prunable sparsity | MACs (÷) | size | gzip |"
    sep = "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    if any_lat:
        head += f" p50 b1 ms | p50 b{n} ms | measured speedup b1 / b{n} |"
        sep += "---:|---:|---|"
    lines += [head, sep]
    for name in STAGES:
        s = stages[name]
        row = (f"| {name} | {s[metric]:.2f} | {s[metric] - stages['dense'][metric]:+.2f} | {s['params']:,} | "
               f"{s['nonzero_params']:,} | {s['sparsity']:.3f} | {s['prunable_sparsity']:.3f} | "
               f"{s['macs'] / 1e6:.2f} M (÷{sp[name]['macs_ratio']:.2f}) | {_fmt_bytes(s['size_bytes'])} | {_fmt_bytes(s['gzip_bytes'])} |")
        if any_lat:
            lat = s["latency_ms"]
            row += (f" {lat['batch_1']['p50']:.3f} | {lat['batch_N']['p50']:.3f} | "
                    f"{sp[name]['speedup_batch_1']:.2f}× / {sp[name]['speedup_batch_N']:.2f}× |")
        lines.append(row)
    d = stages["dense"]
    lines += ["", f"Latency: `torch.utils.benchmark`, {d['threads']} thread(s), device {d.get('device', 'cpu')}; "
              "speedup = dense p50 / stage p50 (measured, never inferred from MACs).", ""]
    ft = report.get("finetune", {})
    if ft.get("trainable_params") is not None:
        lines += [f"Fine-tuning: `{ft.get('method', 'full')}`, {ft['trainable_params']:,} trainable parameters "
                  f"({100 * ft['trainable_fraction']:.2f}% of {ft['total_params']:,}), {ft.get('s_per_step', 0):.3f} s/step, "
                  f"training-step peak memory {_fmt_bytes(ft.get('train_peak_memory_bytes', 0))}.", ""]
    if ft.get("merge"):
        m = ft["merge"]
        diff = "" if m.get("max_logit_diff") is None else f"; largest logit change {m['max_logit_diff']:.1e}"
        lines += [f"Merge: non-zeros {m['nonzero_before']:,} before, {m['nonzero_after']:,} after "
                  f"({m['nonzero_gained']:+,}); pruned weights non-zero after the merge: {m['pruned_weights_nonzero_after']}{diff}.", ""]
    if "encoder_linear_sparsity" in stages["finetuned"]:
        lines += [f"Sparsity over the encoder's linear layers: {stages['finetuned']['encoder_linear_sparsity']:.3f} "
                  f"(whole model {stages['finetuned']['sparsity']:.3f}).", ""]
    if report.get("adaptive"):
        a = report["adaptive"]
        lines += [f"Adaptive schedule: kept sparsity {a['kept_sparsity']:.4f}" + (" (rolled back)" if a["rolled_back"] else "")
                  + "; steps: " + ", ".join(f"{x['sparsity']:.3f} → {x['val_' + metric]:.2f}" for x in a["steps"]), ""]
    if report.get("notes"):
        lines += ["Notes:", *[f"- {x}" for x in report["notes"]], ""]
    from .robustness import markdown_lines as robustness_lines

    lines += robustness_lines(stages, STAGES)
    from .lm.report import markdown_lines as sample_lines

    lines += sample_lines(stages, STAGES)  # language models: generations per stage
    lines += ["## Per-layer plan", "", "| layer | type | shape before | shape after | sparsity | pruned |", "|---|---|---|---|---:|---|"]
    for p in report["plan"]:
        lines.append(f"| {p['layer']} | {p['type']} | {p['shape_before']} | {p['shape_after']} | {p['sparsity']:.3f} | "
                     f"{'yes' if p['target'] else 'no'} |")
    if "per_class_accuracy" in stages["dense"]:
        lines += ["", "## Per-class test accuracy", "", "| class | " + " | ".join(STAGES) + " |", "|---|" + "---:|" * len(STAGES)]
    for cls in stages["dense"].get("per_class_accuracy", {}):
        vals = [stages[s]["per_class_accuracy"].get(cls) for s in STAGES]
        lines.append(f"| {cls} | " + " | ".join("-" if v is None else f"{v:.2f}" for v in vals) + " |")
    return "\n".join(lines) + "\n"


def figures(report: dict[str, Any]) -> dict[str, bytes]:
    """The plots as PNG bytes, rendered in memory: {"curves.png": ..., "sparsity.png": ...}.

    sparsity.png needs a per-layer plan (run reports); a report without one gets only the curves.
    """
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def png(fig) -> bytes:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        return buf.getvalue()

    out = {}
    task = Task.of_report(report)
    metric = task.metric
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, hist in (("dense", report.get("dense", {}).get("history", [])), ("fine-tune", report["finetune"]["history"])):
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

    plan = report.get("plan")
    if plan:
        fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(plan) + 2), 3.8))
        ax.bar(range(len(plan)), [p["sparsity"] for p in plan], color=["tab:blue" if p["target"] else "tab:gray" for p in plan])
        ax.set_xticks(range(len(plan)), [p["layer"] for p in plan], rotation=60, ha="right", fontsize=7)
        ax.set(ylim=(0, 1), ylabel="sparsity vs dense", title="per-layer sparsity (grey: not pruned)")
        fig.tight_layout()
        out["sparsity.png"] = png(fig)
    return out


def plots(report: dict[str, Any], folder: Path, images: dict[str, bytes] | None = None) -> list[str]:
    """Write the plots into `folder` (rendered now unless `images` from `figures` is given)."""
    images = figures(report) if images is None else images
    for name, data in images.items():
        (folder / name).write_bytes(data)
    return list(images)


def write_reports(report: dict[str, Any], folder: Path, to_markdown=None) -> None:
    """report.json, report.md (by `to_markdown`, default the run's), the PNG plots and report.html."""
    (folder / "report.json").write_text(json.dumps(report, indent=2))
    (folder / "report.md").write_text((to_markdown or markdown)(report))
    images = figures(report)
    plots(report, folder, images)
    from .html_report import write_html

    write_html(report, folder, images)
