"""The MiniLM row of the glue comparison: heads + FFN neurons −50 % on the SST-2 subset.

Both sides start from prunetune's cached dense MiniLM of `benchmarks/sst2_minilm.py` (same 8,000
sentences, dev for selection, the labelled test set for the figure). The glue is what a user writes
from Torch-Pruning's README and `../shared/FACTS.md`: L2 one-shot over heads and FFN neurons
(embeddings, pooler and classifier ignored so the hidden size stays), then plain AdamW + OneCycleLR
for the same epochs, best dev epoch restored. prunetune runs its default structured recipe at the
same amount and epochs. Rows are added to benchmarks/results/peer_glue.json (and its .md).

    python benchmarks/peer_glue_minilm.py [--quick] [--no-latency]
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import time
from pathlib import Path

import torch
import torch_pruning as tp

sys.path.insert(0, str(Path(__file__).parent))
from fashion_mnist import merge  # noqa: E402
from machine import describe  # noqa: E402
from peer_glue import RESULTS, glue_finetune, load_shipped, table  # noqa: E402
from peer_glue import accuracy as glue_accuracy  # noqa: E402
from sst2_minilm import BASE as SST2  # noqa: E402

from prunetune.measure import macs, serialized_sizes  # noqa: E402
from prunetune.pipeline import run  # noqa: E402
from prunetune.recipe import Recipe  # noqa: E402
from prunetune.session import open_session  # noqa: E402
from prunetune.timing import compare_models  # noqa: E402

AMOUNT = 0.5
DEFAULT = {"prune": {"method": "structured", "sparsity": AMOUNT}}  # importance, scope: prunetune's defaults


def logits(model, inputs):
    return model(**inputs).logits


def accuracy(model, data, batch: int = 256) -> float:
    return glue_accuracy(model, data, batch, forward=logits)


def glue_prune(model, example: dict) -> None:
    """Torch-Pruning L2 over heads and FFN neurons, as FACTS.md records it working on MiniLM."""
    bert = model.bert
    heads = {}
    for layer in bert.encoder.layer:
        att = layer.attention.self
        for p in (att.query, att.key, att.value):
            heads[p] = att.num_attention_heads
    pruner = tp.pruner.MetaPruner(
        model, example, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=AMOUNT,
        # head_pruning_ratio: Torch-Pruning's default (0.0) removes no head at all, only FFN neurons.
        num_heads=heads, prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=AMOUNT,
        ignored_layers=[bert.embeddings, bert.pooler, model.classifier],
        output_transform=lambda out: out.sum(), forward_fn=logits)
    pruner.step()
    for layer in bert.encoder.layer:
        att = layer.attention.self
        att.num_attention_heads = att.query.out_features // att.attention_head_size
        att.all_head_size = att.query.out_features


def measured(row: dict, dense, model, bundle, latency: bool) -> dict:
    one, batch = bundle.test.take(slice(0, 1)), bundle.test.take(slice(0, 32))
    d, c = serialized_sizes(dense), serialized_sizes(model)
    row.update({"macs_ratio": round(macs(dense, one) / macs(model, one), 2),
                "params": sum(p.numel() for p in model.parameters()),
                "size_ratio": round(d["size_bytes"] / c["size_bytes"], 2), "gzip_ratio": round(d["size_bytes"] / c["gzip_bytes"], 2)})
    if latency:
        for key, x in (("speedup_b1", one), ("speedup_b32", batch)):
            row[key] = compare_models(dense, model, logits, x, threads=torch.get_num_threads(), rounds=7, min_run_time=3.0)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="400 sentences, 1 epoch: a smoke test")
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--runs", default="runs/peer_glue")
    ap.add_argument("--glue-only", action="store_true", help="re-run the glue row; keep the prunetune row already saved")
    args = ap.parse_args()
    base = merge(SST2, {"data": {"limit": 400}, "dense": {"epochs": 1}, "finetune": {"epochs": 1}}) if args.quick else SST2
    recipe = Recipe.model_validate(base)
    session = open_session(recipe, log=lambda m: None)
    bundle = session.load_data(recipe.data, recipe.model, score_on="test")
    dense, info = session.obtain_dense(recipe)
    dense.eval()
    dense_acc = accuracy(dense, bundle.test)
    ft = base["finetune"]
    runs = Path(args.runs)
    json_path = runs / "peer_glue_quick.json" if args.quick else RESULTS / "peer_glue.json"
    runs.mkdir(parents=True, exist_ok=True)
    doc = json.loads(json_path.read_text()) if json_path.exists() else {"machine": describe(), "rows": []}
    done = {r["name"]: r for r in doc["rows"]}

    t0 = time.perf_counter()
    torch.manual_seed(1)
    glue = copy.deepcopy(dense)
    glue_prune(glue, bundle.train.take(slice(0, 2)))
    before = accuracy(glue, bundle.test)
    info_g = glue_finetune(glue, bundle, ft["epochs"], ft["lr"], ft["weight_decay"], ft["batch_size"], seed=1,
                           forward=logits)
    rows = [("minilm-heads-ffn-50-glue", {"before_ft": round(before, 2), "after_ft": round(accuracy(glue, bundle.test), 2),
                                          **info_g}, glue, t0)]

    t0 = time.perf_counter()
    name = "minilm-heads-ffn-50-prunetune"
    if args.glue_only:
        return finish(rows, dense, dense_acc, info, bundle, args, done, doc, json_path)
    out = runs / name
    shutil.rmtree(out, ignore_errors=True)
    r = Recipe.model_validate(merge(merge(base, DEFAULT), {"name": name, "evaluate": {"latency": False, "memory": False}}))
    rep = run(r, out, log=lambda m: None, checkpoint=False)
    hist = rep["finetune"]["history"]
    rows.append((name, {"before_ft": rep["stages"]["pruned"]["accuracy"], "after_ft": rep["stages"]["finetuned"]["accuracy"],
                        "best_val": max(h["val_accuracy"] for h in hist), "val_history": [h["val_accuracy"] for h in hist],
                        "wall_s": rep["finetune"]["wall_s"], "recipe": DEFAULT,
                        "importance": r.prune.importance}, load_shipped(out / "model"), t0))
    finish(rows, dense, dense_acc, info, bundle, args, done, doc, json_path)


def finish(rows, dense, dense_acc, info, bundle, args, done, doc, json_path) -> None:
    for name, row, model, t0 in rows:
        row = measured({"name": name, "kind": "heads-ffn", "amount": AMOUNT, "dense": round(dense_acc, 2), **row},
                       dense, model, bundle, latency=not args.no_latency)
        row["drop"] = round(row["dense"] - row["after_ft"], 2)
        row["row_s"] = round(time.perf_counter() - t0, 1)
        done[name] = row
        print(f"{name}: val {row['best_val']} test {row['before_ft']} -> {row['after_ft']} (drop {row['drop']})", flush=True)
    doc["rows"] = list(done.values())
    doc["minilm_dense"] = {"test": round(dense_acc, 2), **{k: v for k, v in info.items() if k != "history"}}
    json_path.write_text(json.dumps(doc, indent=2))
    if "dense" in doc:  # the small CNN rows are there too: the table shows both
        json_path.with_suffix(".md").write_text(table(doc))


if __name__ == "__main__":
    main()
