"""Latency you can trust: alternating timing, a bootstrap interval, a verdict and a noise flag, and
every place that prints a speedup saying "no measurable change" instead of a number inside the noise."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn

from prunetune.cli import speed_summary
from prunetune.pipeline import run
from prunetune.recipe import load_recipe
from prunetune.reporting.format import interval_text, row_speedup, speedup_notes, speedup_text, stage_speedup_text
from prunetune.reporting.write import write_reports
from prunetune.search.study import choose_balance
from prunetune.timing import (MASKED_NOTE, ROUNDS_LIMIT, SPREAD_LIMIT, bootstrap_ratio, compare_models, noise_reasons,
                              verdict)
from prunetune.tracking import report_metrics

pytestmark = pytest.mark.serial  # measures speed: run alone (`make test` runs serial tests after the parallel pass)


def _fwd(m, x):
    return m(x[..., : m.in_features])


def _lognormal(rng, scale, n, sigma=0.15):
    return scale * rng.lognormal(0.0, sigma, n)


# -- the interval and the verdict on synthetic times ---------------------------------------------------

def test_bootstrap_interval_covers_the_true_ratio_on_synthetic_times():
    rng = np.random.default_rng(1)
    covered, widths = 0, []
    for i in range(40):  # 40 experiments: a 95 % interval covers the true ratio 2.0 in most of them
        ratio, low, high = bootstrap_ratio(_lognormal(rng, 2.0, 120), _lognormal(rng, 1.0, 120), resamples=1000, seed=i)
        assert low <= ratio <= high
        covered += low <= 2.0 <= high
        widths.append(high - low)
    assert covered >= 34  # ~38 expected; a collapsed interval (low == high == ratio) would cover ~0
    assert 0.02 < float(np.median(widths)) < 0.3
    assert verdict(low, high) == "faster"


def test_bootstrap_is_seeded_and_identical_times_have_no_measurable_change():
    rng = np.random.default_rng(7)
    d, c = _lognormal(rng, 1.0, 200), _lognormal(rng, 1.0, 200)
    assert bootstrap_ratio(d, c, seed=3) == bootstrap_ratio(d, c, seed=3)
    ratio, low, high = bootstrap_ratio(d, c)
    assert low <= 1.0 <= high and verdict(low, high) == "no measurable change"
    _, low, high = bootstrap_ratio(_lognormal(rng, 1.0, 200), _lognormal(rng, 2.0, 200))
    assert high < 0.6 and verdict(low, high) == "slower"
    assert verdict(1.005, 1.02) == "no measurable change"  # inside the resolution band: not a speedup
    assert verdict(1.5, 1.7) == "faster" and verdict(0.5, 0.9) == "slower"


def test_noise_reasons_name_load_spread_and_rounds():
    calm = {"p50": 1.0, "p90": 1.1, "round_medians": [1.0, 1.02, 0.99]}
    assert noise_reasons(calm, calm, threads=1, load=0.2, cpus=4) == []
    busy = noise_reasons(calm, calm, threads=2, load=3.1, cpus=2)
    assert busy == ["machine busy: load 3.1 on 2 cores (2 used for timing)"]
    assert noise_reasons(calm, calm, threads=2, load=1.9, cpus=4) == []  # 4 - 2 cores free, others' load below
    spread = {"p50": 1.0, "p90": SPREAD_LIMIT + 0.2, "round_medians": [1.0, 1.0]}
    rounds = {"p50": 1.0, "p90": 1.1, "round_medians": [1.0, ROUNDS_LIMIT + 0.3, 1.1]}
    assert noise_reasons(spread, rounds, threads=1, load=None, cpus=8) == [
        "dense calls vary: p90/p50 1.7×", "rounds disagree by 1.6× (candidate)"]


# -- real timing ----------------------------------------------------------------------------------------

def test_a_clearly_faster_model_is_faster_with_an_interval_excluding_one():
    torch.manual_seed(0)
    big, small = nn.Linear(2048, 2048), nn.Linear(256, 256)
    rec = compare_models(big, small, _fwd, torch.randn(8, 2048), threads=1, rounds=3, min_run_time=0.3)
    assert rec["verdict"] == "faster" and rec["low"] > 5 and rec["low"] <= rec["ratio"] <= rec["high"]
    assert len(rec["dense_ms"]["round_medians"]) == 3 and rec["dense_ms"]["p50"] > rec["model_ms"]["p50"]
    text = speedup_text(rec)
    assert re.fullmatch(r"\d+\.\d\d× \(\d+\.\d\d–\d+\.\d\d\)", text), text


def test_identical_models_give_no_measurable_change():
    torch.manual_seed(0)
    m = nn.Linear(512, 512)
    rec = compare_models(m, m, _fwd, torch.randn(16, 512), threads=1, rounds=6, min_run_time=0.6)
    assert rec["verdict"] == "no measurable change", rec
    assert speedup_text(rec) == "no measurable change"


def _burner(period: float | None) -> list[str]:
    if period is None:
        return [sys.executable, "-c", "while True: pass"]
    # Busy for `period` seconds, idle for `period`: competition that comes and goes between rounds.
    return [sys.executable, "-c", f"import time\nwhile True:\n t = time.time()\n while time.time() - t < {period}: pass\n"
                                  f" time.sleep({period})"]


def test_a_busy_machine_is_flagged_noisy():
    cpus = os.cpu_count() or 1
    procs = [subprocess.Popen(_burner(None)) for _ in range(cpus)] + [subprocess.Popen(_burner(0.15)) for _ in range(cpus)]
    try:
        time.sleep(0.5)
        torch.manual_seed(0)
        m = nn.Linear(1024, 1024)
        rec = compare_models(m, m, _fwd, torch.randn(32, 1024), threads=cpus, rounds=6, min_run_time=0.8)
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
    assert rec["noisy"] is True, rec
    assert rec["reasons"] and all(re.search(r"machine busy: load|calls vary|rounds disagree", r) for r in rec["reasons"])


# -- printing ------------------------------------------------------------------------------------------

def test_no_printed_speedup_has_a_number_when_the_interval_contains_one():
    rng = np.random.default_rng(0)
    for _ in range(200):
        low = float(rng.uniform(0.3, 1.0))
        high = float(rng.uniform(1.0, 3.0))
        rec = {"ratio": float(rng.uniform(low, high)), "low": low, "high": high, "verdict": "faster"}  # even if mislabelled
        assert not re.search(r"\d", speedup_text(rec))
        assert not re.search(r"\d", row_speedup({"speedup": rec["ratio"], "speedup_low": low, "speedup_high": high}))
    assert speedup_text({"ratio": 2.714, "low": 2.6, "high": 2.83, "verdict": "faster"}) == "2.71× (2.60–2.83)"
    assert speedup_text(1.234) == "1.23×" and speedup_text(None) == "-"  # a report from before intervals
    assert interval_text(0.87, 0.8, 0.95) == "0.870 (0.800–0.950)" and interval_text(12, None, None) == "12"


@pytest.fixture(scope="module")
def masked_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lat") / "run"
    recipe = load_recipe(None, [
        "model.name=tiny_cnn", "data.source=synthetic", "data.limit=60", "dense.epochs=1", "finetune.epochs=1",
        "finetune.batch_size=16", "prune.method=unstructured", "evaluate.min_run_time=0.1", "evaluate.latency_batch=8",
        "evaluate.latency_rounds=2", "evaluate.memory=false"])
    return out, run(recipe, out, log=lambda m: None)


def test_run_report_carries_alternating_records_and_the_masked_note(masked_run):
    out, report = masked_run
    for stage in ("pruned", "finetuned"):
        row = report["speedup"][stage]
        for key in ("batch_1", "batch_N"):
            rec = row["measured"][key]
            assert {"ratio", "low", "high", "verdict", "noisy", "reasons"} <= set(rec)
            assert rec["low"] <= rec["ratio"] <= rec["high"] and len(rec["dense_ms"]["round_medians"]) == 2
            assert row[f"speedup_{key}"] == rec["ratio"]  # the old numeric key: compare.py and tracking read it
            assert rec["masked"] is True and rec["note"] == MASKED_NOTE
        assert row["measured"]["batch_N"]["batch"] == 8
    assert "measured" not in report["speedup"]["dense"]
    assert report["stages"]["finetuned"]["latency_ms"]["batch_1"]["p50"] > 0  # per-stage records kept as they were
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    f = report["speedup"]["finetuned"]
    shown = f"{stage_speedup_text(f, 'batch_1')} / {stage_speedup_text(f, 'batch_N')}"
    assert shown in md and shown in page and MASKED_NOTE in md and MASKED_NOTE in page
    assert MASKED_NOTE in speed_summary(f, 8)
    m = report_metrics(report)  # trackers get the interval beside the old ratio
    assert m["speedup/finetuned/batch_1"] == f["measured"]["batch_1"]["ratio"]
    assert m["speedup/finetuned/batch_N_low"] == f["measured"]["batch_N"]["low"]
    assert m["speedup/finetuned/batch_N_noisy"] == float(f["measured"]["batch_N"]["noisy"])


def _with(report, **rec):
    rep = json.loads(json.dumps(report))
    for row in rep["speedup"].values():
        for key, r in (row.get("measured") or {}).items():
            r.update(rec)
            row[f"speedup_{key}"] = rec.get("ratio", r["ratio"])
    return rep


def test_inside_the_noise_every_page_says_no_measurable_change_and_why(masked_run, tmp_path):
    _, report = masked_run
    reason = "machine busy: load 3.1 on 2 cores (2 used for timing)"
    rep = _with(report, ratio=1.023, low=0.91, high=1.14, verdict="no measurable change", noisy=True,
                reasons=[reason, "rounds disagree by 1.6× (dense)"])
    write_reports(rep, tmp_path)
    md, page = (tmp_path / "report.md").read_text(), (tmp_path / "report.html").read_text()
    line = speed_summary(rep["speedup"]["finetuned"], 8)
    for text in (md, page, line):
        assert "no measurable change" in text and reason in text and "rounds disagree by 1.6×" in text
        assert "1.02×" not in text and "1.023" not in text
    assert "noisy" in speedup_notes(rep["speedup"]["finetuned"])[0]


def test_a_report_from_before_intervals_still_renders(masked_run, tmp_path):
    _, report = masked_run
    old = json.loads(json.dumps(report))
    for row in old["speedup"].values():
        row.pop("measured", None)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_reports(old, tmp_path / "a")
    f = old["speedup"]["finetuned"]
    assert f"{f['speedup_batch_1']:.2f}× / {f['speedup_batch_N']:.2f}×" in (tmp_path / "a" / "report.md").read_text()
    del old["speedup"]  # older still: no speedup section; computed from the stages' p50s
    write_reports(old, tmp_path / "b")
    assert "measured speedup" in (tmp_path / "b" / "report.html").read_text()
    assert speed_summary(f, 8).startswith(", measured speedup ")


# -- the sweep's balance point ----------------------------------------------------------------------------

def _row(trial, cost, lo, hi, macs, nonzero, masked=False, acc=90.0):
    return {"trial": trial, "val_accuracy": acc, "cost": cost, "cost_low": lo, "cost_high": hi, "macs": macs,
            "nonzero_params": nonzero, "masked": masked}


def test_balance_prefers_fewer_macs_when_cost_intervals_overlap():
    masked = _row(0, 0.87, 0.80, 0.95, macs=1000, nonzero=400, masked=True)  # unstructured 54 %: same MACs as dense
    structured = _row(1, 0.90, 0.85, 0.97, macs=600, nonzero=600)
    assert choose_balance([masked, structured])["trial"] == 1
    # Intervals apart: the cheaper wins even with more MACs.
    fast = _row(2, 0.50, 0.45, 0.55, macs=900, nonzero=900)
    assert choose_balance([fast, structured])["trial"] == 2
    # A masked trial's apparent gain is noise: its interval reaches 1.0, so a smaller dense trial ties and wins.
    lucky = _row(3, 0.70, 0.65, 0.78, macs=1000, nonzero=300, masked=True)
    plain = _row(4, 0.93, 0.88, 0.99, macs=700, nonzero=700)
    assert choose_balance([lucky, plain])["trial"] == 4
    # Same MACs: fewer non-zeros wins; lower is better metric direction respected among equals.
    a, b = _row(5, 0.9, 0.8, 1.0, 500, 300), _row(6, 0.85, 0.8, 1.0, 500, 200)
    assert choose_balance([a, b])["trial"] == 6
    # Costs without intervals (nonzero, MACs objectives; older studies): the cheapest, as before.
    p, q = {**_row(7, 5.0, None, None, 10, 5)}, {**_row(8, 4.0, None, None, 20, 4)}
    assert choose_balance([p, q])["trial"] == 8
    assert choose_balance([]) is None
