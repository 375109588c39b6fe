"""prunetune against the hand-glued pipeline, on the same dense model, splits and epoch budget.

The glue is what users write today: Torch-Pruning L2 one-shot channel pruning (classifier ignored)
or `torch.nn.utils.prune` global L1, then plain AdamW + OneCycleLR for the same number of epochs,
keeping the best validation epoch. prunetune runs its default recipe at the same amount. Both start
from prunetune's cached dense small CNN (the Fashion-MNIST benchmark's dense recipe) and use its
splits. Ablation rows switch one recovery ingredient at a time; every row records the best
validation accuracy (what defaults are chosen on) beside the test accuracy (what is reported).

Writes benchmarks/results/peer_glue.json and peer_glue.md.

    python benchmarks/peer_glue.py [--quick] [--only NAME ... [--exact]] [--no-latency | --latency-only]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune as tprune

sys.path.insert(0, str(Path(__file__).parent))
from fashion_mnist import BASE, merge  # noqa: E402
from machine import describe  # noqa: E402

from prunetune.artifacts import load_model  # noqa: E402
from prunetune.data.base import indexed_batches  # noqa: E402
from prunetune.measure import macs, serialized_sizes  # noqa: E402
from prunetune.pruning.masks import realise  # noqa: E402
from prunetune.pipeline import run  # noqa: E402
from prunetune.recipe import Recipe  # noqa: E402
from prunetune.sensitivity import allocated_recipe, scan, scan_and_plan  # noqa: E402
from prunetune.session import open_session  # noqa: E402
from prunetune.timing import compare_models  # noqa: E402

HERE = Path(__file__).parent
RESULTS = HERE / "results"
EPOCHS = BASE["finetune"]["epochs"]  # the same fine-tuning budget for every row (3)

# prunetune's defaults for each row: what `prunetune run` does with only method and amount set
# (fine-tuning: only the epoch budget is given; the rate, warm-up and schedule are prunetune's).
DEFAULT_CHANNELS = {"prune": {"method": "structured"}}
DEFAULT_UNSTRUCTURED = {"prune": {"method": "unstructured"}}
# A larger fine-tuning budget for the channel rows: 10 epochs (the dense model's own training budget) on
# both sides, prunetune with distillation from the dense model. Chosen on the mean validation accuracy of
# three fine-tuning seeds at channels -75 % (ft_seeds.md: 94.01 against 93.45 for 10 epochs without the
# teacher and 93.19 for the 3-epoch default). These rows were run with the teacher set explicitly; since
# 2026-12-01 it is prunetune's default after channel pruning of an image classifier (finetune.distill:
# auto), with the same alpha 0.7 and T 4, so the rows are prunetune's default at a 10-epoch budget.
LONG = 10
LONG_BUDGET = LONG  # the rows named ep10 fine-tune this many epochs (1 with --quick)
KD = {"alpha": 0.7, "temperature": 4.0}
LONG_CHANNELS = DEFAULT_CHANNELS
# The default until 2026-12-01, pinned: fine-tuning batches of 128 (now 32, chosen in ft_seeds.md). The
# MACs-budget rows were run against it and keep it, so that comparison stays one batch size.
BS128 = {"finetune": {"lr": 2e-3, "warmup_epochs": 0.2, "batch_size": 128, "distill": None}}

# One ingredient at a time, on top of the plain structured recipe (L2, per layer, one-shot, cosine).
PLAIN_CH = {"prune": {"method": "structured", "importance": "l2", "scope": "layer", "recalibrate_bn": 0},
            "finetune": {"lr": 1e-3, "warmup_epochs": 0.0, "lr_schedule": "cosine", "batch_size": 128, "distill": None}}
ABLATION_CH = {
    "plain": {},
    "bn": {"prune": {"recalibrate_bn": 32}},
    "global": {"prune": {"scope": "global"}},
    "onecycle": {"finetune": {"lr_schedule": "onecycle"}},
    "distill": {"finetune": {"distill": KD}},
    "lr2e3": {"finetune": {"lr": 2e-3, "warmup_epochs": 0.2}},
    # The same 3 fine-tuning epochs in all: 3 prune-and-recover rounds of 1 epoch each ...
    "iterative": {"prune": {"schedule": {"kind": "iterative", "steps": 3, "epochs_per_step": 1}}, "finetune": {"epochs": 1}},
    # ... or cubic gradual pruning (Zhu & Gupta) over the first half of fine-tuning ...
    "gradual": {"prune": {"schedule": {"kind": "gradual", "steps": 6, "end": 0.5}}},
    # ... or per-layer amounts allocated from a `prunetune sensitivity` scan (validation only).
    "sensitivity": {"prune": {"layer_sparsity": "scan"}},
}
SCAN_AMOUNTS = [0.25, 0.5, 0.75, 0.9]
PLAIN_UN = {"prune": {"method": "unstructured", "importance": "l1", "scope": "global", "recalibrate_bn": 0},
            "finetune": {"lr": 1e-3, "warmup_epochs": 0.0, "lr_schedule": "cosine", "batch_size": 128, "distill": None}}
ABLATION_UN = {
    "plain": {},
    "lamp": {"prune": {"importance": "lamp"}},
    "distill": {"finetune": {"distill": KD}},
}


def rows_wanted() -> list[tuple[str, str, float, dict | None, int]]:
    """(row name, kind, amount, prunetune overrides or None for the glue, fine-tuning epochs)."""
    out = []
    # Ablations where recovery is hardest (the most pruned amount of each kind): 2 CPU cores allow no more.
    for s in (0.5, 0.75):
        out.append((f"channels-{int(s * 100)}-glue", "channels", s, None, EPOCHS))
        out.append((f"channels-{int(s * 100)}-prunetune", "channels", s, DEFAULT_CHANNELS, EPOCHS))
    for s in (0.5, 0.75):  # a larger epoch budget on both sides: what the glue and prunetune recover with it
        out.append((f"channels-{int(s * 100)}-ep{LONG}-glue", "channels", s, None, LONG_BUDGET))
        out.append((f"channels-{int(s * 100)}-ep{LONG}-prunetune", "channels", s, LONG_CHANNELS, LONG_BUDGET))
    for s in (0.5, 0.75):  # per-layer amounts for the same MACs from a sensitivity scan, against uniform amounts
        same = f"channels-{int(s * 100)}-prunetune-bs128"
        out.append((same, "channels", s, merge(DEFAULT_CHANNELS, BS128), EPOCHS))
        out.append((f"channels-{int(s * 100)}-macs-budget", "channels", s,
                    merge(merge(DEFAULT_CHANNELS, BS128), {"prune": {"layer_sparsity": f"macs-of:{same}"}}), EPOCHS))
    for k, extra in ABLATION_CH.items():
        out.append((f"channels-75-ablation-{k}", "channels", 0.75, merge(PLAIN_CH, extra), EPOCHS))
    for s in (0.95, 0.98):
        out.append((f"unstructured-{int(s * 100)}-glue", "unstructured", s, None, EPOCHS))
        out.append((f"unstructured-{int(s * 100)}-prunetune", "unstructured", s, DEFAULT_UNSTRUCTURED, EPOCHS))
    for k, extra in ABLATION_UN.items():
        out.append((f"unstructured-98-ablation-{k}", "unstructured", 0.98, merge(PLAIN_UN, extra), EPOCHS))
    return out


# ----------------------------------------------------------------------------------------- the glue
def plain_forward(model: nn.Module, x):
    return model(x.to(next(model.parameters()).device))


@torch.no_grad()
def accuracy(model: nn.Module, data, batch: int = 512, forward=plain_forward) -> float:
    """Test-style accuracy in percent; `forward` maps (model, batch inputs) to logits (text: keyword inputs)."""
    model.eval()
    correct = sum(int((forward(model, x).argmax(1).cpu() == y).sum()) for x, y, _ in indexed_batches(data, batch))
    return 100.0 * correct / len(data)


def glue_finetune(model: nn.Module, bundle, epochs: int, lr: float, wd: float, bs: int, seed: int,
                  forward=plain_forward, transform=None) -> dict:
    """Plain AdamW + OneCycleLR, best validation epoch restored: the forty lines users write. `transform`
    (images) maps a training batch to its augmented copy, as a torchvision transform would."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    steps = epochs * math.ceil(len(bundle.train) / bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    best, best_state, history = -1.0, None, []
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        # Images: one random permutation cut into batches; text: length-grouped batches (padding trimmed).
        for x, y, _ in indexed_batches(bundle.train, bs, shuffle=True, generator=g):
            logits = forward(model, x if transform is None else transform(x))
            loss = F.cross_entropy(logits, y.to(logits.device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        val = accuracy(model, bundle.val, forward=forward)
        history.append(round(val, 2))
        if val > best:
            best, best_state = val, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return {"best_val": round(best, 2), "val_history": history, "wall_s": round(time.perf_counter() - t0, 1)}


def glue_prune(model: nn.Module, kind: str, amount: float, example: torch.Tensor) -> nn.Module:
    if kind == "channels":
        imp = tp.importance.MagnitudeImportance(p=2)
        pruner = tp.pruner.MetaPruner(model, example, importance=imp, pruning_ratio=amount,
                                      ignored_layers=[model.classifier])
        pruner.step()
        return model
    params = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=amount)
    return model


def glue_row(dense: nn.Module, bundle, kind: str, amount: float, epochs: int) -> tuple[dict, nn.Module]:
    torch.manual_seed(1)
    model = glue_prune(copy.deepcopy(dense), kind, amount, bundle.train.x[:2])
    before = accuracy(model, bundle.test)
    ft = BASE["finetune"]
    info = glue_finetune(model, bundle, epochs, ft["lr"], ft["weight_decay"], BASE["dense"].get("batch_size", 128), seed=1)
    if kind == "unstructured":
        for m in model.modules():
            if hasattr(m, "weight_mask"):
                tprune.remove(m, "weight")
    return {"before_ft": round(before, 2), "after_ft": round(accuracy(model, bundle.test), 2), **info}, model


# ------------------------------------------------------------------------------------- the rows
def prunetune_row(name: str, kind: str, amount: float, overrides: dict, runs: Path,
                  done: dict[str, dict], epochs: int = 0) -> tuple[dict, nn.Module]:
    """prunetune with `overrides` on its own defaults, for `epochs` fine-tuning epochs (0: the benchmark's);
    a "macs-of:ROW" layer_sparsity takes ROW's MACs ratio from `done`."""
    # prunetune's fine-tuning defaults: only the epoch budget is set; ablations and configs set their own.
    base = {**BASE, "finetune": {"epochs": epochs or EPOCHS}}
    wanted = merge(merge(base, overrides), {"name": name, "prune": {"sparsity": amount},
                                            "evaluate": {"latency": False, "memory": False}})
    allocation, ls = None, wanted["prune"].get("layer_sparsity")
    plain = Recipe.model_validate({**wanted, "prune": {k: v for k, v in wanted["prune"].items() if k != "layer_sparsity"}})
    if isinstance(ls, str) and ls.split(":", 1)[0] == "scan":  # per-layer amounts from a sensitivity scan of this recipe
        grid = [float(a) for a in ls.split(":", 1)[1].split(",")] if ":" in ls else SCAN_AMOUNTS  # "scan:0.9,0.99"
        recipe, allocation = allocated_recipe(plain, scan(plain, grid, log=lambda m: None), amount)
    elif isinstance(ls, str) and ls.startswith("macs-of:"):  # a MACs budget: as many MACs as that row's model
        doc, plan_macs = scan_and_plan(plain, SCAN_AMOUNTS, log=lambda m: None)
        target = 1 - 1 / done[ls.split(":", 1)[1]]["macs_ratio"]
        recipe, allocation = allocated_recipe(plain, doc, target, "macs", plan_macs)
    else:
        recipe = Recipe.model_validate(wanted)
    out = runs / name
    shutil.rmtree(out, ignore_errors=True)
    rep = run(recipe, out, log=lambda m: None, checkpoint=False)
    hist = rep["finetune"]["history"]
    last = max((r.get("phase", 1) for r in hist), default=1)  # iterative: earlier rounds were less pruned
    hist = [r for r in hist if r.get("phase", 1) == last]
    # The validation score of the epoch kept (a schedule that prunes during fine-tuning keeps none before its last event).
    kept = [r for r in hist if r["epoch"] == rep["finetune"]["best_epoch"]]
    best_val = kept[-1]["val_accuracy"] if kept else max((r["val_accuracy"] for r in hist), default=None)
    model = load_shipped(out / "model")
    return {"dense": rep["stages"]["dense"]["accuracy"], "before_ft": rep["stages"]["pruned"]["accuracy"], "after_ft": rep["stages"]["finetuned"]["accuracy"],
            "best_val": best_val, "val_history": [r["val_accuracy"] for r in hist],
            "wall_s": rep["finetune"]["wall_s"], "recipe": overrides, "ft_batch": recipe.finetune.batch_size,
            "distill": rep["distill"],
            "bn_recalibrations": rep.get("bn_recalibrations"), "allocation": allocation}, model


def load_shipped(folder: Path) -> nn.Module:
    return realise(load_model(folder)[0]).eval()


def measured(row: dict, dense: nn.Module, model: nn.Module, bundle, latency: bool) -> dict:
    one, big = bundle.test.x[:1], bundle.test.x[:64]
    d, c = serialized_sizes(dense), serialized_sizes(model)  # the saved file: bitmask layout when it pays
    raw, gz = c.get("sparse_bytes", c["size_bytes"]), c.get("sparse_gzip_bytes", c["gzip_bytes"])
    row.update({"macs_ratio": round(macs(dense, one) / macs(model, one), 2),
                "nonzero": int(sum(int(torch.count_nonzero(p)) for p in model.parameters())),
                "size_ratio": round(d["size_bytes"] / raw, 2), "gzip_ratio": round(d["size_bytes"] / gz, 2)})
    if latency:
        forward = lambda m, x: m(x)  # noqa: E731
        for key, x in (("speedup_b1", one), ("speedup_b64", big)):
            row[key] = compare_models(dense, model, forward, x, threads=torch.get_num_threads(), rounds=7, min_run_time=3.0,
                                      masked=row["kind"] == "unstructured")
    return row


TARGETS = {  # row -> (max drop in points, min measured speedup at batch 64, min gzip ratio)
    "channels-50": (0.3, 2.5, None), "channels-75": (0.8, 5.0, None), "unstructured-98": (0.5, None, 20.0),
    f"channels-50-ep{LONG}": (0.3, 2.5, None), f"channels-75-ep{LONG}": (0.8, 5.0, None),
}
MAIN_ROWS = ("channels-50", "channels-75", f"channels-50-ep{LONG}", f"channels-75-ep{LONG}", "unstructured-95", "unstructured-98")


def recipe_label(row: dict) -> str:
    """What prunetune ran besides its defaults, in recipe keys."""
    # The run's own distillation record; rows run before it was kept carry only the recipe's setting.
    d = row["distill"] if "distill" in row else ((row.get("recipe") or {}).get("finetune") or {}).get("distill")
    if not d:  # prunetune's default has no teacher after unstructured pruning
        return "default (no teacher)" if row["name"].startswith("unstructured") else "no teacher (the default before 2026-12-01)"
    how = f"distils from the dense model, α {d['alpha']}, T {d['temperature']:g}"
    return f"default ({how})" if d.get("auto", (d["alpha"], d["temperature"]) == (0.7, 4.0)) else f"default + {how}"


def fmt_speed(rec: dict | None) -> str:
    if not rec:
        return "-"
    if rec.get("verdict") == "no measurable change":
        return "no measurable change" + (" (busy)" if rec.get("noisy") else "")
    return f"{rec['ratio']:.2f}× ({rec['low']:.2f}–{rec['high']:.2f})" + (" (busy)" if rec.get("noisy") else "")


def other_dense(doc: dict, rs: list[dict]) -> list[str]:
    """A sentence when these rows started from another dense model than the main table's."""
    seen = sorted({r["dense"] for r in rs if r["dense"] != round(doc["dense"]["test"], 2)})
    if not seen:
        return []
    return [f"These rows started from an earlier host's dense model ({', '.join(f'{d:.2f}' for d in seen)} % test): "
            "the dense model is retrained from the same recipe and seed on each host, and its weights depend on the host's "
            "floating-point kernels. Compare them with each other, not with the main table.", ""]


def table(doc: dict) -> str:
    m, rows = doc["machine"], {r["name"]: r for r in doc["rows"]}
    lines = ["# prunetune against the glue, on the same dense model", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, torch {m['torch']}. "
             f"Dense small CNN (Fashion-MNIST benchmark recipe, cached): **{doc['dense']['test']:.2f} % test**. "
             "FT ep: fine-tuning epochs of both sides, best validation epoch kept; "
             "the glue is Torch-Pruning L2 one-shot (classifier ignored) or torch.nn.utils.prune global L1, then "
             "AdamW + OneCycleLR in batches of 128; FT batch: prunetune's fine-tuning batch. Speedups: dense and pruned timed alternately in one process, ratio of medians with "
             "a 95 % bootstrap interval; \"no measurable change\" when it contains 1.0. File ÷: the dense safetensors "
             "file's bytes over the pruned model's saved file (prunetune's bitmask layout for mostly-zero tensors), raw "
             "and gzip-compressed.", "",
             "| row | FT ep | glue: val / test (drop) | prunetune: val / test (drop) | prunetune recipe | FT batch | "
             "prunetune − glue (test pt) | MACs ÷ | speedup b1 | speedup b64 | file ÷ (raw / gzip) | target |",
             "|---|---:|---|---|---|---:|---:|---:|---|---|---:|---|"]
    for key in MAIN_ROWS:
        g, p = rows.get(f"{key}-glue"), rows.get(f"{key}-prunetune")
        if not (g and p):
            continue
        t = TARGETS.get(key)
        verdict = ""
        if t:
            sp = (p.get("speedup_b64") or {})
            ok = p["drop"] <= t[0] and (t[1] is None or (sp.get("verdict") == "faster" and sp["ratio"] >= t[1])) \
                and (t[2] is None or p["gzip_ratio"] >= t[2])
            verdict = ("met" if ok else "**missed**") + f" (≤{t[0]} pt" + (f", ≥{t[1]}×" if t[1] else "") + \
                (f", gzip ≥{t[2]}×" if t[2] else "") + ")"
        lines.append(f"| {key} | {len(p['val_history'])} | {g['best_val']:.2f} / {g['after_ft']:.2f} ({g['drop']:+.2f}) | "
                     f"{p['best_val']:.2f} / {p['after_ft']:.2f} ({p['drop']:+.2f}) | {recipe_label(p)} | {p.get('ft_batch', '?')} | "
                     f"{p['after_ft'] - g['after_ft']:+.2f} | {p['macs_ratio']:.2f} | "
                     f"{fmt_speed(p.get('speedup_b1'))} | {fmt_speed(p.get('speedup_b64'))} | {p['size_ratio']:.1f} / {p['gzip_ratio']:.1f} | {verdict} |")
    g, p = rows.get("minilm-heads-ffn-50-glue"), rows.get("minilm-heads-ffn-50-prunetune")
    if g and p:
        lines += ["", f"## MiniLM-L6, heads + FFN neurons −50 %, SST-2 subset (dense {doc['minilm_dense']['test']:.2f} % test)", "",
                  "Same cached dense MiniLM (`benchmarks/sst2_minilm.py` recipe), same 8,000 sentences, "
                  f"{len(p['val_history'])} fine-tuning epochs each, best dev epoch kept; test is SST-2's labelled test set "
                  "(1,821 sentences: one standard error near 88 % is about 0.75 pt). The glue: Torch-Pruning L2 over heads and "
                  "FFN neurons, AdamW + OneCycleLR. prunetune: its default structured recipe "
                  f"(importance {p.get('importance', '?')}).", "",
                  "| side | before FT (test) | dev | test (drop) | MACs ÷ | speedup b1 | speedup b32 |",
                  "|---|---:|---:|---|---:|---|---|"]
        for side, r in (("glue", g), ("prunetune default", p)):
            lines.append(f"| {side} | {r['before_ft']:.2f} | {r['best_val']:.2f} | {r['after_ft']:.2f} ({r['drop']:+.2f}) | "
                         f"{r['macs_ratio']:.2f} | {fmt_speed(r.get('speedup_b1'))} | {fmt_speed(r.get('speedup_b32'))} |")
    budget = [(rows[f"{k}-prunetune-bs128"], rows[f"{k}-macs-budget"]) for k in ("channels-50", "channels-75")
              if f"{k}-prunetune-bs128" in rows and f"{k}-macs-budget" in rows]
    if budget:
        lines += ["", "## Per-layer amounts for a MACs budget (`prunetune sensitivity --budget macs`)", "",
                  "prunetune's default recipe as it was before fine-tuning batches of 32 (batch 128), the same 3 epochs; "
                  "per-layer amounts from a scan of the dense model "
                  f"(each layer alone at {', '.join(map(str, SCAN_AMOUNTS))}, validation only) allocated so the real "
                  "plan has the uniform row's MACs.", "", *other_dense(doc, [r for pair in budget for r in pair]),
                  "| plan | best val | test (drop) | MACs ÷ | parameters kept | speedup b1 | speedup b64 | per-layer amounts |",
                  "|---|---:|---|---:|---:|---|---|---|"]
        for u, m in budget:
            for label, r in ((u["name"] + " (uniform)", u), (m["name"], m)):
                alloc = ", ".join(f"{k} {v:.2f}" for k, v in (r.get("allocation") or {}).items()) or f"all {r['amount']}"
                lines.append(f"| {label} | {r['best_val']:.2f} | {r['after_ft']:.2f} ({r['drop']:+.2f}) | {r['macs_ratio']:.2f} | "
                             f"{r['nonzero']:,} | {fmt_speed(r.get('speedup_b1'))} | {fmt_speed(r.get('speedup_b64'))} | {alloc} |")
    lines += ["", "## Ablation: one recovery ingredient at a time (defaults are chosen on validation)", "",
              *other_dense(doc, [r for r in doc["rows"] if "-ablation-" in r["name"]]),
              "| row | before FT (test) | best val | test | Δ val vs plain | Δ test vs plain | MACs ÷ | FT s |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in doc["rows"]:
        if "-ablation-" not in r["name"]:
            continue
        plain = rows.get(r["name"].rsplit("-ablation-", 1)[0] + "-ablation-plain")
        dv = f"{r['best_val'] - plain['best_val']:+.2f}" if plain else ""
        dt = f"{r['after_ft'] - plain['after_ft']:+.2f}" if plain else ""
        lines.append(f"| {r['name']} | {r['before_ft']:.2f} | {r['best_val']:.2f} | {r['after_ft']:.2f} | {dv} | {dt} | "
                     f"{r['macs_ratio']:.2f} | {r['wall_s']:.0f} |")
    lines += ["", "One standard error of a test accuracy near 93 % on 10,000 images is about 0.25 pt; of a validation "
              "accuracy on 5,000 images about 0.35 pt: single-seed differences smaller than that are not wins.", ""]
    lines += NOTES
    return "\n".join(lines) + "\n"


NOTES = """## Notes

- **This table's host.** The main rows above ran on 2026-12-01 on a 2-core AMD EPYC, one at a time on
  an otherwise idle machine. The dense model was retrained there from the same recipe and seed and
  came out at 93.73 % test, against 93.59 % on the Intel host of the earlier runs: its weights depend
  on the host's floating-point kernels. So every main row was run again on it, glue and prunetune
  alike. On the Intel dense model the same 3-epoch rows read: −50 % 93.50 (0.09) against the glue's
  92.85 (+0.65), −75 % 92.10 (1.49) against 91.23 (+0.87), 95 % 93.65 (−0.06) against 93.25
  (+0.40), 98 % 93.24 (0.35) against 91.79 (+1.45); speedups 2.57× and 5.19× at batch 64.
- **Distillation after channel pruning, the default since 2026-12-01.** The two 3-epoch channel rows
  were run again with it (the glue rows are unchanged): −50 % 93.63 (0.10) where the run without a
  teacher gave 93.19 (0.54), −75 % 92.53 (1.20) where it gave 92.47 (1.26). The choice was made on
  validation over six fine-tuning seeds (`ft_seeds.md`: +0.02 and +0.25 pt; the test figures here
  did not choose). The unstructured rows keep their runs: there the default has no teacher
  (validation level with and without it over six seeds at 98 %).
- **Where the default's margin is under 0.2 pt, and why.** Unstructured 95 % (+0.01) at 3 epochs:
  both sides end within about one and a half test standard errors of the dense model (drops 0.35 and
  0.36), where one fine-tuning seed alone moves a row by up to 0.6 pt of validation accuracy
  (`ft_seeds.md`); on the Intel dense model the same row was +0.40, and prunetune's validation
  accuracy is the higher here (+0.32). Read it as a tie at this budget, not as a win or a loss.
- **The 10-epoch rows**: both sides get 10 fine-tuning epochs, the dense model's own training budget;
  prunetune distils from the dense model (α 0.7, T 4, logits cached; set explicitly when these rows ran,
  the same as today's default), chosen on the mean validation accuracy of three fine-tuning seeds at
  −75 % (`ft_seeds.md`: 94.01 against 93.45 for the same 10 epochs without the teacher). The glue gains
  nothing from the extra epochs at −50 % (92.96 against 93.11 at 3) and 0.51 pt at −75 %; prunetune is
  level at −50 % (93.60 against 93.63) and gains 0.88 at −75 %. Both targets are met on these rows:
  −50 % within 0.13 pt at 2.71×, −75 % within 0.32 pt at 6.01× (batch 64); over three fine-tuning
  seeds the −75 % drop is 0.48 (0.32, 0.52, 0.59). Rows of one architecture timed in different runs
  agree within a few per cent at batch 64 (2.67×, 2.71× and 2.76× at −50 %; 6.03×, 6.01× and 5.84× at
  −75 %); at batch 1 they differ by up to a fifth (2.02×, 1.85× and 2.17× at −50 %; 3.20×, 2.73× and
  2.74× at −75 %), though no run was flagged noisy there: batch-1 figures for models under 0.5 ms are
  good to about a fifth. The new −50 % row's first timing was flagged busy at batch 1 (its interval
  held 1.0); the figures above are from timing it again alone (`--latency-only`).
- On the Intel host (2026-12-01) prunetune began fine-tuning in batches of 32 (was 128), chosen on the mean validation
  accuracy of three fine-tuning seeds (`ft_seeds.md`: +0.29 pt at −75 %, +0.08 at −50 %). The four
  main prunetune rows were run again with it (validation +0.20, +0.72, +0.22, +0.42 against their
  batch-128 runs). One seed is one draw: over three fine-tuning seeds the batch-32 default loses 0.32 pt
  at −50 % (93.50, 93.19, 93.13) and 1.40 at −75 % (92.10, 92.25, 92.23), so the −50 % target
  (≤ 0.3) is met by this row but only on the threshold on average. The rows labelled `-bs128` below
  are the former default, kept because the MACs-budget rows were compared against them; the ablation
  rows also ran at batch 128.
- Ablation rows ran two at a time, one torch thread each, without latency; the main rows one at a time
  with two threads on an otherwise idle machine. The same recipe (channels −75 %, lr 2e-3 + warm-up)
  gave 92.20 % at one thread (ablation) and 91.89 % at two (the default row): floating-point order
  alone moves a row by about 0.3 pt, one standard error.
- What the ablation chose (on validation): `finetune.lr` 2e-3 with a 0.2-epoch warm-up (+0.40 pt val)
  and, for unstructured pruning, LAMP global (+0.50 pt val); both are now prunetune's defaults.
  BatchNorm recalibration changes nothing after fine-tuning (training-mode BatchNorm re-estimates the
  statistics within the first epoch) and, at −75 %, not even the before-fine-tuning accuracy (the
  network is at chance either way): it stays off by default. Global channel ranking lost 2.7 pt val
  at −75 % (its plan thins features.7 from 64 channels to 1 and features.17 from 128 to 4, near
  Torch-Pruning's 95 % per-layer cap, while features.3/10/14 keep all theirs). OneCycle, the glue's
  schedule, lost 0.5 pt against cosine. Distillation gained +0.55 pt test but −0.04 val in this single
  seed, so it did not become a default then; six seeds at batch 32 (`ft_seeds.md`) later made it the
  default after channel pruning.
- Speed on the Intel host: the channels rows were timed again on 2026-12-01 (idle, 2 threads, beside the
  MACs-budget rows): 2.72× (2.71–2.78) at −50 % and 5.76× (5.66–5.92) at −75 % at batch 64, where
  the same saved models measured 2.24× (2.19–2.28) and 3.73× (3.63–3.84) on 2026-11-30. The dense
  model itself ran 21.1 ms today against 27.4 ms then at batch 64: the host behind this "Intel Xeon Processor"
  changes between sessions, and the pruned models gain more on today's. The speed halves of the
  targets were met on that machine at 3 epochs; the accuracy halves were not. Masked models show no measurable
  change, as they should on dense kernels.
- Later ablation rows (iterative, gradual, sensitivity) ran at one torch thread on a machine busy with
  other jobs (accuracy only; nothing here is timed). Iterative pruning (3 rounds of 1 epoch: 37 %,
  60 %, then 75 % of channels, the same 3 epochs) ends 0.78 pt val below one-shot: the final, most
  pruned model gets one epoch instead of three. Cubic gradual pruning over the first half of
  fine-tuning is level with one-shot (−0.06 val). Neither earns a place at this epoch budget.
- Per-layer amounts from `prunetune sensitivity` at a parameter-weighted 0.75 put 90 % on the large
  fully connected `head.0` and leave the convolutions whole (features.17: 25 %): +2.04 pt val, but
  MACs ÷1.11 against ÷15.19 for the uniform plan, so it is not the same compression. The MACs-budget
  rows above are that comparison at the same MACs (the real plan within 1 % of the uniform plan's
  kept MACs): the scan's amounts keep about a third of the parameters, but no more accuracy than
  uniform amounts (−0.12 and −0.64 pt val at −50 % and −75 %, inside two standard errors): a layer's
  drop with no fine-tuning, alone, does not predict what three epochs recover when all are pruned.
  The scans ran on a machine busy with another benchmark (accuracy only).
- MiniLM row, the same compression: the glue now removes heads too (Torch-Pruning's
  `head_pruning_ratio` set to the amount; the first glue run left it at 0.0 and pruned FFN neurons
  only: 86.22 % at MACs ÷1.50). Both sides end with the same architecture (17,397,506 parameters, 6 of
  12 heads and 768 of 1,536 FFN neurons in every layer, MACs ÷2.00), so the glue row was not timed
  again. prunetune's default (Taylor importance) keeps 83.86 % right after pruning against the glue's
  L2 75.89, and ends **2.31 pt higher on test** (87.04 against 84.73; 2.75 pt on dev, 86.58 against
  83.83), three times one accuracy's standard error. Dense MiniLM: the dev-chosen 5-epoch recipe, 88.14 % test.""".split("\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2,000 training images, 1 epoch: a smoke test")
    ap.add_argument("--only", nargs="*", help="row names (prefix match)")
    ap.add_argument("--exact", action="store_true", help="--only names whole rows")
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--table", action="store_true", help="only rewrite the .md from the .json")
    ap.add_argument("--latency-only", action="store_true",
                    help="time the saved models of the --only rows already in the results (accuracy kept)")
    ap.add_argument("--runs", default="runs/peer_glue")
    ap.add_argument("--json", help="results file (default benchmarks/results/peer_glue.json); rows already in it are kept")
    args = ap.parse_args()
    global BASE, EPOCHS, LONG_BUDGET
    if args.table:
        path = Path(args.json) if args.json else RESULTS / "peer_glue.json"
        path.with_suffix(".md").write_text(table(json.loads(path.read_text())))
        return
    if args.quick:
        BASE = merge(BASE, {"data": {"limit": 2000}, "dense": {"epochs": 1}, "finetune": {"epochs": 1}})
        EPOCHS = LONG_BUDGET = 1  # a smoke test: every row fine-tunes one epoch, the 10-epoch rows included
    recipe = Recipe.model_validate(BASE)
    session = open_session(recipe, log=lambda m: None)
    bundle = session.load_data(recipe.data, score_on="test")
    dense, info = session.obtain_dense(recipe)
    dense.eval()
    dense_acc = accuracy(dense, bundle.test)
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    json_path = Path(args.json) if args.json else (  # a smoke test is not a result
        runs / "peer_glue_quick.json" if args.quick else RESULTS / "peer_glue.json")
    old = json.loads(json_path.read_text()) if json_path.exists() else {"rows": []}
    done = {r["name"]: r for r in old["rows"]}  # rows (and the MiniLM rows' keys) already there are kept
    for name, kind, amount, overrides, epochs in rows_wanted():
        if args.only and not any(name == o if args.exact else name.startswith(o) for o in args.only):
            continue
        if args.latency_only:  # a row run with --no-latency (its model saved under --runs), timed now
            if name in done and (runs / name / "model").exists():
                measured(done[name], dense, load_shipped(runs / name / "model"), bundle, latency=True)
                print(f"{name}: b1 {fmt_speed(done[name]['speedup_b1'])}, b64 {fmt_speed(done[name]['speedup_b64'])}", flush=True)
                write(json_path, {**old, "machine": describe(), "rows": list(done.values())})
            continue
        t0 = time.perf_counter()
        if overrides is None:
            row, model = glue_row(dense, bundle, kind, amount, epochs)
        else:
            row, model = prunetune_row(name, kind, amount, overrides, runs, done, epochs)
        row = measured({"name": name, "kind": kind, "amount": amount, "dense": round(dense_acc, 2), **row},
                       dense, model, bundle, latency=not args.no_latency and "ablation" not in name and overrides is not None)
        row["drop"] = round(row["dense"] - row["after_ft"], 2)
        row["row_s"] = round(time.perf_counter() - t0, 1)
        done[name] = row
        print(f"{name}: val {row['best_val']} test {row['before_ft']} -> {row['after_ft']} (drop {row['drop']}) "
              f"{row['row_s']:.0f}s", flush=True)
        write(json_path, {**old, "machine": describe(), "dense": {"test": dense_acc, **{k: v for k, v in info.items()
                                                                                if k != "history"}},
                          "base_recipe": BASE, "rows": list(done.values())})


def write(path: Path, doc: dict) -> None:
    path.write_text(json.dumps(doc, indent=2))
    path.with_suffix(".md").write_text(table(doc))


if __name__ == "__main__":
    main()
