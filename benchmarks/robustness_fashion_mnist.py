"""Robustness benchmark: the small CNN on Fashion-MNIST, dense vs pruned vs fine-tuned, under Gaussian
noise and FGSM / PGD attacks (the Adversarial Robustness Toolbox's; `pip install 'prunetune[robust]'`).

The four pruning points of the core benchmark (benchmarks/fashion_mnist.py, same recipes: structured
channels -50% / -75%, global unstructured 90% / 95%, one-shot, 3 fine-tuning epochs) plus the dense
model they share, each measured with

    evaluate.robustness: {noise: [0.1, 0.2], fgsm: [0.01, 0.05, 0.1], pgd: [0.01, 0.05, 0.1]}

on a seeded, class-balanced 1,000-image subset of the test set (strengths in pixel units of [0, 1];
PGD 10 steps of 2.5·ε/10 with one random start). Latency is not measured here (the core benchmark
does). Writes benchmarks/results/robustness_fashion_mnist.json and .md.

Resumable: each configuration's run folder (benchmarks/runs/robustness_fashion_mnist/NAME) is reused
when its report.json exists, so a killed run continues where it stopped; `--only NAME ...` runs (or
re-runs, with --rerun) just those configurations and keeps the others' rows. About 45 minutes on 2
CPU cores when the dense model must be trained (10 epochs); the dense model is cached by content hash,
so after the core benchmark it is reused. `--quick` is a smoke test (2,000 training images, 1 epoch,
200 attacked images) and, like `--out DIR`, never writes into benchmarks/results unless asked.

    python benchmarks/robustness_fashion_mnist.py [--quick] [--out DIR] [--only NAME ...] [--rerun]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from fashion_mnist import BASE, CONFIGS, merge  # noqa: E402
from machine import describe  # noqa: E402

from prunetune.pipeline import run  # noqa: E402
from prunetune.recipe import Recipe  # noqa: E402

HERE = Path(__file__).parent
NAMES = ("cnn-channels-50-oneshot", "cnn-channels-75-oneshot", "cnn-unstructured-90-oneshot", "cnn-unstructured-95-oneshot")
# The strengths (0.05, 0.1) plus 0.01: at 0.05 PGD already takes every undefended model to ~0 %,
# so 0.01 is where compressed and dense models can still differ.
ROBUSTNESS = {"noise": [0.1, 0.2], "fgsm": [0.01, 0.05, 0.1], "pgd": [0.01, 0.05, 0.1], "examples": 1000, "seed": 0}
COLUMNS = [("clean", None), ("noise", "0.1"), ("noise", "0.2"), ("fgsm", "0.01"), ("fgsm", "0.05"), ("fgsm", "0.1"),
           ("pgd", "0.01"), ("pgd", "0.05"), ("pgd", "0.1")]
HEAD = ["clean", "noise 0.1", "noise 0.2", "FGSM 0.01", "FGSM 0.05", "FGSM 0.1", "PGD 0.01", "PGD 0.05", "PGD 0.1"]
QUICK = {"data": {"limit": 2000}, "dense": {"epochs": 1}, "finetune": {"epochs": 1}}


def recipe_for(name: str, quick: bool) -> dict:
    cfg = dict(CONFIGS)[name]
    robustness = {**ROBUSTNESS, "examples": 200} if quick else ROBUSTNESS
    recipe = merge(merge(BASE, cfg), {"evaluate": {"latency": False, "memory": False, "robustness": robustness}})
    recipe["name"] = f"robust-{name}"
    return merge(recipe, QUICK) if quick else recipe


def column(attack: str, key: str | None) -> str:
    return attack if key is None else f"{attack} {key}"


def numbers(stage: dict) -> dict:
    r = stage["robustness"]
    return {column(a, k): (r[a] if k is None else r[a][k]) for a, k in COLUMNS}


def row(name: str, rep: dict) -> dict:
    st = rep["stages"]
    r = st["finetuned"]["robustness"]
    return {"name": name, "dense": numbers(st["dense"]), "pruned": numbers(st["pruned"]), "finetuned": numbers(st["finetuned"]),
            "accuracy": {s: st[s]["accuracy"] for s in ("dense", "pruned", "finetuned")},
            "sparsity": st["finetuned"]["sparsity"], "examples": r["examples"], "settings": {
                k: r[k] for k in ("units", "norm", "pgd_steps", "pgd_step_size", "pgd_random_init", "seed", "library")},
            "robustness_s": {s: st[s]["robustness"]["wall_s"] for s in ("dense", "pruned", "finetuned")},
            "dense_cache": (rep.get("dense") or {}).get("cache")}


def _cells(values: dict, dense: dict | None) -> list[str]:
    keys = [column(a, k) for a, k in COLUMNS]
    return [f"{values[c]:.2f}" if dense is None else f"{values[c]:.2f} ({values[c] - dense[c]:+.2f})" for c in keys]


def table(rows: list[dict], machine: dict, quick: bool) -> str:
    lines = ["# Fashion-MNIST robustness benchmark" + (" (quick smoke test: NOT a result)" if quick else ""), "",
             f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['torch_threads']} torch threads, torch "
             f"{machine['torch']}, Python {machine['python']}" + (f", GPU {machine['gpu']}" if machine.get("gpu") else "") + "."]
    if not rows:
        return "\n".join(lines + ["", "No configuration has finished yet."]) + "\n"
    s = rows[0]["settings"]
    dense = rows[0]["dense"]
    same = all(r["dense"] == dense for r in rows)
    lines += ["", f"Test accuracy (%) on {rows[0]['examples']} test images (seeded, class-balanced subset), clean and "
              f"perturbed. Strengths in pixel units of the [0, 1] range (ε/std in the normalised inputs); Gaussian noise "
              f"clipped to [0, 1]; FGSM and PGD: L∞, untargeted, true labels, from {s['library']}; PGD {s['pgd_steps']} steps "
              f"of {s['pgd_step_size']}·ε, {s['pgd_random_init']} random start. Recipes: the core benchmark's "
              "(benchmarks/fashion_mnist.py), one-shot, " + ("2,000 training images, 1 epoch each" if quick else
              "3 fine-tuning epochs") + ". In parentheses: points against the dense model.",
              "", "## After fine-tuning", "",
              "| config | " + " | ".join(HEAD) + " |", "|---|" + "---:|" * len(HEAD),
              "| dense | " + " | ".join(_cells(dense, None)) + " |"]
    lines += ["| " + r["name"] + " | " + " | ".join(_cells(r["finetuned"], dense)) + " |" for r in rows]
    lines += ["", "## Before fine-tuning (pruned only)", "", "| config | " + " | ".join(HEAD) + " |", "|---|" + "---:|" * len(HEAD),
              "| dense | " + " | ".join(_cells(dense, None)) + " |"]
    lines += ["| " + r["name"] + " | " + " | ".join(_cells(r["pruned"], dense)) + " |" for r in rows]
    lines += ["", "The dense row is the dense stage of the runs (one cached dense model, measured in each run: "
              + ("identical every time" if same else "**the runs' dense measurements differ**") + ").",
              "", "Peer: ../shared/ANCHORS.md has no robustness row (no noise, FGSM or PGD figures for this CNN), so there "
              "is nothing published to set these beside."]
    return "\n".join(lines) + "\n"


def save(json_path: Path, machine: dict, rows: list[dict], quick: bool) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"machine": machine, "robustness": ROBUSTNESS, "quick": quick, "rows": rows}, indent=2))
    json_path.with_suffix(".md").write_text(table(rows, machine, quick))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smoke test: 2,000 images, 1 epoch, 200 attacked images")
    ap.add_argument("--out", type=Path, help="folder for the results and runs (default benchmarks/results, "
                    "benchmarks/runs); --quick without --out writes to benchmarks/runs/robustness_quick only")
    ap.add_argument("--only", nargs="*", help="run only configs whose name starts with one of these")
    ap.add_argument("--rerun", action="store_true", help="run selected configs again even when their report exists")
    args = ap.parse_args()
    stem = "robustness_fashion_mnist" + ("_quick" if args.quick else "")
    if args.out:
        results, runs = args.out, args.out / "runs"
    elif args.quick:
        results = runs = HERE / "runs" / "robustness_quick"
    else:
        results, runs = HERE / "results", HERE / "runs" / stem
    json_path = results / f"{stem}.json"
    machine = describe()
    previous = {r["name"]: r for r in json.loads(json_path.read_text())["rows"]} if json_path.exists() else {}
    rows = []
    for name in NAMES:
        folder = runs / name
        selected = not args.only or any(name.startswith(o) for o in args.only)
        if not selected:
            if name in previous:
                rows.append(previous[name])
            continue
        if (folder / "report.json").exists() and not args.rerun:
            print(f"[{name}] reusing {folder}/report.json", flush=True)
            rep = json.loads((folder / "report.json").read_text())
        else:
            shutil.rmtree(folder, ignore_errors=True)
            t0 = time.time()
            rep = run(Recipe.model_validate(recipe_for(name, args.quick)), folder, log=lambda m: print(f"[{name}] {m}", flush=True),
                      checkpoint=False)
            print(f"[{name}] done in {time.time() - t0:.0f} s", flush=True)
        rows.append(row(name, rep))
        save(json_path, machine, rows, args.quick)
        f = rows[-1]["finetuned"]
        print(f"[{name}] fine-tuned: clean {f['clean']:.2f}, PGD 0.01 {f['pgd 0.01']:.2f}, PGD 0.05 {f['pgd 0.05']:.2f}", flush=True)
    save(json_path, machine, rows, args.quick)
    print(f"wrote {json_path} and {json_path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
