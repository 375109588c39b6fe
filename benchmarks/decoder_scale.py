"""Pruning a decoder bigger than a toy on a CPU: Wanda and SparseGPT on a 336 M-parameter Llama-style model.

A randomly initialised Llama/Qwen-style decoder is built from a config (no download: hidden 1024, 24
layers, MLP 2816, 16 query / 4 key-value heads, vocabulary 32,000, untied head: 336 M parameters,
1.35 GB in fp32), calibrated on random tokens (16 sequences x 256), pruned through the library's API
(`prune_calibrated`: Wanda's input norms in one pass; SparseGPT block by block, so one block's
Hessians and activations are held at a time) to 50 % and 2:4 over every linear layer of the blocks,
then saved. Each row runs in a fresh subprocess, so the peak resident memory (ru_maxrss) of one row
does not mix with another's; it is reported after building, after pruning and after saving, against
the model's fp32 size (target: pruning peak <= 2.5x). Writes benchmarks/results/decoder_scale.json
and .md. `--quick`: a 19 M-parameter model (hidden 256, 4 layers), 8 sequences x 128.

    python benchmarks/decoder_scale.py [--quick] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from machine import describe  # noqa: E402
RESULTS = HERE / "results"
FULL = {"hidden_size": 1024, "num_hidden_layers": 24, "intermediate_size": 2816, "num_attention_heads": 16,
        "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 512, "tie_word_embeddings": False}
QUICK = {**FULL, "hidden_size": 256, "num_hidden_layers": 4, "intermediate_size": 704, "num_attention_heads": 8,
         "num_key_value_heads": 2}
CALIBRATION = {"full": (16, 256), "quick": (8, 128)}  # sequences x tokens
BATCH = 4  # sequences per calibration batch
ROWS = {"wanda-50": ("wanda", {"method": "unstructured", "sparsity": 0.5}),
        "wanda-2of4": ("wanda", {"method": "nm", "n": 2, "m": 4}),
        "sparsegpt-50": ("sparsegpt", {"method": "unstructured", "sparsity": 0.5}),
        "sparsegpt-2of4": ("sparsegpt", {"method": "nm", "n": 2, "m": 4})}


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def one_row(name: str, quick: bool) -> dict:
    """Build, calibrate, prune and save in this process; return seconds and peaks."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from prunetune.artifacts import save_model
    from prunetune.pruning.controller import prune_calibrated
    from prunetune.pruning.masks import masked_layers
    from prunetune.pruning.targets import select_targets
    from prunetune.recipe import PruneSpec
    from prunetune.registry import IMPORTANCES, PRUNERS, load_builtins

    load_builtins()
    torch.manual_seed(0)
    start_peak = _peak_mb()  # the interpreter, torch and transformers before the model exists
    t0 = time.perf_counter()
    model = LlamaForCausalLM(LlamaConfig(**(QUICK if quick else FULL))).eval().requires_grad_(False)
    params = sum(p.numel() for p in model.parameters())
    built_s, built_peak = time.perf_counter() - t0, _peak_mb()
    n, length = CALIBRATION["quick" if quick else "full"]
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (n, length), generator=g)
    inputs = [{"input_ids": b, "attention_mask": torch.ones_like(b)} for b in ids.split(BATCH)]
    importance, prune = ROWS[name]
    spec = PruneSpec(importance=importance, scope="layer", calibration_batches=len(inputs), **prune)
    targets = select_targets(model, ["model.layers.*"], [], ["lm_head"])
    pruner = PRUNERS.get(spec.method)(spec, IMPORTANCES.get(importance)(), targets)
    t0 = time.perf_counter()
    pruner.setup(model, None, [spec.sparsity])
    prune_calibrated(pruner, model, spec.sparsity, inputs, lambda x: model(**x, use_cache=False))
    prune_s, prune_peak = time.perf_counter() - t0, _peak_mb()
    masks = masked_layers(model)
    kept = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        save_model(model, Path(d) / "m", {"task": "causal_lm", "model": {"name": "hf:random-llama"}, "num_classes": 0,
                                         "class_names": [], "input_shape": [length], "preprocess": {},
                                         "model_kwargs": {"head": "causal_lm"}})
        save_s = time.perf_counter() - t0
        saved_mb = sum(f.stat().st_size for f in (Path(d) / "m").iterdir()) / 2**20
    fp32_mb = params * 4 / 2**20
    return {"name": name, "params": params, "fp32_mb": round(fp32_mb, 1), "layers_pruned": len(masks),
            "sparsity": round(1 - kept, 4), "calibration": f"{n} x {length} random tokens",
            "build_s": round(built_s, 1), "prune_s": round(prune_s, 1), "save_s": round(save_s, 1),
            "peak_mb_start": round(start_peak, 1), "peak_mb_built": round(built_peak, 1), "peak_mb_pruned": round(prune_peak, 1), "peak_mb_saved": round(_peak_mb(), 1),
            "prune_peak_x_fp32": round(prune_peak / fp32_mb, 2), "saved_peak_x_fp32": round(_peak_mb() / fp32_mb, 2),
            "prune_peak_above_start_x_fp32": round((prune_peak - start_peak) / fp32_mb, 2),
            "saved_mb": round(saved_mb, 1), "torch_threads": torch.get_num_threads()}


