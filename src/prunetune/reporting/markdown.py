"""report.md of a run or a refine folder and sweep.md of a sweep folder, each from its typed report."""

from __future__ import annotations

from ..errors import PrunetuneError
from ..robustness import floor_accuracy, floor_label
from . import classes
from .format import (AUTO_DISTILL, STAGES, pruned_text, bisect_line, compute_line, fmt_bytes, interval_text, row_speedup, short, size_cells, speedup_notes,
                     speedups, stage_speedup_text, warm_line)
from .model import RefineReport, RunReport, SweepReport
from .robustness import markdown_lines as robustness_lines
from .samples import markdown_lines as sample_lines


def markdown(report: RunReport | RefineReport | SweepReport) -> str:
    """The markdown document of a report, by its kind."""
    if isinstance(report, SweepReport):
        return sweep_markdown(report)
    if isinstance(report, RefineReport):
        return refine_markdown(report)
    return run_markdown(report)


def run_markdown(report: RunReport) -> str:
    """report.md of a run."""
    stages = report.stages
    sp = report.speedup or speedups(stages)  # a report from before `speedup` was stored: from the stages
    r = report.recipe
    task = report.metric_task()
    metric = task.metric
    lines = [
        f"# prunetune run: {r['name']}",
        "",
        f"Model `{r['model']['name']}`, data `{r['data']['source']}`; pruning `{r['prune']['method']}` "
        f"({r['prune']['importance']}, {r['prune']['schedule']['kind']}), target sparsity {r['prune']['sparsity']}; "
        f"fine-tuning `{r['finetune']['method']}` {report.finetune['epochs_run']} epochs "
        f"(best {report.finetune['best_epoch']}, {report.finetune['wall_s']:.1f} s).",
        "",
    ]
    lines += _loading_lines(report)
    if report.distill:
        d = report.distill
        lines += [f"Distilled from `{d['teacher']}` (test {metric} {task.format(d['teacher_test_' + metric])}), alpha {d['alpha']}, "
                  f"T {d['temperature']}; teacher logits {'cached per example' if d['cached_logits'] else 'per batch'}, "
                  f"teacher time {d['teacher_s']:.1f} s." + (AUTO_DISTILL if d.get("auto") else ""), ""]
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
               f"{s['macs'] / 1e6:.2f} M (÷{sp[name]['macs_ratio']:.2f}) | {' | '.join(size_cells(s))} |")
        if any_lat:
            lat = s["latency_ms"]
            row += (f" {lat['batch_1']['p50']:.3f} | {lat['batch_N']['p50']:.3f} | "
                    f"{stage_speedup_text(sp.get(name), 'batch_1')} / {stage_speedup_text(sp.get(name), 'batch_N')} |")
        lines.append(row)
    d = stages["dense"]
    timed = any((sp.get(s_) or {}).get("measured") for s_ in STAGES)
    lines += ["", f"Latency: `torch.utils.benchmark`, {d['threads']} thread(s), device {d.get('device', 'cpu')}; " + (
        "speedup = dense / stage median latency, each stage timed alternately with the dense model, with its 95 % "
        "bootstrap interval (\"no measurable change\" when the interval contains 1); measured, never inferred from MACs."
        if timed else "speedup = dense p50 / stage p50 (measured, never inferred from MACs)."), ""]
    for name in STAGES:
        for note in speedup_notes(sp.get(name)):
            lines += [f"- {name}: {note}"]
    if any(speedup_notes(sp.get(s_)) for s_ in STAGES):
        lines.append("")
    ft = report.finetune
    if ft.get("trainable_params") is not None:
        lines += [f"Fine-tuning: `{ft.get('method', 'full')}`, {ft['trainable_params']:,} trainable parameters "
                  f"({100 * ft['trainable_fraction']:.2f}% of {ft['total_params']:,}), {ft.get('s_per_step', 0):.3f} s/step, "
                  f"training-step peak memory {fmt_bytes(ft.get('train_peak_memory_bytes', 0))}.", ""]
    if ft.get("merge"):
        m = ft["merge"]
        diff = "" if m.get("max_logit_diff") is None else f"; largest logit change {m['max_logit_diff']:.1e}"
        lines += [f"Merge: non-zeros {m['nonzero_before']:,} before, {m['nonzero_after']:,} after "
                  f"({m['nonzero_gained']:+,}); pruned weights non-zero after the merge: {m['pruned_weights_nonzero_after']}{diff}.", ""]
    if "encoder_linear_sparsity" in stages["finetuned"]:
        lines += [f"Sparsity over the encoder's linear layers: {stages['finetuned']['encoder_linear_sparsity']:.3f} "
                  f"(whole model {stages['finetuned']['sparsity']:.3f}).", ""]
    if report.adaptive:
        a = report.adaptive
        lines += [f"Adaptive schedule: kept sparsity {a['kept_sparsity']:.4f}" + (" (rolled back)" if a["rolled_back"] else "")
                  + "; steps: " + ", ".join(f"{x['sparsity']:.3f} → {x['val_' + metric]:.2f}" for x in a["steps"]), ""]
    if report.notes:
        lines += ["Notes:", *[f"- {x}" for x in report.notes], ""]
    lines += robustness_lines(stages, STAGES)
    lines += sample_lines(stages, STAGES)  # language models: generations per stage
    lines += ["## Per-layer plan", "", "| layer | type | shape before | shape after | sparsity | pruned |", "|---|---|---|---|---:|---|"]
    for p in report.plan:
        lines.append(f"| {p['layer']} | {p['type']} | {p['shape_before']} | {p['shape_after']} | {p['sparsity']:.3f} | "
                     f"{pruned_text(p)} |")
    if "per_class_accuracy" in stages["dense"]:
        lines += ["", "## Per-class test accuracy", "", "| class | " + " | ".join(STAGES) + " |", "|---|" + "---:|" * len(STAGES)]
    for cls in stages["dense"].get("per_class_accuracy", {}):
        vals = [stages[s]["per_class_accuracy"].get(cls) for s in STAGES]
        lines.append(f"| {cls} | " + " | ".join("-" if v is None else f"{v:.2f}" for v in vals) + " |")
    lines += classes.markdown_lines(stages)
    return "\n".join(lines) + "\n"


