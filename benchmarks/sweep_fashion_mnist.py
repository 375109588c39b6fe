"""Sweep benchmark: find the balance point of the small CNN on Fashion-MNIST within 0.5 points.

Issue 14's target: on the full training set (55,000 images, 5,000 held out for validation), a
structured balance point with a measured batch-64 speedup of at least 2.5x whose interval excludes
1.0, in at most 45 minutes and within 10 dense-training-epoch equivalents of compute, beating the
best point of the fixed grid (benchmarks/results/fashion_mnist.json).

How: the dense model is the core benchmark's (same recipe, so prunetune's cache serves it); a
`prunetune sensitivity` scan of the channel pruner (validation only, no training) predicts the channel
sparsity within the tolerance before fine-tuning; the first trials bisect the sparsity above it
(`search.bisect`, the default 3 steps), then Optuna TPE searches channel sparsity and importance;
successive halving over the 3 fine-tuning epochs; latency at batch 64 measured alternately against the
dense model in each trial; the compute budget stops new trials. The dense teacher's cached logits
(prunetune's disk cache) are removed first, so the sweep pays the teacher's pass once, in its first trial. Only the balance point is scored on test. Writes
benchmarks/results/sweep_fashion_mnist.{json,md} and sweep_fashion_mnist_pareto.png.

    python benchmarks/sweep_fashion_mnist.py [--quick] [--adaptive]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from fashion_mnist import BASE as CORE  # noqa: E402
from fashion_mnist import merge  # noqa: E402
from machine import describe  # noqa: E402

from prunetune.dense import dense_key  # noqa: E402
from prunetune.files import cache_root  # noqa: E402
from prunetune.pipeline import run  # noqa: E402
from prunetune.recipe import Recipe  # noqa: E402
from prunetune.reporting.format import bisect_line as bisect_text  # noqa: E402
from prunetune.search.study import sweep  # noqa: E402
from prunetune.sensitivity import sensitivity  # noqa: E402

HERE = Path(__file__).parent
RESULTS = HERE / "results"

# The core benchmark's data, model and dense recipe (its cached dense model); prunetune's default
# fine-tuning (rate, warm-up, schedule) for 3 epochs, as in every fixed-grid row.
BASE = {**CORE, "name": "sweep-fmnist", "finetune": {"epochs": 3},
        "prune": {"method": "structured"},
        "evaluate": {"latency_batch": 64, "min_run_time": 0.5, "memory": False}}
SCAN_AMOUNTS = [0.2, 0.4, 0.6, 0.8]
SEARCH = {
    "tolerance": 0.5, "objective": "latency", "sampler": "tpe", "trials": 14, "early_stop_slack": 1.5,
    "fidelity": "halving", "budget_dense_epochs": 10.0,
    "space": {
        "prune.sparsity": [0.3, 0.8],
        "prune.importance": {"choices": ["l1", "l2", "taylor"]},
    },
}
TARGET = {"min_speedup_b64": 2.5, "max_wall_s": 45 * 60, "max_dense_epochs": 10.0}
ADAPTIVE = {"prune": {"method": "structured", "importance": "l2", "sparsity": 0.85,
                      "schedule": {"kind": "adaptive", "steps": 6, "epochs_per_step": 1, "tolerance": 0.5, "patience": 1}},
            "finetune": {"epochs": 1}}


def grid_best(tolerance: float) -> dict | None:
    """The core benchmark's fastest run (batch 64) within the tolerance on test accuracy."""
    path = RESULTS / "fashion_mnist.json"
    if not path.exists():
        return None
    rows = [r for r in json.loads(path.read_text())["rows"] if r["name"].startswith("cnn-") and r["drop"] <= tolerance]
    if not rows:
        return None
    best = max(rows, key=lambda r: r["speedup_b64"] or 0)
    return {"name": best["name"], "after_ft": best["after_ft"], "drop": best["drop"], "speedup_b64": best["speedup_b64"],
            "speedup_b1": best["speedup_b1"], "note": "full 55,000-image training set, 3 fine-tuning epochs"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smoke test: 2,000 images, budget 2 dense epochs")
    ap.add_argument("--adaptive", action="store_true", help="also run the adaptive schedule on the same data")
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "sweep_fashion_mnist_quick" if args.quick else "sweep_fashion_mnist"
    runs = HERE / "runs" / stem
    shutil.rmtree(runs, ignore_errors=True)
    base, search = BASE, SEARCH
    if args.quick:
        base = merge(BASE, {"data": {"limit": 2000, "val_size": 500, "test_limit": 1000}, "dense": {"epochs": 2},
                            "finetune": {"epochs": 2}, "evaluate": {"min_run_time": 0.1}})
        search = {**SEARCH, "trials": 4, "budget_dense_epochs": 2.0}
    log = lambda m: print(m, flush=True)  # noqa: E731
    # The teacher's logits are cached beside the dense model; remove them so the first trial pays the pass.
    for f in (cache_root() / "teacher").glob(f"{dense_key(Recipe.model_validate(base))}-*.safetensors"):
        f.unlink()
    t0 = time.time()
    # The scan warms the study: what each layer alone costs at each channel amount, on validation.
    scan = sensitivity(Recipe.model_validate(base), runs / "sensitivity", SCAN_AMOUNTS, log=log)
    scan_s = time.time() - t0
    search = {**search, "warm_start": str(runs / "sensitivity" / "sensitivity.json")}
    doc = sweep(Recipe.model_validate({**base, "search": search}), runs / "sweep", log=log)
    sweep_s = time.time() - t0

    adaptive = None
    if args.adaptive:
        t1 = time.time()
        rep = run(Recipe.model_validate(merge({**base, "name": "adaptive"}, ADAPTIVE)), runs / "adaptive",
                  log=lambda m: log(f"[adaptive] {m}"))
        a, sp = rep["stages"], rep["speedup"]["finetuned"]
        adaptive = {"test_accuracy": a["finetuned"]["accuracy"], "dense_test_accuracy": a["dense"]["accuracy"],
                    "drop": round(a["dense"]["accuracy"] - a["finetuned"]["accuracy"], 2),
                    "measured": sp.get("measured"), "kept_sparsity": rep["adaptive"]["kept_sparsity"],
                    "rolled_back": rep["adaptive"]["rolled_back"], "wall_s": round(time.time() - t1, 1)}
    bal = doc.get("balance") or {}
    test = bal.get("test") or {}
    result = {
        "machine": describe(), "base_recipe": base, "search": search,
        "scan": {"wall_s": round(scan_s, 1), "amounts": SCAN_AMOUNTS, "layers": len(scan["layers"])},
        "sweep": {"wall_s": round(sweep_s, 1), "counts": doc["counts"], "dense_val_accuracy": doc["dense"]["val_accuracy"],
                  "threshold": doc["threshold"], "balance_trial": doc["balance_trial"], "balance_params": bal.get("params"),
                  "balance_val_accuracy": bal.get("val_accuracy"), "balance_test": test, "compute": doc.get("compute"),
                  "warm_start": doc.get("warm_start"), "bisect": doc.get("bisect"),
                  "front": [r for r in doc["rows"] if r["pareto"]], "rows": doc["rows"]},
        "adaptive": adaptive,
        "grid_best": grid_best(SEARCH["tolerance"]),
        "target": dict(TARGET),
    }
    if test:
        n = (test.get("measured") or {}).get("batch_N") or {}
        spent = (doc.get("compute") or {}).get("dense_epochs")
        result["sweep"]["balance_test_drop"] = round(test["dense_accuracy"] - test["accuracy"], 2)
        result["target"]["met"] = bool(n.get("verdict") == "faster" and n["ratio"] >= TARGET["min_speedup_b64"]
                                       and sweep_s <= TARGET["max_wall_s"]
                                       and spent is not None and spent <= TARGET["max_dense_epochs"])
    where = runs if args.quick else RESULTS  # a smoke test is not a result
    (where / f"{stem}.json").write_text(json.dumps(result, indent=2))
    shutil.copy(runs / "sweep" / "pareto.png", where / f"{stem}_pareto.png")
    (where / f"{stem}.md").write_text(table(result))
    print(table(result))


def speed(rec: dict | None) -> str:
    if not rec:
        return "-"
    if rec.get("verdict") not in ("faster", "slower"):
        return "no measurable change" + (" (busy)" if rec.get("noisy") else "")
    return f"{rec['ratio']:.2f}× ({rec['low']:.2f}–{rec['high']:.2f})" + (" (busy)" if rec.get("noisy") else "")


def table(r: dict) -> str:
    s, a, g, m, tg = r["sweep"], r.get("adaptive"), r["grid_best"], r["machine"], r["target"]
    t = s.get("balance_test") or {}
    c = s.get("compute") or {}
    lines = ["# Sweep benchmark: small CNN, Fashion-MNIST, tolerance 0.5 pt", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}. Training set: Fashion-MNIST train "
             f"({r['base_recipe']['data'].get('limit') or 'all 60,000'} images, {r['base_recipe']['data'].get('val_size') or 5000:,} held out for validation); test: the full "
             "test set. Cost: latency at batch 64 relative to dense, both timed alternately in each trial; costs whose "
             "intervals overlap tie and go to fewer MACs. Validation selects; only the balance point is scored on test. "
             f"Warm start: a sensitivity scan ({r['scan']['layers']} layers × {len(r['scan']['amounts'])} amounts, "
             f"{r['scan']['wall_s'] / 60:.1f} min, validation only)"
             + (f", its prediction the low end of a bisection of the channel sparsity ({r['search'].get('bisect', 3)} steps)"
                if s.get("bisect") else "") + f". Fidelity: {r['search']['fidelity']} over fine-tuning epochs.", "",
             f"Sweep: {sum(s['counts'].values())} trials ({', '.join(f'{n} {k}' for k, n in s['counts'].items())}) in "
             f"{s['wall_s'] / 60:.1f} min including the scan; compute {c.get('dense_epochs', float('nan')):.1f} dense-epoch "
             f"equivalents (budget {r['search'].get('budget_dense_epochs')}, basis {c.get('basis', '?')}"
             + (f": {c['dense_epoch_s']:.1f} s per dense epoch, {c['dense_epoch_s_from']}" if c.get("dense_epoch_s_from") else "")
             + f"); dense validation "
             f"{s['dense_val_accuracy']:.2f}, threshold {s['threshold']:.2f}.", "",
             *([bisect_text(s["bisect"]), ""] if bisect_text(s.get("bisect")) else []),
             "| point | params | test acc (drop) | measured speedup b1 | measured speedup b64 | wall |", "|---|---|---|---|---|---|"]
    if t:
        meas = t.get("measured") or {}
        p = ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                      for k, v in s["balance_params"].items())
        lines.append(f"| sweep balance point (trial {s['balance_trial']}) | {p} | {t['accuracy']:.2f} ({s['balance_test_drop']:.2f}) | "
                     f"{speed(meas.get('batch_1'))} | {speed(meas.get('batch_N'))} | {s['wall_s'] / 60:.0f} min |")
    else:
        lines.append("| sweep balance point | none within tolerance | | | | |")
    if a:
        meas = a.get("measured") or {}
        lines.append(f"| adaptive schedule (structured, l2, steps to 0.85) | kept sparsity {a['kept_sparsity']:.3f}"
                     f"{' (rolled back)' if a['rolled_back'] else ''} | {a['test_accuracy']:.2f} ({a['drop']:.2f}) | "
                     f"{speed(meas.get('batch_1'))} | {speed(meas.get('batch_N'))} | {a['wall_s'] / 60:.0f} min |")
    if g:
        lines.append(f"| fixed grid best within 0.5 pt ({g['name']}; {g['note']}) | | {g['after_ft']:.2f} ({g['drop']:.2f}) | "
                     f"{g['speedup_b1']:.2f}× | {g['speedup_b64']:.2f}× | |")
    if "met" in tg:
        lines += ["", f"Target (≥ {tg['min_speedup_b64']}× measured at batch 64 with the interval above 1, ≤ "
                  f"{tg['max_wall_s'] // 60} min, ≤ {tg['max_dense_epochs']:g} dense epochs): "
                  + ("**met**" if tg["met"] else "**missed**")]
    lines += ["", "![Pareto front](sweep_fashion_mnist_pareto.png)", ""]
    return "\n".join(lines + NOTES)


