"""Tiny GPT benchmark (mechanics, not quality): a GPT-2-style causal LM trained from scratch on the SST-2
training sentences, pruned (unstructured 50% magnitude vs Wanda, 2:4 Wanda, heads + MLP neurons 50%)
and fine-tuned back (full; LoRA for one), all through `prunetune.pipeline.run` on CPU.

The model (4 layers, 256 wide, 4 heads, 64 positions, 3.7 M parameters) and its byte-level BPE tokenizer
(2,048 tokens) are built here from the SST-2 training sentences (nothing is downloaded). Dense: 3 epochs
on a seeded 20,000-sentence subset (about 4 minutes; cached, shared by every row); each pruned model is
fine-tuned 1 epoch on the same sentences. Test perplexity on a seeded 1,000-sentence subset of the SST-2
test sentences. Latency: torch.utils.benchmark p50, batch 1 and 16 at 48 tokens. Writes
benchmarks/results/gpt_tiny.json and .md. ../shared/ANCHORS.md has no language-model row to compare
with. About 15 minutes on 2 otherwise idle CPU cores (other processes on the cores slow it a lot);
`--quick` is a smoke test (written into benchmarks/runs/gpt_tiny_quick/ only).

    OMP_NUM_THREADS=2 python benchmarks/gpt_tiny.py [--quick] [--only NAME ...] [--collect]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from fashion_mnist import merge  # noqa: E402
from machine import describe  # noqa: E402

HERE = Path(__file__).parent
RESULTS = HERE / "results"
RUNS = HERE / "runs" / "gpt_tiny"
DATA = HERE.parent.parent / "shared" / "data" / "sst2"
ARCH = {"layers": 4, "dim": 256, "heads": 4, "positions": 64}
VOCAB = 2048

BASE = {
    "name": "gpt-tiny",
    "seed": 0,
    "task": "causal_lm",
    "data": {"source": "lm_text", "path": str(DATA), "limit": 20000, "test_limit": 1000, "max_length": 48,
             "eval_batch_size": 128},
    "dense": {"epochs": 3, "lr": 2e-3, "batch_size": 32, "warmup_epochs": 0.1, "lr_schedule": "cosine"},
    "finetune": {"epochs": 1, "lr": 1e-3, "batch_size": 32, "lr_schedule": "cosine"},
    "prune": {"sparsity": 0.5, "calibration_batches": 16},
    "evaluate": {"latency_batch": 16, "sequence_length": 48, "min_run_time": 0.5, "threads": 2, "generate": 3,
                 "max_new_tokens": 16},
}
LORA = {"finetune": {"method": "lora", "lr": 3e-3, "peft": {"r": 16, "alpha": 32}}}
CONFIGS = [
    ("unstructured-50-magnitude-full", {"prune": {"method": "unstructured", "importance": "l1"}}),
    ("unstructured-50-wanda-full", {"prune": {"method": "unstructured", "importance": "wanda"}}),
    ("2of4-wanda-full", {"prune": {"method": "nm", "importance": "wanda"}}),
    ("2of4-wanda-lora", merge({"prune": {"method": "nm", "importance": "wanda"}}, LORA)),
    ("heads-mlp-50-wanda-full", {"prune": {"method": "structured", "importance": "wanda"}}),
]
QUICK = {"data": {"limit": 600, "test_limit": 100}, "dense": {"epochs": 1}, "prune": {"calibration_batches": 2},
         "evaluate": {"min_run_time": 0.05, "generate": 1}}
NOTE = ("A mechanics check on a from-scratch tiny model (3.7 M parameters, 3 epochs over 20,000 "
        "sentences), not a quality claim: perplexities are far from any real language model's, and the "
        "relative drops say how each method treats this model only. ../shared/ANCHORS.md has no "
        "language-model (perplexity) row, so there is no peer row here.")


def build_model_folder(folder: Path) -> Path:
    """The tiny GPT-2 folder (tokenizer + random weights), built once; the dense cache is keyed by its path."""
    from prunetune.models.tiny_lm import tiny_model_folder

    stamp = json.dumps({**ARCH, "vocab": VOCAB}, sort_keys=True)
    if (folder / "config.json").is_file() and (folder / "bench.json").is_file() and (folder / "bench.json").read_text() == stamp:
        return folder
    with open(DATA / "train.tsv", encoding="utf-8") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(rows)
        texts = [r[0].strip() for r in rows]
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(folder.parent / "cache", ignore_errors=True)  # a rebuilt model invalidates the cached dense one
    tiny_model_folder(folder, texts, "gpt2", vocab_size=VOCAB, **ARCH)
    (folder / "bench.json").write_text(stamp)
    return folder


def summarise(name: str, rep: dict, wall_s: float) -> dict:
    st, sp, ft = rep["stages"], rep["speedup"], rep["finetune"]
    d, p, f = st["dense"], st["pruned"], st["finetuned"]
    mg = ft.get("merge") or {}
    return {
        "name": name, "prune": f"{rep['recipe']['prune']['method']} / {rep['recipe']['prune']['importance']}",
        "finetune": ft.get("method"),
        "dense_ppl": d["perplexity"], "pruned_ppl": p["perplexity"], "finetuned_ppl": f["perplexity"],
        "test_tokens": f["tokens"],
        "dense_params": d["params"], "params": f["params"], "nonzero": f["nonzero_params"],
        "prunable_sparsity": f["prunable_sparsity"], "sparsity": f["sparsity"], "macs_ratio": sp["finetuned"]["macs_ratio"],
        "speedup_b1": sp["finetuned"].get("speedup_batch_1"), "speedup_b16": sp["finetuned"].get("speedup_batch_N"),
        "latency_ms_b1": f.get("latency_ms", {}).get("batch_1", {}).get("p50"),
        "latency_ms_b16": f.get("latency_ms", {}).get("batch_N", {}).get("p50"),
        "dense_latency_ms_b1": d.get("latency_ms", {}).get("batch_1", {}).get("p50"),
        "dense_latency_ms_b16": d.get("latency_ms", {}).get("batch_N", {}).get("p50"),
        "trainable_fraction": ft.get("trainable_fraction"), "finetune_s": ft.get("wall_s"),
        "nonzero_gained_by_merge": mg.get("nonzero_gained"), "merge_max_logit_diff": mg.get("max_logit_diff"),
        "dense_source": rep["dense"].get("source"), "dense_train_s": rep["dense"].get("wall_s"),
        "wall_s": round(wall_s, 1), "notes": rep.get("notes"),
        "samples": {s: st[s].get("samples", []) for s in ("dense", "pruned", "finetuned")},
    }


def table(rows: list[dict], machine: dict, total_s: float, quick: bool) -> str:
    lines = [
        "# Tiny GPT on SST-2 sentences: pruning mechanics (CPU)" + (" — QUICK smoke run" if quick else ""),
        "",
        f"**{NOTE}**",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['torch_threads']} torch threads, torch "
        f"{machine['torch']}. Model: GPT-2 layout, {ARCH['layers']} layers, {ARCH['dim']} wide, {ARCH['heads']} heads, "
        f"byte-level BPE of {VOCAB} tokens trained on the SST-2 training sentences, random initialisation; dense "
        f"training {BASE['dense']['epochs']} epochs on a seeded {BASE['data']['limit']:,}-sentence subset (once, cached), "
        f"fine-tuning {BASE['finetune']['epochs']} epoch on the same sentences. Test perplexity on "
        f"{rows[0]['test_tokens'] if rows else '-'} predicted tokens of a seeded subset of the SST-2 test sentences. "
        "Latency: torch.utils.benchmark p50 at 48 tokens; speedup = dense p50 / fine-tuned p50 (measured). "
        f"Total wall time {total_s / 60:.1f} min.",
        "",
        "| run | pruning | fine-tuning | dense ppl | pruned ppl | fine-tuned ppl | params | non-zero | prunable sparsity | MACs ÷ | speedup b1 / b16 | trainable | non-zeros gained by merge | wall s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        gained = "" if r["nonzero_gained_by_merge"] is None else f"{r['nonzero_gained_by_merge']:+,}"
        sp = "-" if r["speedup_b1"] is None else f"{r['speedup_b1']:.2f}× / {r['speedup_b16']:.2f}×"
        lines.append(
            f"| {r['name']} | {r['prune']} | {r['finetune']} | {r['dense_ppl']:.1f} | {r['pruned_ppl']:.1f} | "
            f"{r['finetuned_ppl']:.1f} | {r['params']:,} | {r['nonzero']:,} | {r['prunable_sparsity']:.3f} | "
            f"{r['macs_ratio']:.2f} | {sp} | {100 * (r['trainable_fraction'] or 0):.1f}% | {gained} | {r['wall_s']:.0f} |")
    lines += ["", "Unstructured and 2:4 masks keep every tensor's shape: they buy compressed size, not speed, on "
              "stock PyTorch (as ANCHORS.md's speed rows say). Only the structured row removes heads and MLP neurons "
              "physically; the embeddings, LM head and hidden size are kept, so its parameter count falls by less "
              "than half.", ""]
    if rows and rows[0].get("dense_source") == "train":
        lines += [f"The first row's wall time includes training the dense model ({rows[0]['dense_train_s']:.0f} s); "
                  "the others load it from the cache.", ""]
    by = {r["name"]: r for r in rows}
    mag, wan, nm, lora, st = (by.get(n) for n in ("unstructured-50-magnitude-full", "unstructured-50-wanda-full",
                                                  "2of4-wanda-full", "2of4-wanda-lora", "heads-mlp-50-wanda-full"))
    found = []
    if mag and wan:
        found.append(f"Before fine-tuning, 50% unstructured: magnitude {mag['pruned_ppl']:.1f}, Wanda {wan['pruned_ppl']:.1f} "
                     f"(dense {mag['dense_ppl']:.1f}). Wanda's gains in its paper come from the large-magnitude input features "
                     "of pretrained LLMs, which a small model trained for minutes from scratch need not have: this is no "
                     "verdict on Wanda for a real checkpoint, only a check that the two criteria choose differently.")
    if nm and wan:
        found.append(f"2:4 with Wanda costs more before fine-tuning than unstructured 50% with Wanda ({nm['pruned_ppl']:.1f} "
                     f"vs {wan['pruned_ppl']:.1f}): the two-of-every-four constraint is stricter.")
    if mag:
        found.append("One epoch of full fine-tuning brings every pruned model below the dense perplexity: the dense "
                     "model is itself under-trained, so fine-tuning is also more training.")
    if lora and nm:
        found.append(f"LoRA ({100 * (lora['trainable_fraction'] or 0):.1f}% trainable) recovers less than full fine-tuning "
                     f"({lora['finetuned_ppl']:.1f} vs {nm['finetuned_ppl']:.1f}); its masked merge gained "
                     f"{lora['nonzero_gained_by_merge']} non-zeros, largest logit change {lora['merge_max_logit_diff']:.1e}.")
    if st and st["speedup_b1"] is not None:
        found.append(f"Heads and MLP neurons -50%: MACs ÷{st['macs_ratio']:.2f}, measured {st['speedup_b1']:.2f}× (batch 1) / "
                     f"{st['speedup_b16']:.2f}× (batch 16) faster, at {st['finetuned_ppl']:.1f} perplexity after fine-tuning.")
    if found:
        lines += ["Findings on this model:", "", *[f"- {x}" for x in found], ""]
    for r in rows:
        if r["name"].startswith("heads-mlp") and r["samples"]["dense"]:
            lines += [f"Greedy generations ({r['name']}): prompt → dense | pruned | fine-tuned", ""]
            for i, s in enumerate(r["samples"]["dense"]):
                gens = [r["samples"][k][i]["completion"] if i < len(r["samples"][k]) else "" for k in ("dense", "pruned", "finetuned")]
                lines.append(f"- `{s['prompt']}` → " + " | ".join(f"`{g.strip() or '(end of text)'}`" for g in gens))
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smoke test: 600 sentences, 1 dense epoch")
    ap.add_argument("--only", nargs="*", help="run only these configurations")
    ap.add_argument("--collect", action="store_true", help="rewrite the .md from the saved .json; run nothing")
    args = ap.parse_args()
    if args.collect:
        doc = json.loads((RESULTS / "gpt_tiny.json").read_text())
        (RESULTS / "gpt_tiny.md").write_text(table(doc["rows"], doc["machine"], doc["total_wall_s"], doc["quick"]))
        return
    if not (DATA / "train.tsv").is_file():
        raise SystemExit(f"needs the SST-2 folder at {DATA}")
    name = "gpt_tiny_quick" if args.quick else "gpt_tiny"
    runs = RUNS.parent / name
    runs.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PRUNETUNE_CACHE", str(runs / "cache"))
    from prunetune.pipeline import run
    from prunetune.recipe import Recipe

    t_all = time.perf_counter()
    folder = build_model_folder(runs / "init")
    machine = describe()
    rows = []
    for cname, cfg in CONFIGS:
        if args.only and cname not in args.only:
            continue
        recipe = merge(merge(BASE, {"name": cname, "model": {"name": f"hf:{folder}"}}), cfg)
        if args.quick:
            recipe = merge(recipe, QUICK)
        out = runs / cname
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        rep = run(Recipe.model_validate(recipe), out, log=lambda m: print(m, file=sys.stderr, flush=True), checkpoint=False)
        rows.append(summarise(cname, rep, time.perf_counter() - t0))
        print(json.dumps({k: rows[-1][k] for k in ("name", "dense_ppl", "pruned_ppl", "finetuned_ppl", "speedup_b16", "wall_s")}),
              flush=True)
        total = time.perf_counter() - t_all
        results = runs if args.quick else RESULTS  # a smoke run never overwrites the results
        results.mkdir(exist_ok=True)
        doc = {"note": NOTE, "machine": machine, "arch": {**ARCH, "vocab": VOCAB}, "base_recipe": BASE,
               "quick": args.quick, "total_wall_s": round(total, 1), "rows": rows}
        (results / f"{name}.json").write_text(json.dumps(doc, indent=2))
        (results / f"{name}.md").write_text(table(rows, machine, total, args.quick))
    print(f"wrote {results / (name + '.md')} in {(time.perf_counter() - t_all) / 60:.1f} min")


if __name__ == "__main__":
    main()
