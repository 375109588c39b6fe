"""Sweep benchmark: find the balance point of the small CNN on Fashion-MNIST within 0.5 points.

A 24-trial Optuna study (TPE) over pruning method (channels / unstructured), sparsity, importance
and fine-tuning epochs, minimising measured latency at batch 64 relative to the dense model; then
one adaptive-schedule run on the same data; compared with the best point of the fixed grid in
benchmarks/results/fashion_mnist.json. Writes benchmarks/results/sweep_fashion_mnist.{json,md} and
sweep_fashion_mnist_pareto.png.

To fit the issue's 60-minute budget on 2 cores, the training set is a seeded, class-balanced
20,000-image subset of Fashion-MNIST train (the dense model is trained on it for 10 epochs as in the
core benchmark); validation 5,000 of those are held out; the test set is the full 10,000.

    python benchmarks/sweep_fashion_mnist.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from fashion_mnist import merge  # noqa: E402
from machine import describe  # noqa: E402

from prunetune.pipeline import run  # noqa: E402
from prunetune.recipe import Recipe  # noqa: E402
from prunetune.search.study import sweep  # noqa: E402

HERE = Path(__file__).parent
RESULTS = HERE / "results"

BASE = {
    "name": "sweep-fmnist",
    "seed": 0,
    "model": {"name": "small_cnn"},
    "data": {"source": "fashion_mnist", "limit": 20000, "val_size": 5000},
    "dense": {"epochs": 10, "lr": 2e-3, "weight_decay": 0.05, "lr_schedule": "cosine", "warmup_epochs": 0.5},
    "finetune": {"epochs": 2, "lr": 1e-3, "weight_decay": 0.01, "lr_schedule": "cosine"},
    "evaluate": {"latency_batch": 64, "min_run_time": 0.5, "memory": False},
}
SEARCH = {
    "tolerance": 0.5, "objective": "latency", "sampler": "tpe", "trials": 24, "early_stop_slack": 1.5,
    "space": {
        "prune.method": {"choices": ["structured", "unstructured"]},
        "prune.sparsity": [0.3, 0.85],
        "prune.importance": {"choices": ["l1", "l2", "taylor"]},
        "finetune.epochs": [1, 2],
    },
}
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
    ap.add_argument("--quick", action="store_true", help="smoke test: 2,000 images, 4 trials")
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "sweep_fashion_mnist_quick" if args.quick else "sweep_fashion_mnist"
    runs = HERE / "runs" / stem
    shutil.rmtree(runs, ignore_errors=True)
    base, search = BASE, SEARCH
    if args.quick:
        base = merge(BASE, {"data": {"limit": 2000, "val_size": 500, "test_limit": 1000}, "dense": {"epochs": 2},
                            "evaluate": {"min_run_time": 0.1}})
        search = {**SEARCH, "trials": 4}
    log = lambda m: print(m, flush=True)  # noqa: E731
    t0 = time.time()
    doc = sweep(Recipe.model_validate({**base, "search": search}), runs / "sweep", log=log)
    sweep_s = time.time() - t0

    t1 = time.time()
    rep = run(Recipe.model_validate(merge({**base, "name": "adaptive"}, ADAPTIVE)), runs / "adaptive", log=lambda m: log(f"[adaptive] {m}"))
    adaptive_s = time.time() - t1
    a, sp = rep["stages"], rep["speedup"]["finetuned"]
    adaptive = {"test_accuracy": a["finetuned"]["accuracy"], "dense_test_accuracy": a["dense"]["accuracy"],
                "drop": round(a["dense"]["accuracy"] - a["finetuned"]["accuracy"], 2),
                "speedup_b64": sp.get("speedup_batch_N"), "speedup_b1": sp.get("speedup_batch_1"),
                "kept_sparsity": rep["adaptive"]["kept_sparsity"], "rolled_back": rep["adaptive"]["rolled_back"],
                "steps": rep["adaptive"]["steps"], "wall_s": round(adaptive_s, 1)}
    bal = doc.get("balance") or {}
    test = bal.get("test") or {}
    result = {
        "machine": describe(), "base_recipe": base, "search": search,
        "sweep": {"wall_s": round(sweep_s, 1), "counts": doc["counts"], "dense_val_accuracy": doc["dense"]["val_accuracy"],
                  "threshold": doc["threshold"], "balance_trial": doc["balance_trial"], "balance_params": bal.get("params"),
                  "balance_val_accuracy": bal.get("val_accuracy"), "balance_test": test,
                  "front": [r for r in doc["rows"] if r["pareto"]], "rows": doc["rows"]},
        "adaptive": adaptive,
        "grid_best": grid_best(SEARCH["tolerance"]),
        "target": {"min_speedup_b64": 4.0, "max_wall_s": 3600},
    }
    if test:
        drop = round(test["dense_accuracy"] - test["accuracy"], 2)
        result["sweep"]["balance_test_drop"] = drop
        result["target"]["met"] = bool((test.get("speedup_batch_N") or 0) >= 4.0 and sweep_s <= 3600)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2))
    shutil.copy(runs / "sweep" / "pareto.png", RESULTS / f"{stem}_pareto.png")
    (RESULTS / f"{stem}.md").write_text(table(result))
    print(table(result))


def table(r: dict) -> str:
    s, a, g, m = r["sweep"], r["adaptive"], r["grid_best"], r["machine"]
    t = s.get("balance_test") or {}
    lines = ["# Sweep benchmark: small CNN, Fashion-MNIST, tolerance 0.5 pt", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}. Training subset: "
             f"{r['base_recipe']['data'].get('limit')} images ({r['base_recipe']['data'].get('val_size')} held out for validation); "
             "test: the full test set. Cost: latency at batch 64 relative to dense, both timed alternately after each trial (validation accuracy selects; only the balance point is scored on test). The SST-2 benchmark ran on the same 2 cores during this sweep, so single latency figures are noisy (see README findings).", "",
             f"Sweep: {sum(s['counts'].values())} trials ({', '.join(f'{n} {k}' for k, n in s['counts'].items())}) in "
             f"{s['wall_s'] / 60:.1f} min; dense validation {s['dense_val_accuracy']:.2f}, threshold {s['threshold']:.2f}.", "",
             "| point | params | test acc (drop) | measured speedup b1 / b64 | wall |", "|---|---|---|---|---|"]
    if t:
        p = ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}" for k, v in s["balance_params"].items())
        lines.append(f"| sweep balance point (trial {s['balance_trial']}) | {p} | {t['accuracy']:.2f} ({s['balance_test_drop']:.2f}) | "
                     f"{t.get('speedup_batch_1', 0):.2f}× / {t.get('speedup_batch_N', 0):.2f}× | {s['wall_s'] / 60:.0f} min |")
    else:
        lines.append("| sweep balance point | none within tolerance | | | |")
    lines.append(f"| adaptive schedule (structured, l2, steps to 0.85) | kept sparsity {a['kept_sparsity']:.3f}"
                 f"{' (rolled back)' if a['rolled_back'] else ''} | {a['test_accuracy']:.2f} ({a['drop']:.2f}) | "
                 f"{a['speedup_b1']:.2f}× / {a['speedup_b64']:.2f}× | {a['wall_s'] / 60:.0f} min |")
    if g:
        lines.append(f"| fixed grid best within 0.5 pt ({g['name']}; {g['note']}) | | {g['after_ft']:.2f} ({g['drop']:.2f}) | "
                     f"{g['speedup_b1']:.2f}× / {g['speedup_b64']:.2f}× | |")
    lines += ["", "![Pareto front](sweep_fashion_mnist_pareto.png)", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
