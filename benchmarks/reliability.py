"""Reliability of checkpoint and resume: `kill -9` a `prunetune run` at random points, resume it with
`prunetune run --resume`, and check that it ends identically to an uninterrupted run with the same
seed; and what checkpointing costs (seconds spent writing checkpoints / seconds of fine-tuning epochs).

The job is the default recipe (small CNN on Fashion-MNIST, half the channels removed structurally,
3 epochs of fine-tuning) shrunk to about 15 minutes on 2 CPU cores: data.limit=3000,
data.test_limit=2000, dense.epochs=1, finetune.epochs=3, and latency / memory measurement off (they
are timings, never compared). One uninterrupted reference run, then N runs each killed (SIGKILL)
at a seeded random moment between its first checkpoint (the end of fine-tuning epoch 1) and the
moment the reference's run folder appeared, i.e. anywhere in epochs 2-3, in a checkpoint write, in
the final measurement or the report writing (a kill before the first checkpoint leaves nothing to
resume: such a run is started again). Each killed run is resumed and compared with
`prunetune.compare.compare_runs`: report.json without timings, masks exactly, weights within 1e-6.

Writes benchmarks/results/reliability.json and reliability.md (`--quick`: reliability_quick.*,
N=2 on an 800-image slice, a smoke test of the script). Run folders: benchmarks/runs/reliability*/.

    python benchmarks/reliability.py [--quick] [--n 10] [--seed 0] [--set section.key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe  # noqa: E402

from prunetune.checkpoint import checkpoint_dir  # noqa: E402
from prunetune.compare import compare_runs  # noqa: E402

HERE = Path(__file__).parent
RESULTS = HERE / "results"
PT = [sys.executable, "-m", "prunetune.cli"]

FULL = ["data.limit=3000", "data.test_limit=2000", "dense.epochs=1", "finetune.epochs=3",
        "evaluate.latency=false", "evaluate.memory=false"]
QUICK = ["data.limit=800", "data.test_limit=300", "dense.epochs=1", "finetune.epochs=3",
         "evaluate.latency=false", "evaluate.memory=false"]


def start(overrides: list[str], out: Path, env: dict, log: Path) -> subprocess.Popen:
    args = [a for o in overrides for a in ("--set", o)]
    with open(log, "w") as err:
        return subprocess.Popen(PT + ["run", *args, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=err, env=env)


def wait_for_checkpoint(proc: subprocess.Popen, out: Path, timeout: float = 900) -> float | None:
    """Seconds until the run's first checkpoint appears (None: the process ended first)."""
    record = checkpoint_dir(out) / "checkpoint.json"
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if record.exists():
            return time.monotonic()
        if proc.poll() is not None:
            return None
        time.sleep(0.01)
    raise TimeoutError(f"{out}: no checkpoint after {timeout} s")


def position(where: dict | None) -> str:
    if not where:
        return "completed before the kill"
    if where["batches"] == 0:
        return f"step {where['global_step']} (end of epoch {where['epoch'] - 1})"
    return f"step {where['global_step']} (epoch {where['epoch']}, batch {where['batches']})"


