"""Per-class results of a classification run: precision, recall and F1 per class, macro-F1 and the
confusion matrix of the fine-tuned model, beside the dense model's F1 (where a compressed model
lost a minority class, accuracy can hide it; this table cannot)."""

from __future__ import annotations

from typing import Any

from .html import img, table


def _pc(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def rows(stages: dict[str, Any]) -> list[list[str]] | None:
    """class | support | precision | recall | F1 (fine-tuned) | F1 dense | Δ F1; None without per-class records."""
    fine, dense = stages.get("finetuned", {}).get("per_class"), stages.get("dense", {}).get("per_class")
    if not fine or not dense:
        return None
    out = []
    for cls, r in fine.items():
        d = dense.get(cls, {}).get("f1")
        delta = "-" if r["f1"] is None or d is None else f"{r['f1'] - d:+.2f}"
        out.append([cls, str(r["support"]), _pc(r["precision"]), _pc(r["recall"]), _pc(r["f1"]), _pc(d), delta])
    return out


HEAD = ["class", "support", "precision", "recall", "F1", "F1 dense", "Δ F1"]


def summary(stages: dict[str, Any]) -> str:
    return ("Macro-F1 " + " → ".join(f"{s} {stages[s]['macro_f1']:.2f}" for s in ("dense", "pruned", "finetuned")
                                     if "macro_f1" in stages.get(s, {})))


def markdown_lines(stages: dict[str, Any]) -> list[str]:
    """The per-class section of report.md (nothing for tasks without classes)."""
    body = rows(stages)
    if body is None:
        return []
    lines = ["", "## Per-class precision, recall and F1 (fine-tuned, %)", "", summary(stages), "",
             "| " + " | ".join(HEAD) + " |", "|---|" + "---:|" * (len(HEAD) - 1)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    cm = stages["finetuned"].get("confusion_matrix")
    if cm:
        names = list(stages["finetuned"]["per_class"])
        lines += ["", "Confusion matrix (fine-tuned; rows: true class, columns: predicted):", "",
                  "| true \\ predicted | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        lines += [f"| {n} | " + " | ".join(str(v) for v in row) + " |" for n, row in zip(names, cm)]
    return lines


def html_section(stages: dict[str, Any], images: dict[str, bytes]) -> list[str]:
    """The per-class section of report.html: the table and the confusion-matrix plot."""
    body = rows(stages)
    if body is None:
        return []
    out = ['<section id="per-class-f1">', "<h2>Per-class precision, recall and F1 (fine-tuned, %)</h2>",
           f"<p>{summary(stages)}</p>", table(HEAD, body, numeric=set(range(1, len(HEAD))))]
    if "confusion.png" in images:
        out.append(img(images["confusion.png"], "confusion matrix of the fine-tuned model"))
    out.append("</section>")
    return out


def confusion_figure(plt, stages: dict[str, Any]):
    """The fine-tuned model's confusion matrix as a matplotlib figure (counts in the cells), or None."""
    fine = stages.get("finetuned", {})
    cm, names = fine.get("confusion_matrix"), list(fine.get("per_class") or {})
    if not cm or len(names) != len(cm):
        return None
    n = len(names)
    size = min(12, 2.5 + 0.6 * n)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), names, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix (fine-tuned)")
    if n <= 20:
        top = max(max(r) for r in cm) or 1
        for i, row in enumerate(cm):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center", fontsize=6, color="white" if v > top / 2 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig
