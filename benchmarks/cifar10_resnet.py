"""CIFAR-10 / ResNet-20: width, depth and both, against the glue, on the same cached dense model.

The dense ResNet-20 (He et al. 2016, CIFAR variant) is trained once on the real CIFAR-10 (JPEG
folders of ../shared/data/cifar10, crop-with-padding-4 + flip) and cached by prunetune. Rows:
channels −50 % and −60 % (Torch-Pruning through the residual couplings), depth (whole blocks
removed, cosine ranking) beside channels pruned to the same MACs, width + depth in one recipe, 90 %
unstructured (LAMP global), and the glue: Torch-Pruning L2 one-shot + AdamW/OneCycle for the same
epochs. Each row: test accuracy, MACs ratio, saved size, fine-tuning seconds, and speedups at batch 1
and 128 timed alternately against the dense model (ratio of medians with a 95 % interval).

Writes benchmarks/results/cifar10_resnet.json and .md (a --quick smoke test writes under runs/).

    python benchmarks/cifar10_resnet.py [--model resnet20|resnet56] [--quick] [--dense-epochs N] [--epochs N]
        [--only NAME ...] [--no-latency | --latency-only] [--results STEM] [--finetune JSON] [--tag=-SUFFIX]
    python benchmarks/cifar10_resnet.py --results cifar10_resnet_cpu --scratch 40 80 [--record RUN_DIR ...]

Rows on another dense model go in their own table (`--results cifar10_resnet_cpu`: the dense model
trained on the 2-core CPU); `--finetune` changes prunetune's fine-tuning (an ablation row, named with
`--tag`), and the glue keeps its own AdamW + OneCycle. `--scratch` adds the reference rows of Liu et al.
2019: the same channels −50 % architecture trained from random weights with the dense recipe.

Training may run on a GPU (prunetune picks CUDA when there is one; bf16 autocast) with `--no-latency`;
every model is saved under benchmarks/runs/, and `--latency-only` later times those same models on
the CPU they are meant for, filling in the speedup columns of the same JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import time
from pathlib import Path
from typing import NoReturn

import torch
import torch_pruning as tp

sys.path.insert(0, str(Path(__file__).parent))
from fashion_mnist import merge  # noqa: E402
from machine import describe  # noqa: E402
from peer_glue import accuracy, fmt_speed, glue_finetune, load_shipped  # noqa: E402

from prunetune.artifacts import save_model  # noqa: E402
from prunetune.data.augment import augment  # noqa: E402
from prunetune.dense import model_info  # noqa: E402
from prunetune.measure import macs, serialized_sizes  # noqa: E402
from prunetune.pipeline import run  # noqa: E402
from prunetune.recipe import AugmentSpec, Recipe  # noqa: E402
from prunetune.session import open_session  # noqa: E402
from prunetune.timing import compare_models  # noqa: E402

HERE = Path(__file__).parent
RESULTS = HERE / "results"
AUG = {"crop_padding": 4, "hflip": True}
MIN_RUN = 2.0  # seconds of each timing block (--quick: 0.2)
BASE = {
    "name": "cifar10-resnet20", "seed": 0, "model": {"name": "resnet20"},
    "data": {"source": "cifar10"},
    # SGD with momentum, cosine, as He et al. (shortened for 2 CPU cores: --dense-epochs).
    "dense": {"epochs": 30, "batch_size": 128, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
              "lr_schedule": "cosine", "warmup_epochs": 1, "augment": AUG},
    # prunetune's default rate and schedule. Batch 128, not the fine-tuning default of 32: channels -50 %, 15
    # epochs, gave 83.66 val at 32 against 83.78 at 128 (the rows below were run at 128).
    "finetune": {"epochs": 5, "batch_size": 128, "augment": AUG},
    "evaluate": {"latency_batch": 128, "min_run_time": 1.0, "latency": False, "memory": False},
}
ROWS = {  # in order of importance, so a run cut short by its time limit still has the peer row
    "channels-50": {"prune": {"method": "structured", "sparsity": 0.5}},
    "channels-50-glue": "glue",
    "depth-4-blocks": {"prune": {"method": "depth", "sparsity": 0.5}},  # 4 of the 7 removable blocks
    "channels-same-macs-as-depth": None,  # sparsity found below so MACs equal the depth row's
    "width-depth": {"prune": {"method": "structured", "sparsity": 0.3, "depth": {"amount": 0.25}}},
    "channels-60": {"prune": {"method": "structured", "sparsity": 0.6}},
    "unstructured-90": {"prune": {"method": "unstructured", "sparsity": 0.9}},
}


def epoch_lines(message: str) -> None:
    """Progress of a long row: the fine-tuning epochs, nothing else."""
    if " epoch " in message:
        print(message, flush=True)


def glue_prune(model, amount: float, example) -> torch.nn.Module:
    tp.pruner.MetaPruner(model, example, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=amount,
                         ignored_layers=[model.classifier]).step()
    return model


def matching_sparsity(dense, target_macs: float, example) -> float:
    """The channel amount whose one-shot L2 plan has `target_macs` (bisection on pruned copies)."""
    lo, hi = 0.0, 0.9
    for _ in range(14):
        mid = (lo + hi) / 2
        if macs(glue_prune(copy.deepcopy(dense), mid, example), example) > target_macs:
            lo = mid
        else:
            hi = mid
    return round((lo + hi) / 2, 4)


def measure(row: dict, dense, model, bundle, latency: bool) -> dict:
    one = bundle.test.x[:1]
    d, c = serialized_sizes(dense), serialized_sizes(model)
    row.update({"macs_ratio": round(macs(dense, one) / macs(model, one), 2),
                "params": sum(p.numel() for p in model.parameters()),
                "size_ratio": round(d["size_bytes"] / c.get("sparse_bytes", c["size_bytes"]), 2)})
    if latency:
        for key, n in (("speedup_b1", 1), ("speedup_b128", 128)):
            row[key] = compare_models(dense, model, lambda m, x: m(x), bundle.test.x[:n], threads=torch.get_num_threads(),
                                      rounds=7, min_run_time=MIN_RUN, masked=row["name"].startswith("unstructured"))
    return row


def table(doc: dict) -> str:
    t = doc.get("timing_machine")
    name = {"resnet20": "ResNet-20", "resnet56": "ResNet-56"}[doc.get("model", "resnet20")]
    where = "; ".join(f"{short(k)}: {m['gpu'] + ' (bf16 autocast)' if k != 'cpu' else m['cpu'] + ', ' + str(m['cores']) + ' cores'}"
                      f", torch {m['torch']}" for k, m in training_machines(doc).items())
    timed = (f"timed on {t['cpu']}, {t['torch_threads']} threads, torch {t['torch']}" if t else
             "timed on the training machine" if any("speedup_b1" in r for r in doc["rows"]) else "not timed yet")
    unrecorded = "; — where it was not recorded" if any("best_val" not in r for r in doc["rows"]) else ""
    lines = [f"# CIFAR-10 / {name}: width, depth and both, against the glue", "",
             f"Trained on {where}. Speedups {timed}. Dense {name}: {doc['dense_epochs']} epochs "
             f"(SGD 0.1, cosine, crop + flip), **{doc['dense_test']:.2f} % test**. best val: the validation accuracy that chose the kept epoch "
             f"(5,000 held-out training images{unrecorded}). FT ep: fine-tuning epochs of the row, "
             "best validation epoch kept. Speedups: dense and pruned timed alternately, ratio of medians with a 95 % "
             "interval; \"no measurable change\" when it contains 1.0. FT s: fine-tuning seconds where it was trained.", "",
             "| row | best val | test (drop) | MACs ÷ | params | file ÷ | trained on | FT ep | FT s | speedup b1 | speedup b128 |",
             "|---|---:|---|---:|---:|---:|---|---:|---:|---|---|"]
    for r in doc["rows"]:
        val = f"{r['best_val']:.2f}" if "best_val" in r else "—"
        lines.append(f"| {r['name']} | {val} | {r['after_ft']:.2f} ({-r['drop']:+.2f}) | {r['macs_ratio']:.2f} | {r['params']:,} | "
                     f"{r['size_ratio']:.1f} | {short(r.get('trained_on', 'cpu'))} | {r.get('epochs', doc['epochs'])} | "
                     f"{r['wall_s']:.0f} | {fmt_speed(r.get('speedup_b1'))} | {fmt_speed(r.get('speedup_b128'))} |")
    if doc.get("notes"):  # what the numbers alone do not say (load while training, schedules), kept in the JSON
        lines += ["", "## Notes", ""] + [f"- {n}" for n in doc["notes"]]
    return "\n".join(lines) + "\n"


def short(trained_on: str) -> str:
    return "CPU" if trained_on == "cpu" else trained_on.split()[-1]


def training_machines(doc: dict) -> dict:
    """Each machine the rows were trained on (older documents kept one `machine` for a GPU run)."""
    found = dict(doc.get("training_machines", {}))
    if not found and "machine" in doc:
        found[doc["rows"][0].get("trained_on", "cpu") if doc["rows"] else "cpu"] = doc["machine"]
    return found


def document(doc: dict, path: Path) -> None:
    path.write_text(json.dumps(doc, indent=2))
    path.with_suffix(".md").write_text(table(doc))


def latency_only(path: Path, runs: Path, bundle, only: list[str] | None = None) -> None:
    """Time the saved dense model and every saved row (or those named in `only`) on this machine;
    keep the accuracy columns."""
    doc = json.loads(path.read_text())
    dense = load_shipped(runs / "dense" / "model")
    for row in doc["rows"]:
        if only and row["name"] not in only:
            continue
        model = load_shipped(runs / row["name"] / "model")
        measure(row, dense, model, bundle, latency=True)
        print(f"{row['name']}: b1 {fmt_speed(row['speedup_b1'])}, b128 {fmt_speed(row['speedup_b128'])}", flush=True)
        doc["timing_machine"] = describe()
        document(doc, path)


SCRATCH = "channels-50-scratch"  # the channels -50 % architecture trained from random weights (--scratch)
SAME = ("seed", "model", "data", "prune", "finetune")  # the sections a recorded scratch run must match


def refuse(message: str) -> NoReturn:
    """Bad input: one line on stderr, exit code 2."""
    print(message, file=sys.stderr)
    raise SystemExit(2)


def scratch_recipe(base: dict, epochs: int) -> dict:
    """The channels -50 % architecture trained from random weights with the dense model's own recipe for
    `epochs` epochs: nothing trained or cached as the dense model (dense.epochs 0), the same shapes (half of
    every layer's channels) cut from the random weights, then the dense recipe as fine-tuning. It is the reference of Liu et al.
    2019 ("Rethinking the value of network pruning"): what the pruned architecture reaches in a budget
    without any weights from the dense model, against what fine-tuning the pruned model reaches."""
    return merge(base, {"name": f"cifar10-{base['model']['name']}-half-scratch", "dense": {"epochs": 0, "cache": False},
                        "prune": {"method": "structured", "sparsity": 0.5},
                        "finetune": {**{k: v for k, v in base["dense"].items() if k not in ("source", "path", "cache")},
                                     "epochs": epochs}})


def scratch_rows(base: dict, epochs: list[int], record: list[str], path: Path, runs: Path) -> None:
    """Rows of the channels -50 % architecture trained from scratch (`scratch_recipe`), in the table of the
    dense model trained on this host (its test accuracy is the JSON's `dense_test`: the drop is against it).
    `record` takes finished `prunetune run` folders of the same recipe instead of running it (checked section
    by section); MACs and file ratios are against the untrained full-width network (same shapes)."""
    doc = json.loads(path.read_text())
    done = {r["name"]: r for r in doc["rows"]}
    for d in record:
        if not (Path(d) / "report.json").is_file():
            refuse(f"{d}: no report.json; give the folder of a finished `prunetune run` (its --out)")
    jobs = [(int(Recipe.model_validate(json.loads((Path(d) / "report.json").read_text())["recipe"]).finetune.epochs), Path(d))
            for d in record] + [(e, None) for e in epochs]
    for n, folder in jobs:
        t0, name = time.perf_counter(), f"{SCRATCH}-ep{n}"
        recipe = Recipe.model_validate(scratch_recipe(base, n))
        if folder is None:
            folder = runs / name
            shutil.rmtree(folder, ignore_errors=True)
            rep = run(recipe, folder, log=epoch_lines, checkpoint=False)
        else:
            rep = json.loads((folder / "report.json").read_text())
            ran, want = Recipe.model_validate(rep["recipe"]).model_dump(mode="json"), recipe.model_dump(mode="json")
            differ = [k for k in SAME if ran[k] != want[k]] + (["dense.epochs"] if ran["dense"]["epochs"] != 0 else [])
            if differ:
                refuse(f"{folder}: not the scratch recipe ({', '.join(differ)} differ); run it with --scratch instead")
        session = open_session(recipe, log=lambda m: None)
        bundle = session.load_data(recipe.data, recipe.model)
        untrained, _ = session.obtain_dense(recipe)
        row = {"name": name, "dense": doc["dense_test"], "after_ft": rep["stages"]["finetuned"]["accuracy"],
               "before_ft": rep["stages"]["pruned"]["accuracy"], "wall_s": rep["finetune"]["wall_s"],
               "best_val": round(max(h["val_accuracy"] for h in rep["finetune"]["history"]), 2),
               "recipe": {"scratch": True, "prune": {"method": "structured", "sparsity": 0.5}, "finetune": "the dense recipe"}}
        row = measure(row, untrained.cpu().eval(), load_shipped(folder / "model"), bundle, latency=False)
        where = "cpu" if folder.parent != runs or not torch.cuda.is_available() else torch.cuda.get_device_name(0)
        row.update(drop=round(row["dense"] - row["after_ft"], 2), trained_on=where, epochs=n,
                   row_s=round(time.perf_counter() - t0, 1))
        done[name] = row
        print(f"{name}: {row['after_ft']} (drop {row['drop']}), MACs ÷{row['macs_ratio']}", flush=True)
        document({**doc, "rows": list(done.values())}, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20", choices=["resnet20", "resnet56"])
    ap.add_argument("--quick", action="store_true", help="2,000 training images, 1 + 1 epochs: a smoke test")
    ap.add_argument("--dense-epochs", type=int)
    ap.add_argument("--epochs", type=int, help="fine-tuning epochs of every row")
    ap.add_argument("--only", nargs="*", help="row names (prefix match)")
    ap.add_argument("--exact", action="store_true", help="--only names whole rows (channels-50 without its glue row)")
    ap.add_argument("--tag", default="", help="suffix of the row names (e.g. -ft60 for a longer fine-tuning budget)")
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--latency-only", action="store_true", help="time the models a previous run saved")
    ap.add_argument("--results", help="stem of the results JSON and runs folder (default cifar10_resnet): rows on "
                    "another dense model go in their own table")
    ap.add_argument("--finetune", type=json.loads, default={},
                    help="JSON merged into prunetune's finetune section (e.g. '{\"optimizer\": \"sgd\", \"lr\": 0.05}'); "
                         "the glue keeps AdamW + OneCycle at prunetune's default rate")
    ap.add_argument("--reuse-dense", action="store_true",
                    help="start from the dense model a previous run saved under benchmarks/runs (no training)")
    ap.add_argument("--scratch", type=int, nargs="*", metavar="EPOCHS",
                    help="rows of the channels -50 %% architecture trained from random weights with the dense recipe "
                         "for each number of epochs, in the --results table (no dense model needed)")
    ap.add_argument("--record", nargs="*", default=[], metavar="RUN_DIR",
                    help="with --scratch: finished `prunetune run` folders of the same recipe, recorded instead of run")
    args = ap.parse_args()
    global MIN_RUN
    MIN_RUN = 0.2 if args.quick else MIN_RUN
    base = merge(BASE, {"name": f"cifar10-{args.model}", "model": {"name": args.model}})
    if args.quick:
        base = merge(base, {"data": {"limit": 2000, "val_size": 500}, "dense": {"epochs": 1}, "finetune": {"epochs": 1}})
    if args.dense_epochs:
        base = merge(base, {"dense": {"epochs": args.dense_epochs}})
    if args.epochs:
        base = merge(base, {"finetune": {"epochs": args.epochs}})
    glue_ft = Recipe.model_validate(base).finetune  # the glue's rate, decay and batch: before --finetune
    if args.finetune:
        base = merge(base, {"finetune": args.finetune})
    stem = args.results or ("cifar10_resnet" if args.model == "resnet20" else f"cifar10_{args.model}")
    runs = HERE / "runs" / (stem + "_quick" if args.quick else stem)
    if args.reuse_dense:
        base = merge(base, {"dense": {"source": "file", "path": str(runs / "dense" / "model" / "model.safetensors")}})
    path = (runs if args.quick else RESULTS) / f"{stem}.json"
    if args.scratch is not None:
        if not path.exists():
            refuse(f"{path}: no table yet; run its dense model's rows first (the drop is measured against it)")
        return scratch_rows(base, args.scratch, args.record, path, runs)
    recipe = Recipe.model_validate(base)
    session = open_session(recipe, log=lambda m: print(m, flush=True))
    bundle = session.load_data(recipe.data, recipe.model, announce=True)
    if args.latency_only:
        return latency_only(path, runs, bundle, args.only)
    dense, _ = session.obtain_dense(recipe)
    dense = dense.cpu().eval()
    dense_acc = accuracy(dense, bundle.test)
    runs.mkdir(parents=True, exist_ok=True)
    if not args.reuse_dense:
        shutil.rmtree(runs / "dense", ignore_errors=True)
        save_model(dense, runs / "dense" / "model", model_info(recipe, bundle))
    old = json.loads(path.read_text()) if path.exists() else {"rows": []}
    done = {r["name"]: {"epochs": old.get("epochs"), **r} for r in old["rows"]}
    machines = training_machines(old)
    example = bundle.test.x[:1]
    for name, extra in ROWS.items():
        if args.only and not any(name == o if args.exact else name.startswith(o) for o in args.only):
            continue
        t0 = time.perf_counter()
        name += args.tag
        out = runs / name
        shutil.rmtree(out, ignore_errors=True)
        if extra == "glue":
            torch.manual_seed(1)
            model = glue_prune(copy.deepcopy(dense), 0.5, example).to(session.device)
            ft, gen = glue_ft, torch.Generator().manual_seed(1)
            # The glue augments as prunetune does (torchvision's RandomCrop(32, 4) + RandomHorizontalFlip).
            row = glue_finetune(model, bundle, recipe.finetune.epochs, ft.lr, ft.weight_decay, ft.batch_size, seed=1,
                                transform=lambda x: augment(x, AugmentSpec(**AUG), gen))
            model = model.cpu().eval()
            row["after_ft"] = round(accuracy(model, bundle.test), 2)
            save_model(model, out / "model", model_info(recipe, bundle))
        else:
            if extra is None:  # as many MACs as the depth row
                depth = done.get("depth-4-blocks")
                if depth is None:
                    continue
                s = matching_sparsity(dense, macs(dense, example) / depth["macs_ratio"], example)
                extra = {"prune": {"method": "structured", "sparsity": s}}
            rep = run(Recipe.model_validate(merge(merge(base, extra), {"name": name})), out, log=epoch_lines,
                      checkpoint=False)
            model = load_shipped(out / "model")
            row = {"after_ft": rep["stages"]["finetuned"]["accuracy"], "before_ft": rep["stages"]["pruned"]["accuracy"],
                   "wall_s": rep["finetune"]["wall_s"], "recipe": merge(extra, {"finetune": args.finetune}) if args.finetune else extra,
                   "best_val": round(max(h["val_accuracy"] for h in rep["finetune"]["history"]), 2)}
        row = measure({"name": name, "dense": round(dense_acc, 2), **row}, dense, model, bundle, not args.no_latency)
        row["drop"] = round(row["dense"] - row["after_ft"], 2)
        row["trained_on"] = torch.cuda.get_device_name(0) if session.device.type == "cuda" else "cpu"
        row["epochs"] = recipe.finetune.epochs
        machines[row["trained_on"]] = describe()
        row["row_s"] = round(time.perf_counter() - t0, 1)
        done[name] = row
        print(f"{name}: {row['after_ft']} (drop {row['drop']}), MACs ÷{row['macs_ratio']}", flush=True)
        doc = {**{k: v for k, v in old.items() if k not in ("machine", "trained_on")},
               "training_machines": machines, "model": args.model,
               "dense_test": round(dense_acc, 2), "dense_epochs": old.get("dense_epochs", recipe.dense.epochs) if args.reuse_dense else recipe.dense.epochs,
               "epochs": recipe.finetune.epochs, "base_recipe": base, "rows": list(done.values())}
        document(doc, path)


if __name__ == "__main__":
    main()
