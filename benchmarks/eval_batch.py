"""Evaluation batch size: inference throughput of the built-in image models at batch 32 to 512.

Chooses the default `data.eval_batch_size` (used by every validation pass, test scoring, prediction and
the distillation teacher's pass over the training set). The models are built from their configs with
random weights (throughput does not depend on the values); each round times every batch size once, in
turn, for about `--seconds` each, so a busy spell hits all of them alike. Reports the median
images per second over the rounds and, for each size, the ratio to batch 512 with the range over rounds.
Writes benchmarks/results/eval_batch.{json,md}.

    python benchmarks/eval_batch.py [--rounds 5] [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe  # noqa: E402

from prunetune.models.factory import build_model  # noqa: E402
from prunetune.recipe.schema import ModelSpec  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SIZES = [32, 64, 128, 256, 512]
MODELS = {"small CNN (Fashion-MNIST 1x28x28)": ("small_cnn", (1, 28, 28)), "ResNet-20 (CIFAR-10 3x32x32)": ("resnet20", (3, 32, 32))}


def rate(model: torch.nn.Module, x: torch.Tensor, seconds: float) -> float:
    with torch.inference_mode():
        model(x)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            model(x)
            n += len(x)
        return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.0)
    args = ap.parse_args()
    rows = []
    load0 = os.getloadavg()[0]
    for label, (name, shape) in MODELS.items():
        model = build_model(ModelSpec(name=name), 10, shape).eval()
        x = torch.randn(max(SIZES), *shape)
        per = {b: [] for b in SIZES}
        for _ in range(args.rounds):
            for b in SIZES:
                per[b].append(rate(model, x[:b], args.seconds))
        for b in SIZES:
            ratios = [r / r512 for r, r512 in zip(per[b], per[512])]
            rows.append({"model": label, "batch": b, "images_per_s": round(statistics.median(per[b])),
                         "vs_512": round(statistics.median(ratios), 2), "vs_512_low": round(min(ratios), 2),
                         "vs_512_high": round(max(ratios), 2)})
    result = {"machine": describe(), "rounds": args.rounds, "seconds": args.seconds,
              "load_average": [round(load0, 2), round(os.getloadavg()[0], 2)], "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "eval_batch.json").write_text(json.dumps(result, indent=2))
    m = result["machine"]
    lines = ["# Evaluation batch size: inference throughput", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, torch {m['torch']}; load average "
             f"{result['load_average'][0]} before, {result['load_average'][1]} after. Random weights, {args.rounds} rounds of "
             f"about {args.seconds:g} s per batch size, sizes interleaved within each round.", "",
             "| model | batch | images/s (median) | ratio to batch 512 (range over rounds) |", "|---|---:|---:|---|"]
    lines += [f"| {r['model']} | {r['batch']} | {r['images_per_s']:,} | {r['vs_512']:.2f}× ({r['vs_512_low']:.2f}–{r['vs_512_high']:.2f}) |"
              for r in rows]
    lines += ["", "The default `data.eval_batch_size` is 128: at 512 the activations of a batch no longer fit the CPU's "
              "caches and throughput falls by half or more. On a GPU a larger batch is usually faster; set it there."]
    (RESULTS / "eval_batch.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