NOTES = """## Notes

- **2026-12-01, AMD EPYC host, with the bisection (`search.bisect`, default 3) and the strict budget:
  met.** The scan predicted 30 % of the channels within the tolerance before fine-tuning; the bisection
  went above it: 55 % (val 94.30, within), 67.5 % (stopped at epoch 1 by halving), 61.25 % (val 93.98,
  within, exactly at the threshold). Those three trials found the balance point for 3.3 dense-epoch
  equivalents. TPE then spent the rest on two points near 31 % (1.34–1.35×), a 57 % (L1) and a 78 %
  trial, both stopped at epoch 1 by halving, and a 46 % trial that the budget stopped after its second epoch (before this
  rule, the run just before it let that trial finish and spent 10.9 of the 10; its trials and
  balance point were the same). Balance: 61 % of the channels (L2), test 93.25 (−0.48), 2.15×
  (2.10–2.19) at batch 1 and 3.11× (3.06–3.15) at batch 64; 9.6 dense epochs, 11.8 min including the
  scan. The teacher's pass (its logits cached on disk for the later trials) took 15.4 s at the
  evaluation batch of 128, against about 28 s at 512. The dense epoch timed in the process was 51.1 s
  here, 44.6 s in the run below on the same host: the unit moves with the machine's load.
- **Earlier on 2026-12-01, AMD EPYC host, before the bisection** (fine-tuning batches of 32; after
  channel pruning the dense model as teacher, its pass over the training set counted in the first
  epoch's time). The budget let two trials run: the warm start's two points (channels 30 % and 35 %,
  from the sensitivity scan) each cost 3.2–3.7 dense-epoch equivalents (142–164 s of fine-tuning against
  44.6 s per dense epoch timed in the process), and the spent 6.9 plus the mean trial would pass 10.
  The balance point is the faster of the two, 35 % of the channels at 1.33× (batch 64): target missed.
- **The same benchmark met the target on the Intel host** (stop 24: batch 32, no teacher): 8 trials, 4
  stopped at epoch 1, 9.2 dense epochs in 14.0 min; balance 51 % of the channels (L1), test 93.27
  (−0.32), 2.28× (2.26–2.30) at batch 1 and 2.69× (2.63–2.72) at batch 64. Its two warm trials took
  144 and 132 s of fine-tuning, here 136 and 115 s less the teacher's pass (about 28 s, its
  `teacher_s`); what differs is the unit: a dense epoch took 61.7 s there and 44.6 s here, so the same 10 dense epochs buy 28 % fewer seconds, and the
  teacher's pass (0.6 dense epochs a trial) takes more of them.
- Without the teacher the two warm trials would have cost about 5.6 dense epochs here, leaving room for
  a third (an estimate from the seconds above, not a run). Either way a budget of a few trials goes
  mostly to the warm start's conservative points (30 % and 35 % of the channels, 1.33–1.37×).
""".split("\n")


if __name__ == "__main__":
    main()
