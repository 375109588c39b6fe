"""The `prunetune` command line: each command only parses, builds the recipe and calls the library."""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from . import registry as R
from .check import check_recipe, check_text
from .checkpointer import refuse_stale
from .errors import PrunetuneError, one_line
from .evaluation import evaluate_model
from .models.factory import PREFIXES as MODEL_PREFIXES
from .pipeline import resume_run
from .pipeline import run as run_recipe
from .predict import predict as run_predict
from .predict import write_predictions
from .recipe import Recipe, load_recipe
from .refine import refine, resume_refine
from .reporting.format import compute_line, speedup_notes, speedups, stage_speedup_text
from .search.study import sweep as run_sweep
from .sensitivity import DEFAULT_AMOUNTS, parse_amounts, table
from .sensitivity import sensitivity as run_sensitivity
from .tasks import Task

TRACK_HELP = "log params, per-epoch metrics and the report to an experiment tracker: tensorboard or mlflow"
TRACK_URI_HELP = "MLflow tracking URI (default $MLFLOW_TRACKING_URI, else a file store in mlruns/ beside the run folder)"

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Prune a trained model, fine-tune it back, measure what was gained.")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


_MACHINE_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _guard(fn):
    """Turn our errors into one line on stderr and an exit code (2 bad input, 3 runtime fault)."""
    try:
        return fn()
    except PrunetuneError as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt as e:
        if getattr(e, "out", None) is not None:  # errors.Interrupted: a checkpoint was written
            print(f"interrupted: resume with prunetune {getattr(e, 'command', 'run')} --resume {e.out}", file=sys.stderr)
        else:
            print("interrupted: nothing was left half-written", file=sys.stderr)
        raise typer.Exit(130) from None
    except OSError as e:
        # A full disk, a quota or a file size limit is a runtime fault of the machine (3); any other
        # OSError (no permission, not a folder, read-only file system) is a path the user gave (2).
        where = f"{one_line(str(e.filename))}: " if getattr(e, "filename", None) else ""
        what = one_line(e.strerror or str(e) or e.__class__.__name__)
        if e.errno in _MACHINE_FULL:
            print(f"error: {where}{what}; free space (or raise the limit) and run again", file=sys.stderr)
            raise typer.Exit(3) from None
        print(f"error: {where}{what}; check the path, free space and permissions", file=sys.stderr)
        raise typer.Exit(2) from None


@app.command()
def run(
    recipe: Optional[Path] = typer.Argument(None, help="YAML recipe; the built-in default when omitted"),
    set_: List[str] = typer.Option([], "--set", help="override a field: section.key=value (repeatable)"),
    out: Optional[Path] = typer.Option(None, "--out", help="run folder (default runs/NAME-TIMESTAMP); must not exist"),
    track: Optional[str] = typer.Option(None, "--track", help=TRACK_HELP),
    track_uri: Optional[str] = typer.Option(None, "--track-uri", help=TRACK_URI_HELP),
    resume: Optional[Path] = typer.Option(None, "--resume", metavar="OUT_DIR",
                                          help="continue the interrupted run whose --out was OUT_DIR from its last "
                                          "checkpoint (OUT_DIR.checkpoint/); the recipe comes from the checkpoint"),
) -> None:
    """Prune, fine-tune and measure as the recipe says; write a run folder."""

    def go():
        if resume is not None:
            if recipe is not None or set_ or (out is not None and out != resume):
                raise PrunetuneError("--resume: the recipe and the output folder come from the checkpoint; "
                                     "drop RECIPE, --set and --out")
            report = resume_run(resume, log=_log, track=track, track_uri=track_uri)
            r = Recipe.model_validate(report["recipe"])
        else:
            r = load_recipe(recipe, set_)
            if out is not None:
                refuse_stale(out)
            report = run_recipe(r, out, log=_log, track=track, track_uri=track_uri)
        s = report["stages"]
        sp = (report.get("speedup") or speedups(s))["finetuned"]
        lat = speed_summary(sp, r.evaluate.latency_batch)
        task = Task.of_report(report)
        m = task.metric
        print(f"{task.headline}dense {task.show(s['dense'][m])} -> pruned {task.show(s['pruned'][m])} -> fine-tuned "
              f"{task.show(s['finetuned'][m])}; MACs ÷{sp['macs_ratio']:.2f}{lat}")
        _print_loading(report)

    _guard(go)


