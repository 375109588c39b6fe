"""The sampled generations of a language-model run, stage by stage, for report.md and report.html."""

from __future__ import annotations

from typing import Any

from .html import esc, table

NOTE = ("Greedy decoding (no sampling) from the first test examples: the prompt of a prompt / completion pair, "
        "else the first half of the text; the reference is the rest of it.")


def _rows(stages: dict[str, Any], names: tuple[str, ...]) -> list[tuple[int, str, str, list[tuple[str, str]]]]:
    """(index, prompt, reference, [(stage, completion)]) for every sampled prompt."""
    present = [s for s in names if s in stages and stages[s].get("samples")]
    if not present:
        return []
    first = stages[present[0]]["samples"]
    out = []
    for i, sample in enumerate(first):
        gens = [(s, stages[s]["samples"][i]["completion"]) for s in present if i < len(stages[s]["samples"])]
        out.append((i + 1, sample["prompt"], sample.get("reference", ""), gens))
    return out


def _md(text: str) -> str:
    text = " ".join(str(text).split())
    return text.replace("|", "\\|").replace("`", "'") or "(nothing: end of text)"


def markdown_lines(stages: dict[str, Any], names: tuple[str, ...]) -> list[str]:
    """The report.md section (nothing when no stage sampled generations)."""
    rows = _rows(stages, names)
    if not rows:
        return []
    lines = ["## Sampled generations", "", NOTE, "", "| # | prompt | " + " | ".join(s for s, _ in rows[0][3]) + " | reference |",
             "|---|---|" + "---|" * (len(rows[0][3]) + 1)]
    for i, prompt, ref, gens in rows:
        lines.append(f"| {i} | {_md(prompt)} | " + " | ".join(_md(g) for _, g in gens) + f" | {_md(ref)} |")
    return lines + [""]


def html_section(stages: dict[str, Any], names: tuple[str, ...]) -> list[str]:
    """The report.html section (nothing when no stage sampled generations)."""
    rows = _rows(stages, names)
    if not rows:
        return []
    head = ["#", "prompt", *(s for s, _ in rows[0][3]), "reference"]
    body = [[i, prompt, *(g or "(nothing: end of text)" for _, g in gens), ref] for i, prompt, ref, gens in rows]
    return ['<section id="samples">', "<h2>Sampled generations</h2>", table(head, body),
            f'<p class="note">{esc(NOTE)}</p>', "</section>"]