def checkpoint_cost(report: dict) -> dict:
    """Checkpointing as a fraction of fine-tuning epoch time (epoch_s excludes the checkpoint):
    `fraction_of_epoch_time` = the time training waits (the snapshot copy), `write_fraction_of_epoch_time`
    = the background write (serialise, sha256, write, fsync, rename), which overlaps the next epoch."""
    ck = report["checkpoint"]
    epochs = [row["epoch_s"] for row in report["finetune"]["history"]]
    epoch_s = sum(epochs)
    return {"writes": ck["writes"], "blocking_s": ck["blocking_s"], "mean_blocking_s": ck["mean_blocking_s"],
            "write_s": ck["write_s"], "mean_write_s": ck["mean_write_s"],
            "state_mb": round(ck["state_bytes"] / 1e6, 2), "epochs": len(epochs), "epoch_s": round(epoch_s, 2),
            "fraction_of_epoch_time": round(ck["blocking_s"] / epoch_s, 5) if epoch_s else None,
            "write_fraction_of_epoch_time": round(ck["write_s"] / epoch_s, 5) if epoch_s else None,
            "dense_copy_s": ck["dense_copy_s"],
            "dense_copy_fraction_of_one_epoch": round(ck["dense_copy_s"] / (epoch_s / len(epochs)), 5) if epochs else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: N=2 on an 800-image slice")
    ap.add_argument("--n", type=int, default=None, help="killed runs (default 10; 2 with --quick)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the kill points")
    ap.add_argument("--set", dest="extra", action="append", default=[], help="extra recipe override (repeatable)")
    args = ap.parse_args()
    n = args.n if args.n is not None else (2 if args.quick else 10)
    overrides = (QUICK if args.quick else FULL) + args.extra
    stem = "reliability_quick" if args.quick else "reliability"
    runs = HERE / "runs" / stem
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir(parents=True)
    env = {**os.environ, "PRUNETUNE_CACHE": str(runs / "cache"), "KINETO_LOG_LEVEL": "5"}
    t_all = time.monotonic()

    # The reference: uninterrupted (it also trains and caches the dense model the others load).
    ref = runs / "reference"
    print(f"reference run: {' '.join(overrides)}", flush=True)
    t0 = time.monotonic()
    proc = start(overrides, ref, env, runs / "reference.stderr")
    first = wait_for_checkpoint(proc, ref)
    renamed = None
    while proc.poll() is None or renamed is None:
        if renamed is None and ref.exists():
            renamed = time.monotonic()  # the run folder appears: the run is complete
        elif proc.poll() is not None:
            break
        time.sleep(0.01)
    if proc.wait() != 0 or renamed is None:
        sys.exit(f"the reference run failed; see {runs / 'reference.stderr'}")
    t_end = time.monotonic()
    if first is None:
        sys.exit("the reference run wrote no checkpoint; is finetune.epochs >= 2?")
    window = renamed - first  # from the first checkpoint until the completed run folder appeared
    reference = json.loads((ref / "report.json").read_text())
    print(f"reference: {t_end - t0:.1f} s, kill window {window:.1f} s after the first checkpoint", flush=True)

    rng = random.Random(args.seed)
    trials = []
    for i in range(n):
        out = runs / f"killed-{i:02d}"
        delay = rng.random() * window
        proc = start(overrides, out, env, runs / f"killed-{i:02d}.stderr")
        first = wait_for_checkpoint(proc, out)
        row: dict = {"trial": i, "kill_after_first_checkpoint_s": round(delay, 2)}
        if first is not None:
            time.sleep(max(0.0, first + delay - time.monotonic()))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            row["killed"] = True
        else:
            row["killed"] = False  # finished before the kill point
        record = checkpoint_dir(out) / "checkpoint.json"
        if record.exists() and not out.exists():
            ck = json.loads(record.read_text())
            row["resumed_from"] = {"global_step": ck["global_step"], "epoch": ck["fit"]["epoch"],
                                   "batches": ck["fit"]["batches"]}
            t1 = time.monotonic()
            with open(runs / f"resume-{i:02d}.stderr", "w") as err:
                rc = subprocess.run(PT + ["run", "--resume", str(out)], stdout=subprocess.DEVNULL, stderr=err,
                                    env=env).returncode
            row["resume_s"] = round(time.monotonic() - t1, 1)
            row["resume_exit_code"] = rc
        else:
            row["resumed_from"] = None  # the run had completed (folder renamed) before the kill
        if out.exists() and (out / "report.json").exists():
            diffs = compare_runs(ref, out, atol=1e-6)
            row["identical"] = not diffs
            row["differences"] = diffs[:10]
            rep = json.loads((out / "report.json").read_text())
            row["checkpoint_cost"] = checkpoint_cost(rep)
        else:
            row["identical"] = False
            row["differences"] = ["no completed run folder after resume"]
        row["leftover_checkpoint"] = checkpoint_dir(out).exists()
        trials.append(row)
        print(f"trial {i}: kill at +{delay:.1f} s -> resumed from {position(row['resumed_from'])}"
              f": {'identical' if row['identical'] else 'DIFFERENT ' + '; '.join(row['differences'][:3])}", flush=True)

    resumed = [t for t in trials if t["resumed_from"]]
    fractions = [t["checkpoint_cost"]["fraction_of_epoch_time"] for t in trials if t.get("checkpoint_cost")]
    doc = {
        "benchmark": "reliability: kill -9 and resume",
        "machine": describe(),
        "settings": {"recipe": "default (built-in)", "overrides": overrides, "n": n, "seed": args.seed,
                     "kill_window_s": round(window, 2), "signal": "SIGKILL",
                     "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "reference": {"wall_s": round(t_end - t0, 1), "finetuned_accuracy": reference["stages"]["finetuned"]["accuracy"],
                      "checkpoint_cost": checkpoint_cost(reference)},
        "trials": trials,
        "summary": {
            "identical": sum(t["identical"] for t in trials), "n": n, "resumed": len(resumed),
            "completed_before_kill": n - len(resumed),
            "resumed_identical": sum(t["identical"] for t in resumed),
            "checkpoint_fraction_of_epoch_time": {
                "reference": checkpoint_cost(reference)["fraction_of_epoch_time"],
                "median_all_runs": round(statistics.median(fractions), 5) if fractions else None,
                "max_all_runs": max(fractions) if fractions else None, "target": 0.02},
            "leftover_checkpoints": sum(t["leftover_checkpoint"] for t in trials),
        },
        "wall_s": round(time.monotonic() - t_all, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(doc))
    s = doc["summary"]
    print(f"{s['identical']}/{n} identical ({s['resumed']} resumed, {s['completed_before_kill']} completed before the kill); "
          f"training waited {100 * s['checkpoint_fraction_of_epoch_time']['reference']:.2f}% of epoch time for checkpoints "
          f"({100 * doc['reference']['checkpoint_cost']['write_fraction_of_epoch_time']:.2f}% written in the background); "
          f"wrote {RESULTS / stem}.json/.md in {doc['wall_s']:.0f} s")


def markdown(doc: dict) -> str:
    s, m, ref = doc["summary"], doc["machine"], doc["reference"]
    cost = ref["checkpoint_cost"]
    frac = s["checkpoint_fraction_of_epoch_time"]
    lines = [
        "# Reliability: kill -9 and resume",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
        f"Python {m['python']}, {m['platform']}" + (f", GPU {m['gpu']}" if m.get("gpu") else "") + ".",
        "",
        f"Job: the default recipe with `{' '.join(doc['settings']['overrides'])}`. One uninterrupted reference "
        f"run ({ref['wall_s']} s, fine-tuned test accuracy {ref['finetuned_accuracy']:.2f} %), then "
        f"{s['n']} runs killed with SIGKILL at seeded random moments (seed {doc['settings']['seed']}) within "
        f"{doc['settings']['kill_window_s']} s after the first checkpoint, each resumed with "
        "`prunetune run --resume OUT` and compared with the reference (report.json without timings, masks "
        "exactly, weights within 1e-6).",
        "",
        f"**{s['identical']}/{s['n']} identical to the uninterrupted run** ({s['resumed']} resumed, "
        f"{s['completed_before_kill']} had completed before the kill point); "
        f"{s['leftover_checkpoints']} checkpoint folders left behind.",
        "",
        f"**Checkpoint cost: training waits {100 * frac['reference']:.2f} % of fine-tuning epoch time** in the "
        f"reference run ({cost['writes']} checkpoints, {cost['mean_blocking_s']} s each to snapshot the state; "
        f"{cost['epoch_s']} s of epochs); median over all runs {100 * (frac['median_all_runs'] or 0):.2f} %, "
        f"max {100 * (frac['max_all_runs'] or 0):.2f} % (target < 2 %). Writing ({cost['state_mb']} MB state "
        f"file + JSON, sha256, fsync, rename) runs in a background thread during the next epoch: "
        f"{cost['mean_write_s']} s each, {100 * (cost['write_fraction_of_epoch_time'] or 0):.2f} % of epoch time "
        f"if it were not overlapped. The dense model is copied into the "
        f"checkpoint folder once per run ({cost['dense_copy_s']} s, {100 * (cost['dense_copy_fraction_of_one_epoch'] or 0):.2f} % "
        "of one epoch).",
        "",
        "| trial | kill after 1st checkpoint | resumed from the checkpoint at | resume s | identical |",
        "|---|---|---|---|---|",
    ]
    for t in doc["trials"]:
        where = position(t["resumed_from"])
        ok = "yes" if t["identical"] else "**no**: " + "; ".join(t["differences"][:2])
        lines.append(f"| {t['trial']} | {t['kill_after_first_checkpoint_s']} s | {where} | {t.get('resume_s', '')} | {ok} |")
    lines += ["", f"Total wall time {doc['wall_s']} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
