"""The HTML page shell and its parts (tables, images, per-class table, notes and curves) that every
report.html is built from; the pages themselves are run_page, refine_page and sweep_page.

Every plot is embedded as a `data:image/png;base64,...` URI and the page's Content-Security-Policy
forbids loading anything else, so the file can be mailed, archived or opened offline as it is.
All text from the report (layer names, class names, paths, notes) is escaped with `html.escape`.

Example:
    >>> table(["layer", "sparsity"], [["fc<1>", "0.500"]], numeric={1})  # doctest: +ELLIPSIS
    '<div class="scroll"><table>...<td>fc&lt;1&gt;</td><td class="n">0.500</td>...'
"""

from __future__ import annotations

import base64
import html
import json
from typing import Any

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
    """`x` as HTML text, quotes escaped too (safe inside attributes)."""
    return html.escape(str(x), quote=True)


def cell(v: Any) -> str:
    """A table cell's text: '-' for None, yes / no, four significant digits, thousands separators, JSON."""
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
    """A PNG embedded as a data: URI."""
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


def page(title: str, body: list[str]) -> str:
    """The whole document: CSP, styles and the image-load counter around `body`."""
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


def lat(s: dict[str, Any], key: str) -> str:
    """A stage's p50 latency at batch 1 or N (key batch_1 / batch_N), or '-'."""
    lat = s.get("latency_ms")
    return f"{lat[key]['p50']:.3f}" if lat else "-"


def per_class(columns: dict[str, dict[str, Any]]) -> str:
    """One row per class, one column per (label -> per_class_accuracy)."""
    classes: list[str] = []
    for pc in columns.values():
        classes += [c for c in pc if c not in classes]
    rows = [[c, *("-" if pc.get(c) is None else f"{pc[c]:.2f}" for pc in columns.values())] for c in classes]
    return table(["class", *columns], rows, numeric=set(range(1, len(columns) + 1)))


def notes_and_curves(notes: list[str], images: dict[str, bytes]) -> list[str]:
    """The notes closing the stage section, then the training-curves section (run and refine pages)."""
    out = []
    if notes:
        out.append("<ul>" + "".join(f"<li>{esc(x)}</li>" for x in notes) + "</ul>")
    out += ["</section>", '<section id="curves">', "<h2>Training curves</h2>"]
    if "curves.png" in images:
        out.append(img(images["curves.png"], "training curves: loss and validation accuracy per epoch"))
    out.append("</section>")
    return out


