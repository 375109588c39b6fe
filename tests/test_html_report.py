"""report.html: self-contained, escaped, and rendered by a real headless browser (Debian's chromium)."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from prunetune.pipeline import run
from prunetune.recipe import load_recipe
from prunetune.reporting.format import speedups, stage_speedup_text
from prunetune.reporting.write import render, write_html

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def chromium(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: report.html is tested in a real browser; install it with "
                    "`make browser` (apt-get install -y chromium)", pytrace=False)
    p = subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={tmp / 'chromium-profile'}", *args],
                       capture_output=True, text=True, timeout=90)
    assert p.returncode == 0, p.stderr[-2000:]
    return p


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("html") / "run"
    recipe = load_recipe(None, [
        "model.name=tiny_cnn", "data.source=synthetic", "data.limit=150", "dense.epochs=3", "dense.lr=0.01", "finetune.epochs=2",
        "finetune.batch_size=16", "prune.method=unstructured", "evaluate.min_run_time=0.05", "evaluate.latency_batch=16",
    ])
    report = run(recipe, out, log=lambda m: None)
    return out, report


def test_every_run_writes_a_self_contained_page(run_folder):
    out, report = run_folder
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "Content-Security-Policy" in page
    assert "http:" not in page and "https:" not in page  # nothing to fetch (base64 has no ':')
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == 3 and all(s.startswith("data:image/png;base64,") for s in srcs)
    # The embedded images are the plots written beside the page.
    for src, name in zip(srcs, ("curves.png", "sparsity.png", "confusion.png")):
        assert base64.b64decode(src.split(",", 1)[1]) == (out / name).read_bytes()
    # Unstructured pruning: no teacher by default (finetune.distill auto distils after channel pruning).
    assert 'id="sweep"' not in page and report["distill"] is None and 'id="distill"' not in page


def test_page_renders_in_headless_chromium(run_folder, tmp_path):
    out, report = run_folder
    url = (out / "report.html").resolve().as_uri()
    dom = chromium(["--dump-dom", url], tmp_path).stdout
    shot = tmp_path / "shot.png"
    chromium([f"--screenshot={shot}", "--hide-scrollbars", "--window-size=1280,2400", url], tmp_path)

    # Key numbers, formatted as on the page.
    st, sp = report["stages"], report["speedup"]
    assert f'<td>dense</td><td class="n">{st["dense"]["accuracy"]:.2f}</td>' in dom
    assert f'<td>finetuned</td><td class="n">{st["finetuned"]["accuracy"]:.2f}</td>' in dom
    f = sp["finetuned"]  # timed alternately with dense: an interval, or "no measurable change"
    assert f"{stage_speedup_text(f, 'batch_1')} / {stage_speedup_text(f, 'batch_N')}" in dom
    assert "masked weights run on dense kernels" in dom  # an unstructured run says why no speedup is expected
    assert set(speedups(st)["finetuned"]) == {"macs_ratio", "speedup_batch_1", "speedup_batch_N"}  # old reports: from p50s
    assert f"{st['finetuned']['nonzero_params']:,}" in dom and "features.4" in dom

    # Every image is a data: URI, decodes to a real plot, and the browser decoded it too.
    srcs = re.findall(r'<img[^>]*\bsrc="([^"]*)"', dom)
    assert len(srcs) == 3 and all(s.startswith("data:image/png;base64,") for s in srcs)  # curves, sparsity, confusion
    for s in srcs:
        im = Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1])))
        assert im.format == "PNG" and im.width > 300 and im.height > 200
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-loaded="3"' in body and 'data-images="3"' in body, body

    # The screenshot is not blank, and the plots were painted: the page's own styles are grey,
    # so strongly coloured pixels can only come from the plots (blue/orange/green lines, blue bars).
    im = Image.open(shot).convert("RGB")
    assert im.size == (1280, 2400)
    assert len(im.getcolors(maxcolors=1 << 20)) > 50
    px = im.load()
    coloured_rows = [y for y in range(0, im.height, 4)
                     if any(max(px[x, y]) - min(px[x, y]) > 80 for x in range(0, im.width, 4))]
    assert len(coloured_rows) > 100, "no plot visible in the screenshot"
    top = min(coloured_rows)
    assert 150 < top < 1000, f"first plot pixel at y={top}; expected below the stage table"


def test_text_is_escaped_and_sweep_is_rendered(run_folder, tmp_path):
    _, report = run_folder
    rep = json.loads(json.dumps(report))
    evil = "<script>alert(1)</script>"
    rep["recipe"]["name"] = evil
    rep["plan"][0]["layer"] = evil
    rep["notes"] = [f"note {evil}"]
    for s in rep["stages"].values():
        s["per_class_accuracy"][evil] = 50.0
    Image.new("RGB", (40, 30), "red").save(tmp_path / "pareto.png")
    rep["sweep"] = {"rows": [{"sparsity": 0.5, "accuracy": 91.25, "label": evil}], "pareto_png": "pareto.png"}
    rep["distill"] = {"teacher": evil, "teacher_test_accuracy": 90.0, "alpha": 0.5, "temperature": 4.0,
                      "cached_logits": True, "teacher_s": 1.0}
    page = render(rep, tmp_path, images={})
    assert evil not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<script>") == 1  # only the page's own onload counter
    sweep = page[page.index('<section id="sweep">'):]
    assert "91.25" in sweep and sweep.count('src="data:image/png;base64,') == 1
    assert 'id="distill"' in page
    # Without the PNG the sweep section still renders its rows.
    rep["sweep"] = [{"sparsity": 0.75, "accuracy": 88.5}]
    path = write_html(rep, tmp_path)
    assert '<section id="sweep">' in path.read_text() and "88.5" in path.read_text()
