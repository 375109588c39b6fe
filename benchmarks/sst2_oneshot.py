"""SST-2 / MiniLM-L6: one-shot pruning criteria compared: magnitude vs Wanda vs SparseGPT (issue 16).

The dense model is sst2_minilm.py's (the same recipe, so the same cached fine-tuned MiniLM). The
encoder's linear weights are pruned per layer to 50 %, 70 % and 2:4 by each criterion (magnitude
|w|, Wanda |w| x input norm, SparseGPT masks with weight reconstruction; the last two calibrated on 8
training batches of 64 sentences), then fine-tuned one epoch. Accuracy on the labelled SST-2 test set
right after pruning and after the epoch. Writes benchmarks/results/sst2_oneshot.json and .md.
`--quick` is a smoke test (400 sentences, 1 dense epoch; 50 % and 2:4 only).

    python benchmarks/sst2_oneshot.py [--quick] [--only NAME ...]
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
from sst2_minilm import BASE, DATA  # noqa: E402

from prunetune.pipeline import run  # noqa: E402
from prunetune.recipe import Recipe  # noqa: E402

HERE = Path(__file__).parent
RESULTS = HERE / "results"
CRITERIA = {"magnitude": "l1", "wanda": "wanda", "sparsegpt": "sparsegpt"}
PATTERNS = {"50": {"method": "unstructured", "sparsity": 0.5}, "70": {"method": "unstructured", "sparsity": 0.7},
            "2of4": {"method": "nm", "n": 2, "m": 4}}
ONE_EPOCH = {"finetune": {"epochs": 1, "warmup_epochs": 0.1}, "evaluate": {"latency": False, "memory": False}}


def config(criterion: str, pattern: str) -> dict:
    # Encoder linear layers only (pooler and classifier dense), each layer to the same amount.
    prune = {**PATTERNS[pattern], "importance": CRITERIA[criterion], "scope": "layer", "include": ["*encoder*"],
             "calibration_batches": 8}
    return merge({"prune": prune}, ONE_EPOCH)


CONFIGS = [(f"{p}-{c}", config(c, p)) for p in PATTERNS for c in CRITERIA]


def summarise(name: str, rep: dict, wall: float) -> dict:
    st = rep["stages"]
    return {"name": name, "dense": st["dense"]["accuracy"], "before_ft": st["pruned"]["accuracy"],
            "after_ft": st["finetuned"]["accuracy"], "encoder_linear_sparsity": st["finetuned"].get("encoder_linear_sparsity"),
            "wall_s": round(wall, 1)}


def table(rows: list[dict], machine: dict, quick: bool) -> str:
    lines = ["# SST-2 / MiniLM-L6: magnitude vs Wanda vs SparseGPT, one-shot" + (" (--quick smoke test)" if quick else ""),
             "",
             f"Machine: {machine['cpu']}, {machine['cores']} cores. Encoder linear weights pruned per layer; one epoch of "
             "full fine-tuning; accuracy on the labelled SST-2 test set.",
             "",
             "| pattern | criterion | dense | after pruning | after 1 epoch | encoder sparsity | wall s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        pattern, crit = r["name"].split("-", 1)
        enc = "" if r["encoder_linear_sparsity"] is None else f"{r['encoder_linear_sparsity']:.3f}"
        lines.append(f"| {pattern.replace('2of4', '2:4')} | {crit} | {r['dense']:.2f} | {r['before_ft']:.2f} | "
                     f"{r['after_ft']:.2f} | {enc} | {r['wall_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smoke test: 400 sentences, 1 dense epoch, 50 %% and 2:4 only")
    ap.add_argument("--only", nargs="*", help="run only configs whose name starts with one of these")
    args = ap.parse_args()
    if not DATA.exists():
        sys.exit(f"{DATA}: SST-2 not found; see ../shared/data/README.md")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "sst2_oneshot_quick" if args.quick else "sst2_oneshot"
    runs, machine, json_path = HERE / "runs" / stem, describe(), RESULTS / f"{stem}.json"
    rows = []
    for name, cfg in CONFIGS:
        if (args.only and not any(name.startswith(o) for o in args.only)) or (args.quick and name.startswith("70")):
            continue
        recipe = merge(merge(BASE, cfg), {"name": name})
        if args.quick:
            recipe = merge(recipe, {"data": {"limit": 400, "test_limit": 300}, "dense": {"epochs": 1},
                                    "prune": {"calibration_batches": 4}})
        out = runs / name
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.time()
        rep = run(Recipe.model_validate(recipe), out, log=lambda m: print(f"[{name}] {m}", flush=True))
        rows.append(summarise(name, rep, time.time() - t0))
        r = rows[-1]
        print(f"[{name}] {r['dense']:.2f} -> pruned {r['before_ft']:.2f} -> 1 epoch {r['after_ft']:.2f}", flush=True)
        json_path.write_text(json.dumps({"machine": machine, "base_recipe": BASE, "rows": rows}, indent=2))
        json_path.with_suffix(".md").write_text(table(rows, machine, args.quick))


if __name__ == "__main__":
    main()
