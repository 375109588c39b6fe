"""The robustness tables of report.md and report.html: accuracy per condition (clean, noise, FGSM,
PGD strengths), stage by stage, with the change against dense."""

from __future__ import annotations

from typing import Any

from ..robustness import ATTACKS, LABELS
from .html import esc, table


def conditions(stages: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(attack, key, label) of every condition any stage measured, clean first."""
    out = [("clean", "", "clean")]
    for name in ATTACKS:
        keys: list[str] = []
        for s in stages.values():
            keys += [k for k in ((s.get("robustness") or {}).get(name) or {}) if k not in keys]
        out += [(name, k, f"{LABELS[name]}={k}") for k in sorted(keys, key=float)]
    return out


def value(stage: dict[str, Any], attack: str, key: str) -> float | None:
    r = stage.get("robustness") or {}
    return r.get("clean") if attack == "clean" else (r.get(attack) or {}).get(key)


def table_rows(stages: dict[str, Any], names: tuple[str, ...]) -> list[list[str]] | None:
    """Rows condition | dense | pruned | Δ | fine-tuned | Δ (accuracy %, Δ against dense), or None
    when no stage measured robustness."""
    present = [n for n in names if n in stages]
    if not any(stages[n].get("robustness") for n in present):
        return None
    rows = []
    for attack, key, label in conditions({n: stages[n] for n in present}):
        row = [label]
        base = value(stages[present[0]], attack, key)
        for i, n in enumerate(present):
            v = value(stages[n], attack, key)
            row.append("-" if v is None else f"{v:.2f}")
            if i > 0:
                row.append("-" if v is None or base is None else f"{v - base:+.2f}")
        rows.append(row)
    return rows


def table_head(names: tuple[str, ...], stages: dict[str, Any]) -> list[str]:
    present = [n for n in names if n in stages]
    head = ["condition", present[0]]
    for n in present[1:]:
        head += [n, "Δ"]
    return head


def note(stages: dict[str, Any]) -> str:
    r = next((s["robustness"] for s in stages.values() if s.get("robustness")), {})
    return (f"Accuracy (%) on {r.get('examples', '?')} test examples (seeded, class-balanced subset), clean and "
            f"perturbed; strengths in pixel units of the [0, 1] range. FGSM and PGD (L∞, untargeted, true labels; "
            f"PGD {r.get('pgd_steps')} steps of {r.get('pgd_step_size')}·ε, {r.get('pgd_random_init')} random "
            f"start(s)) from {r.get('library', 'ART')}; Gaussian noise clipped to [0, 1]. Δ: points against dense.")


def markdown_lines(stages: dict[str, Any], names: tuple[str, ...]) -> list[str]:
    """The report.md section (empty when no stage measured robustness)."""
    rows = table_rows(stages, names)
    if rows is None:
        return []
    head = table_head(names, stages)
    lines = ["## Robustness", "", "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines + ["", note(stages), ""]


def html_section(stages: dict[str, Any], names: tuple[str, ...]) -> list[str]:
    """Accuracy under noise and attacks, stage by stage (nothing when evaluate.robustness was off)."""
    rows = table_rows(stages, names)
    if rows is None:
        return []
    head = table_head(names, stages)
    return ['<section id="robustness">', "<h2>Robustness (accuracy %)</h2>", table(head, rows, numeric=set(range(1, len(head)))),
            f'<p class="note">{esc(note(stages))}</p>', "</section>"]
