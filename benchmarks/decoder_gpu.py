"""The decoder rows on a GPU (issue 16): pruning seconds and peak GPU memory, and measured latency.

The randomly initialised 336 M-parameter Llama-style decoder of decoder_scale.py, in bf16 on the GPU:
Wanda and SparseGPT to 50 % and 2:4 over every linear layer of the blocks (16 x 256 random tokens of
calibration), seconds and peak GPU memory for each; then latency at batch 1 and 32 (256 tokens each)
against the dense model, timed alternately (timing.compare_callables, each call synchronised): the 2:4
model with PyTorch's semi-structured sparse kernels (`to_sparse_semi_structured`, cuSPARSELt or
CUTLASS), and a structurally pruned one (heads + FFN -50 %, uniform, L2 importance: a plain
transformers model). Writes benchmarks/results/decoder_gpu.json and .md. Needs a CUDA GPU for the
latency rows; `--quick` (a 19 M model) runs everything else on the CPU as a smoke test.

    python benchmarks/decoder_gpu.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from decoder_scale import FULL, QUICK  # noqa: E402
from machine import describe  # noqa: E402
from peer_glue import fmt_speed  # noqa: E402

from prunetune.pruning.controller import prune_calibrated  # noqa: E402
from prunetune.pruning.masks import realise  # noqa: E402
from prunetune.pruning.targets import select_targets  # noqa: E402
from prunetune.recipe import PruneSpec  # noqa: E402
from prunetune.registry import IMPORTANCES, PRUNERS, load_builtins  # noqa: E402
from prunetune.timing import compare_callables  # noqa: E402

HERE = Path(__file__).parent
ROWS = {"wanda-50": ("wanda", {"method": "unstructured", "sparsity": 0.5}),
        "wanda-2of4": ("wanda", {"method": "nm", "n": 2, "m": 4}),
        "sparsegpt-50": ("sparsegpt", {"method": "unstructured", "sparsity": 0.5}),
        "sparsegpt-2of4": ("sparsegpt", {"method": "nm", "n": 2, "m": 4})}


def build(cfg: dict, device: torch.device, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**cfg)).to(device, dtype).eval().requires_grad_(False)


def prune(model, importance: str, how: dict, inputs: list, example: dict) -> None:
    spec = PruneSpec(importance=importance, scope="layer", calibration_batches=max(len(inputs), 1), **how)
    targets = select_targets(model, ["model.layers.*"], [], ["lm_head"])
    pruner = PRUNERS.get(spec.method)(spec, IMPORTANCES.get(importance)(), targets)
    pruner.setup(model, example, [spec.sparsity])
    prune_calibrated(pruner, model, spec.sparsity, inputs, lambda x: model(**x, use_cache=False))


def semi_structured(model) -> int:
    """Every 2:4 linear weight of the blocks as a semi-structured sparse tensor; how many were converted."""
    from torch.sparse import to_sparse_semi_structured

    n = 0
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.startswith("model.layers."):
            mod.weight = torch.nn.Parameter(to_sparse_semi_structured(mod.weight.detach()), requires_grad=False)
            n += 1
    return n


def timed(dense, model, ids: torch.Tensor) -> dict:
    def call(m):
        def f():
            m(input_ids=ids, use_cache=False)
            if ids.is_cuda:
                torch.cuda.synchronize()
        return f
    with torch.inference_mode():
        return compare_callables(call(dense), call(model), rounds=7, min_run_time=2.0, threads=torch.get_num_threads())


def table(doc: dict) -> str:
    m = doc["machine"]
    lines = [f"# A {doc['params'] / 1e6:.0f} M-parameter Llama-style decoder on {m['gpu'] or m['cpu']}", "",
             f"{doc['dtype']} on the device; calibration {doc['calibration']}; torch {m['torch']}. Latency: dense and pruned timed "
             "alternately, ratio of medians with a 95 % interval, sequence length 256.", "",
             "| row | sparsity | prune s | peak GPU memory GB (x bf16 size) |", "|---|---:|---:|---:|"]
    for r in doc["rows"]:
        lines.append(f"| {r['name']} | {r['sparsity']:.3f} | {r['prune_s']:.1f} | {r['peak_gb']:.2f} ({r['peak_x']:.2f}x) |")
    lines += ["", "| model | speedup b1 | speedup b32 | note |", "|---|---|---|---|"]
    for r in doc["latency"]:
        lines.append(f"| {r['name']} | {fmt_speed(r.get('b1'))} | {fmt_speed(r.get('b32'))} | {r.get('note', '')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a 19 M model, 4 x 64 tokens of calibration")
    args = ap.parse_args()
    load_builtins()
    cuda = torch.cuda.is_available()
    device, dtype = torch.device("cuda" if cuda else "cpu"), torch.bfloat16 if cuda else torch.float32
    cfg = QUICK if args.quick else FULL
    n, length = (4, 64) if args.quick else (16, 256)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg["vocab_size"], (n, length), generator=g).to(device)
    inputs = [{"input_ids": b, "attention_mask": torch.ones_like(b)} for b in ids.split(4)]
    example = {"input_ids": ids[:2], "attention_mask": torch.ones_like(ids[:2])}
    dense = build(cfg, device, dtype)
    params = sum(p.numel() for p in dense.parameters())
    size_gb = params * dense.dtype.itemsize / 1e9
    doc = {"machine": describe(), "dtype": str(dtype).removeprefix("torch."), "params": params, "calibration": f"{n} x {length} random tokens", "config": cfg,
           "rows": [], "latency": []}
    path = HERE / ("runs" if args.quick else "results") / ("decoder_gpu_quick.json" if args.quick else "decoder_gpu.json")
    path.parent.mkdir(parents=True, exist_ok=True)

    def save():
        path.write_text(json.dumps(doc, indent=2))
        path.with_suffix(".md").write_text(table(doc))

    pruned_24 = None
    for name, (importance, spec) in ROWS.items():
        model = build(cfg, device, dtype)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        prune(model, importance, spec, inputs, example)
        if cuda:
            torch.cuda.synchronize()
        row = {"name": name, "prune_s": round(time.perf_counter() - t0, 1),
               "peak_gb": round(torch.cuda.max_memory_allocated() / 1e9, 3) if cuda else 0.0}
        row["peak_x"] = round(row["peak_gb"] / size_gb, 2)
        model = realise(model, inplace=True)
        lin = [m.weight for k, m in model.named_modules() if isinstance(m, torch.nn.Linear) and k.startswith("model.layers.")]
        row["sparsity"] = round(sum(int((w == 0).sum()) for w in lin) / sum(w.numel() for w in lin), 4)
        doc["rows"].append(row)
        print(f"[{name}] prune {row['prune_s']} s, peak {row['peak_gb']} GB, sparsity {row['sparsity']}", flush=True)
        save()
        if name == "sparsegpt-2of4":
            pruned_24 = model
        else:
            del model
    structured = build(cfg, device, dtype)
    prune(structured, "l2", {"method": "structured", "sparsity": 0.5, "uniform": True}, [], example)
    structured = realise(structured, inplace=True)
    for batch in (1, 32):
        x = torch.randint(0, cfg["vocab_size"], (batch, 256), generator=g).to(device)
        for label, model in (("structured heads + FFN -50 % (uniform)", structured), ("SparseGPT 2:4", pruned_24)):
            rec = next((r for r in doc["latency"] if r["name"] == label), None)
            if rec is None:
                rec = {"name": label, "params": sum(p.numel() for p in model.parameters())}
                doc["latency"].append(rec)
            if label.endswith("2:4"):
                if not cuda:
                    rec["note"] = "semi-structured sparse kernels need a CUDA GPU: not timed"
                    continue
                if not rec.get("converted"):
                    rec["converted"] = semi_structured(model)
                    rec["note"] = f"{rec['converted']} linear weights as semi-structured sparse tensors"
            rec[f"b{batch}"] = timed(dense, model, x)
            print(f"[{label}] b{batch} {fmt_speed(rec[f'b{batch}'])}", flush=True)
            save()


if __name__ == "__main__":
    main()