def _loading_lines(report: RunReport | RefineReport) -> list[str]:
    """How the saved transformers model folder loads (reports from before issue 16 have no entry)."""
    saved = getattr(report, "saved_model", None)
    return [f"Model folder `model/`: {saved['how']}.", ""] if saved else []


def refine_markdown(report: RefineReport) -> str:
    """report.md of a refine folder."""
    st, ft, r = report.stages, report.finetune, report.recipe
    task = report.metric_task()
    m = task.metric
    lines = [
        f"# prunetune refine: {r['name']}",
        "",
        f"Re-fine-tuned `{report.source_model}` on `{r['data']['source']}` data at `{r['data']['path']}`: "
        f"{ft['epochs_run']} epochs (best {ft['best_epoch']}, {ft['wall_s']:.1f} s). Architecture and masks kept: "
        f"{'yes' if report.sparsity_kept else 'NO'} ({report.nonzero_params:,} non-zero parameters).",
        "",
        f"| stage | test set | examples | test {task.label} | Δ {task.units} | non-zero | sparsity | size | gzip |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for data, label in (("new_data", "new data"), ("original_test", "original test")):
        for stage in ("before", "after"):
            s = st[stage][data]
            lines.append(f"| {stage} | {label} | {s['examples']:,} | {task.format(s[m])} | "
                         f"{task.format(s[m] - st['before'][data][m], signed=True)} | {s['nonzero_params']:,} | "
                         f"{s['sparsity']:.3f} | {' | '.join(size_cells(s))} |")
    lines += ["", "The original test set shows what the new data made the model forget.", ""]
    lines += _loading_lines(report)
    if report.notes:
        lines += ["Notes:", *[f"- {x}" for x in report.notes], ""]
    return "\n".join(lines)


def sweep_markdown(doc: SweepReport) -> str:
    """sweep.md: the objective, the balance point and every trial."""
    task = doc.metric_task()
    metric, key, higher = task.metric, task.key, task.higher_is_better
    lines = [f"# Sweep `{doc.study}`", "",
             f"Objective: validation {metric} ({'max' if higher else 'min'}) against {doc.objective_label} (min). "
             f"Dense validation {metric} {task.format(doc.dense[key])}; tolerance {doc.tolerance} "
             f"{task.units} (threshold {task.format(doc.threshold)}). "
             f"Trials: {', '.join(f'{n} {s}' for s, n in doc.counts.items())}.", ""]
    lines += _search_notes(doc)
    if doc.robustness_floor:
        try:
            dense = f" (dense {floor_accuracy(doc.dense['stage'], doc.robustness_floor):.2f})"
        except PrunetuneError:  # a study whose dense reference predates the floor
            dense = ""
        lines += [f"Robustness floor: validation accuracy under {floor_label(doc.robustness_floor)}{dense}; trials "
                  "below it are infeasible (off the Pareto front, never the balance point).", ""]
    b = doc.balance
    if b:
        t = b.get("test") or {}
        if t:
            speed = (f"measured speedup {stage_speedup_text(t, 'batch_N')} at batch N, {stage_speedup_text(t, 'batch_1')} at batch 1, "
                     + "".join(f"{n}, " for n in speedup_notes(t)) if t.get("speedup_batch_N") is not None else "latency not measured, ")
            scored = (f"; test {task.format(t[metric])} (dense {task.format(t['dense_' + metric])}), {speed}"
                      f"non-zeros {t['nonzero_params']:,}, gzip {t['gzip_bytes']:,} bytes; run folder `{b.get('folder')}`")
        else:
            scored = " (not yet scored on the test set)"
        lines += [f"**Balance point: trial {doc.balance_trial}** — " + ", ".join(f"{k}={short(v)}" for k, v in b["params"].items()),
                  "", f"validation {task.format(b[key])}, {doc.objective_label} "
                  f"{interval_text(b.get('cost'), b.get('cost_low'), b.get('cost_high'))}{scored}", ""]
    else:
        lines += ["No trial is within the tolerance" + (" and above the robustness floor" if doc.robustness_floor else "")
                  + " yet.", ""]
    lines += [f"| trial | state | params | val {task.label} | cost | speedup | epochs | dense epochs | Pareto | note |",
              "|---:|---|---|---:|---:|---:|---:|---:|---|---|"]
    for r in doc.rows:
        p = ", ".join(f"{k.split('.')[-1]}={short(v)}" for k, v in r["params"].items())
        val = task.format(r.get(key))
        cost = interval_text(r["cost"], r.get("cost_low"), r.get("cost_high"))
        sp = row_speedup(r)
        mark = "balance" if r["balance"] else ("yes" if r["pareto"] else "")
        ep = "" if r.get("epochs_run") is None else str(r["epochs_run"])
        de = "" if r.get("dense_epochs") is None else f"{r['dense_epochs']:.3g}"
        lines.append(f"| {r['trial']} | {r['state']} | {p} | {val} | {cost} | {sp} | {ep} | {de} | {mark} | {r.get('note', '')} |")
    return "\n".join(lines) + "\n"


def _search_notes(doc: SweepReport) -> list[str]:
    """The compute spent, the fidelity rule and the warm start (sweeps from before issue 14 have none)."""
    out = []
    if doc.compute:
        out += [compute_line(doc.compute), ""]
    if doc.fidelity and doc.fidelity.get("setting") != "full":
        out += [f"Fidelity: {doc.fidelity['rule']}.", ""]
    if doc.warm_start:
        out += [warm_line(doc.warm_start, f"`{doc.warm_start['file']}`"), ""]
    if line := bisect_line(doc.bisect):
        out += [line, ""]
    return out