@app.command("check")
def check(
    recipe: Optional[Path] = typer.Argument(None, help="YAML recipe; the built-in default when omitted"),
    set_: List[str] = typer.Option([], "--set", help="override a field: section.key=value (repeatable)"),
) -> None:
    """Validate the recipe, data, model and pruning plan and print them; train, time and write nothing."""

    def go():
        print(check_text(check_recipe(load_recipe(recipe, set_), log=_log)))

    _guard(go)


@app.command("sensitivity")
def sensitivity_(
    recipe: Optional[Path] = typer.Argument(None, help="YAML recipe; the built-in default when omitted"),
    set_: List[str] = typer.Option([], "--set", help="override a field: section.key=value (repeatable)"),
    out: Optional[Path] = typer.Option(None, "--out", help="output folder (default runs/NAME-sensitivity-TIMESTAMP); must not exist"),
    amounts: str = typer.Option(DEFAULT_AMOUNTS, "--amounts", help="fractions each layer is pruned to, alone, comma-separated; each in [0, 1)"),
    write_recipe: Optional[Path] = typer.Option(None, "--write-recipe", metavar="FILE",
                                                help="also write the recipe with per-layer amounts (prune.layer_sparsity) "
                                                "allocated from the scan; must not exist"),
    target: Optional[float] = typer.Option(None, "--target", help="with --write-recipe: the overall amount to allocate "
                                           "(default prune.sparsity): the parameter-weighted amount, or with --budget "
                                           "macs the fraction of the dense MACs removed"),
    budget: Optional[str] = typer.Option(None, "--budget", help="with --write-recipe: params (default) spends a "
                                         "parameter budget, macs a compute budget (more from the layers that cost "
                                         "the most MACs)"),
) -> None:
    """Prune each target layer alone at a few amounts, score validation with no fine-tuning; write the scan."""

    def go():
        grid = parse_amounts(amounts)  # refused before the recipe is read
        r = load_recipe(recipe, set_)
        doc = run_sensitivity(r, out, grid, write_recipe=write_recipe, target=target, budget=budget, log=_log)
        print(table(doc))

    _guard(go)


def _print_loading(report: dict) -> None:
    """How a transformers model's saved folder loads (with plain from_pretrained, or through prunetune)."""
    if report.get("saved_model"):
        print(f"model folder: {report['saved_model']['how']}")


def speed_summary(row: dict, batch: int) -> str:
    """The run summary's speedup part from a report's `speedup` row: intervals, "no measurable change",
    noise reasons and the masked-weights note; "" when latency was not measured."""
    if "speedup_batch_1" not in row:
        return ""
    return (f", measured speedup {stage_speedup_text(row, 'batch_1')} (b1) / {stage_speedup_text(row, 'batch_N')} (b{batch})"
            + "".join(f"; {n}" for n in speedup_notes(row)))


@app.command()
def sweep(
    recipe: Path = typer.Argument(..., help="YAML recipe with a search section"),
    set_: List[str] = typer.Option([], "--set", help="override a field: section.key=value (repeatable)"),
    trials: Optional[int] = typer.Option(None, "--trials", help="finished trials to reach, all workers together (default search.trials)"),
    storage: Optional[str] = typer.Option(None, "--storage", help="SQLAlchemy URL of the study storage (default: sqlite file OUT/study.db); "
                                          "postgresql://user:pw@host/db lets many workers join"),
    study: Optional[str] = typer.Option(None, "--study", help="study name (default: the recipe's name)"),
    out: Optional[Path] = typer.Option(None, "--out", help="sweep folder (default sweeps/NAME); trials, outputs and the balance run go here"),
    report: bool = typer.Option(False, "--report", help="rebuild the outputs from the study storage; run nothing"),
) -> None:
    """Search pruning x fine-tuning for the cheapest model within search.tolerance of the dense model's metric."""

    def go():
        r = load_recipe(recipe, set_)
        if trials is not None and trials < 0:
            raise PrunetuneError(f"--trials {trials}: must be 0 or more")
        folder = out or Path("sweeps") / r.name
        doc = run_sweep(r, folder, trials=trials, storage=storage, study=study, report_only=report, log=_log)
        task = Task.of_report(doc)
        metric, key = task.metric, task.key
        b = doc.get("balance")
        if b and b.get("test"):
            t = b["test"]
            speed = (f", measured speedup {stage_speedup_text(t, 'batch_N')}" + "".join(f"; {n}" for n in speedup_notes(t))
                     if t.get("speedup_batch_N") is not None else " (latency not measured)")
            print(f"balance point: trial {doc['balance_trial']}: validation {task.format(b[key])}, test "
                  f"{task.format(t[metric])} (dense {task.format(t['dense_' + metric])}){speed}; {b.get('folder')}")
        elif b:
            print(f"balance point: trial {doc['balance_trial']}: validation {task.format(b[key])} (not scored on test yet)")
        else:
            print(f"no trial within {doc['tolerance']} {task.units} of the dense model yet; see {folder / 'sweep.md'}")
        if doc.get("compute"):
            print(compute_line(doc["compute"]))

    _guard(go)


