"""SST-2 / MiniLM-L6, heads + FFN -50 %: what loading with plain transformers costs (issue 16).

Plans from the same cached dense MiniLM (sst2_minilm.py's recipe), each fine-tuned 2 epochs (best
dev epoch kept): prunetune's default (Taylor, heads + FFN -50 % ranked per layer), a global ranking
(each layer its own width), and `prune.uniform: true` (every layer the same width, so the folder gets
a standard config.json and loads with `AutoModelForSequenceClassification.from_pretrained`). BERT's
config cannot express fewer heads of the same width, so the uniform plans keep the heads and prune
FFN neurons only: -50 % and -75 % (about the MACs of the heads + FFN plans). The first two load
through prunetune only. Rows: test accuracy
before / after fine-tuning, best dev accuracy, heads and FFN width per layer, MACs ratio, how the
saved folder loads, and (`--latency`, on an idle machine) the speedup at batch 1 and 32, sequence
length 64, dense and pruned timed alternately (ratio of medians, 95 % interval).

    python benchmarks/sst2_uniform.py [--quick] [--only NAME ...] [--latency]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from fashion_mnist import merge  # noqa: E402
from machine import describe  # noqa: E402
from peer_glue import fmt_speed  # noqa: E402
from sst2_minilm import BASE  # noqa: E402

from prunetune.artifacts import load_model  # noqa: E402
from prunetune.data import build_data  # noqa: E402
from prunetune.measure import example_batch  # noqa: E402
from prunetune.pipeline import run  # noqa: E402
from prunetune.pruning.masks import realise  # noqa: E402
from prunetune.recipe import Recipe  # noqa: E402
from prunetune.tasks.classification import Classification  # noqa: E402
from prunetune.timing import compare_models  # noqa: E402

HERE = Path(__file__).parent
RESULTS = HERE / "results"
PRUNE = {"method": "structured", "sparsity": 0.5}  # importance and scope: prunetune's defaults (taylor, layer)
# BERT's config derives the head width from hidden_size / num_attention_heads, so a folder plain
# transformers loads keeps all 12 heads: the uniform plans prune FFN neurons only, at the same amount
# and at 75 % (about the MACs of the heads + FFN plans).
ROWS = {"per-layer (default)": {"prune": PRUNE},
        "global (non-uniform)": {"prune": {**PRUNE, "scope": "global"}},
        "uniform-ffn-50 (HF-native)": {"prune": {**PRUNE, "uniform": True, "head_sparsity": 0.0}},
        "uniform-ffn-75 (HF-native)": {"prune": {**PRUNE, "sparsity": 0.75, "uniform": True, "head_sparsity": 0.0}}}
HEAD_DIM = 32  # MiniLM-L6: 384 wide, 12 heads


def widths(model: torch.nn.Module) -> dict:
    """Heads and FFN neurons in each encoder layer, read off the weight shapes."""
    sd = model.state_dict()
    heads = [v.shape[0] // HEAD_DIM for k, v in sd.items() if k.endswith("attention.self.query.weight")]
    ffn = [v.shape[0] for k, v in sd.items() if k.endswith("intermediate.dense.weight")]
    return {"heads_per_layer": heads, "ffn_per_layer": ffn}


def slug(name: str) -> str:
    return name.split(" ")[0]


def table(doc: dict) -> str:
    m = doc["machine"]
    lines = ["# SST-2 / MiniLM-L6: what loading with plain transformers costs (per-layer, global and uniform plans)", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}. Dense MiniLM **{doc['dense']:.2f} % test**. "
             "Every plan: Taylor importance, heads + FFN -50 % unless named, 2 epochs of full fine-tuning, best dev epoch kept; accuracy on the labelled "
             "SST-2 test set (1,821). Speedups: dense and pruned timed alternately at sequence length 64, ratio of "
             "medians with a 95 % interval" + (f", {doc['latency_note']}" if doc.get("latency_note") else " (not timed yet)")
             + ".", "",
             "| plan | before FT | after FT (drop) | best dev | heads per layer | FFN per layer | params | MACs ÷ | "
             "folder loads with | speedup b1 | speedup b32 |", "|---|---:|---:|---:|---|---|---:|---:|---|---|---|"]
    for r in doc["rows"]:
        lines.append(f"| {r['name']} | {r['before_ft']:.2f} | {r['after_ft']:.2f} ({-r['drop']:+.2f}) | {r['best_dev']:.2f} | "
                     f"{'/'.join(map(str, r['heads_per_layer']))} | {'/'.join(map(str, r['ffn_per_layer']))} | "
                     f"{r['params'] / 1e6:.2f} M | {r['macs_ratio']:.2f} | {r['loads_with']} | "
                     f"{fmt_speed(r.get('speedup_b1'))} | {fmt_speed(r.get('speedup_b32'))} |")
    return "\n".join(lines) + "\n"


def save(doc: dict, path: Path) -> None:
    path.write_text(json.dumps(doc, indent=2))
    path.with_suffix(".md").write_text(table(doc))


def latency(doc: dict, runs: Path) -> None:
    task, threads = Classification(), torch.get_num_threads()
    test = None
    for row in doc["rows"]:
        rep = json.loads((runs / slug(row["name"]) / "report.json").read_text())
        if test is None:
            r = Recipe.model_validate(rep["recipe"])
            test = build_data(r.data, r.seed, r.model).test
            dense = realise(load_model(rep["dense"]["cache"])[0]).eval()
        pruned = realise(load_model(runs / slug(row["name"]) / "model")[0]).eval()
        for key, n in (("speedup_b1", 1), ("speedup_b32", 32)):
            row[key] = compare_models(dense, pruned, task.forward, example_batch(test, n, 64), threads=threads,
                                      rounds=7, min_run_time=1.0)
        print(f"[{row['name']}] b1 {fmt_speed(row['speedup_b1'])}  b32 {fmt_speed(row['speedup_b32'])}", flush=True)
    doc["timing_machine"] = describe()
    doc["latency_note"] = f"{threads} threads, 7 rounds of at least 1 s per model and batch size"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: 400 sentences, 1 + 1 epochs")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--latency", action="store_true", help="only time the saved plans (idle machine)")
    args = ap.parse_args()
    stem = "sst2_uniform_quick" if args.quick else "sst2_uniform"
    runs = HERE / "runs" / stem
    path = (runs if args.quick else RESULTS) / f"{stem}.json"
    if args.latency:
        doc = json.loads(path.read_text())
        latency(doc, runs)
        return save(doc, path)
    done = {r["name"]: r for r in json.loads(path.read_text())["rows"]} if path.exists() else {}
    for name, cfg in ROWS.items():
        if args.only and not any(name.startswith(o) for o in args.only):
            continue
        recipe = merge(merge(BASE, cfg), {"name": f"sst2-{slug(name)}", "evaluate": {"latency": False, "memory": False}})
        if args.quick:
            recipe = merge(recipe, {"data": {"limit": 400, "test_limit": 300}, "dense": {"epochs": 1},
                                    "finetune": {"epochs": 1}})
        out = runs / slug(name)
        shutil.rmtree(out, ignore_errors=True)
        rep = run(Recipe.model_validate(recipe), out, log=lambda m: None, checkpoint=False)
        st = rep["stages"]
        model = load_model(out / "model")[0]
        row = {"name": name, "recipe": cfg, "dense": st["dense"]["accuracy"], "before_ft": st["pruned"]["accuracy"],
               "after_ft": st["finetuned"]["accuracy"], "drop": round(st["dense"]["accuracy"] - st["finetuned"]["accuracy"], 2),
               "best_dev": max(h["val_accuracy"] for h in rep["finetune"]["history"]),
               "params": st["finetuned"]["params"], "macs_ratio": round(st["dense"]["macs"] / st["finetuned"]["macs"], 2),
               "loads_with": rep["saved_model"]["with"], "loads_how": rep["saved_model"]["how"],
               "finetune_s": rep["finetune"]["wall_s"], **widths(model)}
        done[name] = row
        print(f"[{name}] {row['dense']} -> {row['before_ft']} -> {row['after_ft']} (dev {row['best_dev']}), "
              f"heads {row['heads_per_layer']}, ffn {row['ffn_per_layer']}, loads with {row['loads_with']}", flush=True)
        save({"machine": describe(), "dense": row["dense"], "base_recipe": BASE, "rows": list(done.values())}, path)


if __name__ == "__main__":
    main()