def table(rows: list[dict], quick: bool) -> str:
    lines = [f"# Pruning a {rows[0]['params'] / 1e6:.0f} M-parameter Llama-style decoder on CPU"
             + (" (--quick smoke test)" if quick else "") if rows else "# decoder_scale", "",
             "Peak resident memory (ru_maxrss) per row in a fresh process, against the model's fp32 size. The pruning "
             "target is <= 2.5x.", "",
             "| row | sparsity | prune s | save s | RSS before the model MB | peak after build MB | peak after pruning MB "
             "(x fp32; above start x fp32) | peak after saving MB (x fp32) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['sparsity']:.3f} | {r['prune_s']:.1f} | {r['save_s']:.1f} | {r['peak_mb_start']:.0f} | "
                     f"{r['peak_mb_built']:.0f} | {r['peak_mb_pruned']:.0f} ({r['prune_peak_x_fp32']:.2f}x; "
                     f"{r['prune_peak_above_start_x_fp32']:.2f}x) | {r['peak_mb_saved']:.0f} "
                     f"({r['saved_peak_x_fp32']:.2f}x) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smoke test: a 19 M-parameter model")
    ap.add_argument("--only", nargs="*", help="run only these rows (" + ", ".join(ROWS) + ")")
    ap.add_argument("--row", help=argparse.SUPPRESS)  # internal: run one row in this process, print its JSON
    args = ap.parse_args()
    if args.row:
        print("ROW " + json.dumps(one_row(args.row, args.quick)), flush=True)
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS / ("decoder_scale_quick.json" if args.quick else "decoder_scale.json")
    # --only re-runs some rows and keeps the others of the last full run.
    kept = {r["name"]: r for r in json.loads(json_path.read_text())["rows"]} if args.only and json_path.exists() else {}
    rows = []
    for name in ROWS:
        if args.only and name not in args.only:
            if name in kept:
                rows.append(kept[name])
            continue
        cmd = [sys.executable, __file__, "--row", name] + (["--quick"] if args.quick else [])
        p = subprocess.run(cmd, capture_output=True, text=True)
        lines = [x for x in p.stdout.splitlines() if x.startswith("ROW ")]
        if p.returncode or not lines:
            sys.exit(f"{name}: failed (exit {p.returncode})\n{p.stderr[-3000:]}")
        rows.append(json.loads(lines[-1][4:]))
        r = rows[-1]
        print(f"[{name}] {r['params'] / 1e6:.1f} M params, sparsity {r['sparsity']:.3f}: prune {r['prune_s']} s, "
              f"peak {r['peak_mb_pruned']:.0f} MB ({r['prune_peak_x_fp32']}x fp32), after save {r['peak_mb_saved']:.0f} MB "
              f"({r['saved_peak_x_fp32']}x)", flush=True)
        json_path.write_text(json.dumps({"machine": describe(), "load_average_at_write": os.getloadavg(),
                                         "config": QUICK if args.quick else FULL, "rows": rows}, indent=2))
        json_path.with_suffix(".md").write_text(table(rows, args.quick))


if __name__ == "__main__":
    main()