@app.command("eval")
def eval_(
    model_dir: Path = typer.Argument(..., help="a run's model/ folder"),
    set_: List[str] = typer.Option([], "--set", help="data override, e.g. data.path=/my/data"),
    trust_code: bool = typer.Option(False, "--trust-code", help="allow the model's own code (import-path models)"),
) -> None:
    """Score a saved model on its test set and print the result as JSON."""

    def go():
        print(json.dumps(evaluate_model(model_dir, set_, trust_code), indent=2))

    _guard(go)


@app.command("export")
def export(
    model_dir: Path = typer.Argument(..., help="a run's model/ folder"),
    format_: str = typer.Option("onnx", "--format", help="export format (onnx)"),
    out: Optional[Path] = typer.Option(None, "--out", help="output file (default model.onnx beside the model folder); must not exist"),
    opset: Optional[int] = typer.Option(None, "--opset", help="ONNX opset (default: the exporter's)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="onnxruntime threads for the latency check (default: its own)"),
    min_run_time: float = typer.Option(1.0, "--min-run-time", help="seconds of timed calls per latency batch size"),
    rounds: int = typer.Option(5, "--rounds", help="rounds of alternating dense / export timing for the speedup interval"),
    trust_code: bool = typer.Option(False, "--trust-code", help="allow the model's own code (import-path models)"),
    compare_dense: bool = typer.Option(True, "--compare-dense/--no-compare-dense",
                                       help="also export and time the run's cached dense model; report both"),
) -> None:
    """Export a saved model, check it against PyTorch, time it; print the export report as JSON."""

    def go():
        if format_ not in R.EXPORTERS:
            raise PrunetuneError(f"--format {format_}: unknown export format; choose one of: {', '.join(R.EXPORTERS.names())}")
        print(json.dumps(R.EXPORTERS.get(format_)(model_dir, out, opset=opset, threads=threads,
                                     min_run_time=min_run_time, trust_code=trust_code, compare_dense=compare_dense,
                                     rounds=rounds), indent=2))

    _guard(go)


@app.command("predict")
def predict(
    model_dir: Path = typer.Argument(..., help="a run's model/ folder"),
    inputs: List[Path] = typer.Argument(..., help="image files or folders of images; for text models, text files "
                                        "(one text per line) or - for standard input"),
    out: Optional[Path] = typer.Option(None, "--out", help="write JSON Lines here (default stdout); must not exist"),
    batch_size: int = typer.Option(64, "--batch-size", help="images per forward pass"),
    trust_code: bool = typer.Option(False, "--trust-code", help="allow the model's own code (import-path models)"),
) -> None:
    """Classify images or texts with a saved model; one JSON line per input: input, label, probabilities."""

    def go():
        if out is not None and out.exists():  # refuse before loading anything
            raise PrunetuneError(f"{out}: already exists; choose another --out or remove it")
        n = write_predictions(run_predict(model_dir, list(inputs), batch_size=batch_size, trust_code=trust_code), out)
        if out is not None:
            _log(f"predict: {n} predictions written to {out}")

    _guard(go)


@app.command("list")
def list_() -> None:
    """Print every registered data source, model (and model-name prefix), task, importance, pruner
    (with its default importance and scope per model family), schedule and method."""
    for title, reg in R.ALL.items():
        print(f"{title}:")
        for name, doc in reg.describe().items():
            print(f"  {name:<16} {doc}")
            if reg is R.PRUNERS:
                print(" " * 19 + pruner_defaults(R.PRUNERS.get(name)))
        if reg is R.MODELS:
            for prefix, doc in MODEL_PREFIXES.items():
                print(f"  {prefix:<16} {doc}")


def pruner_defaults(pruner) -> str:
    """A pruner's defaults as `prunetune list` prints them: importance / scope, then per model family
    with the evidence (`Pruner.family_defaults`)."""
    imp, scope = pruner.defaults_for(None)
    text = f"defaults: importance {imp}, scope {scope}"
    for family, (fimp, fscope, why) in pruner.family_defaults.items():
        text += f"; on {family} models (minilm, hf:) importance {fimp}, scope {fscope}: {why}"
    return text


@app.command("refine")
def refine_(
    model_dir: Optional[Path] = typer.Argument(None, help="a saved model folder (a run's model/); omitted with --resume"),
    data_path: Optional[str] = typer.Option(None, "--data", "--data-path", help="the newly collected labelled data (same classes as the model)"),
    set_: List[str] = typer.Option([], "--set", help="data.* or finetune.* override, e.g. finetune.epochs=2 (repeatable)"),
    out: Optional[Path] = typer.Option(None, "--out", help="output folder (default: MODEL_DIR-v2, -v3, ... beside it); must not exist"),
    trust_code: bool = typer.Option(False, "--trust-code", help="allow the model's own code (import-path models)"),
    track: Optional[str] = typer.Option(None, "--track", help=TRACK_HELP),
    track_uri: Optional[str] = typer.Option(None, "--track-uri", help=TRACK_URI_HELP),
    resume: Optional[Path] = typer.Option(None, "--resume", metavar="OUT_DIR",
                                          help="continue the interrupted refine that was writing OUT_DIR (e.g. "
                                          "runs/x/model-v2) from its last checkpoint (OUT_DIR.checkpoint/); the model, "
                                          "data and settings come from the checkpoint"),
) -> None:
    """Re-fine-tune a saved model on new labelled data, keeping its architecture and masks; write a new version."""

    def go():
        if resume is not None:
            if model_dir is not None or data_path is not None or set_ or (out is not None and out != resume):
                raise PrunetuneError("--resume: the model, the data, the settings and the output folder come from the "
                                     "checkpoint; drop MODEL_DIR, --data, --set and --out")
            rep = resume_refine(resume, log=_log, trust_code=trust_code, track=track, track_uri=track_uri)
        elif model_dir is None:
            raise PrunetuneError("refine: give the saved model folder MODEL_DIR (or --resume OUT_DIR to continue "
                                 "an interrupted refine)")
        else:
            rep = refine(model_dir, set_, out, log=_log, data_path=data_path, trust_code=trust_code,
                         track=track, track_uri=track_uri)
        b, a = rep["stages"]["before"], rep["stages"]["after"]
        task = Task.of_report(rep)
        m = task.metric
        print(f"{task.headline}new data {task.show(b['new_data'][m])} -> {task.show(a['new_data'][m])}; original test "
              f"{task.show(b['original_test'][m])} -> {task.show(a['original_test'][m])}; "
              f"{rep['nonzero_params']:,} non-zero parameters kept; wrote {rep['folder']}")
        _print_loading(rep)

    _guard(go)


def main() -> None:
    """The `prunetune` entry point. A usage error (unknown option or command, missing argument, an
    option value of the wrong type) also ends as one `error:` line and exit code 2, like any bad input."""
    try:
        rc = app(standalone_mode=False)
    except typer.TyperException as e:
        ctx = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `prunetune`: typer printed the help, as before
            raise SystemExit(e.exit_code) from None
        cmd = ctx.command_path if ctx is not None else "prunetune"
        msg = " ".join(e.format_message().split()).rstrip(".")
        print(f"error: {cmd}: {msg}; see `{cmd} --help`", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        raise SystemExit(1) from None
    raise SystemExit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
