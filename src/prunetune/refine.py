"""`refine`: re-fine-tune a saved (compressed) model on newly collected labelled data.

The architecture and the masks are kept: the model is loaded from its folder with `load_model(..., keep_masks=True)`
(masks come back as parametrizations, so pruned weights stay exactly zero while training), trained
with the saved recipe's `finetune` section, and checked afterwards: identical masks and the same
number of non-zero parameters, else nothing is written. The task's metric (accuracy, RMSE, ...) is
measured before and after on the new data's test split and on the original test set (the saved
recipe's data), so forgetting shows.

The result is a new version folder beside the old one (`run/model` -> `run/model-v2`, then `-v3`,
...), written atomically; the source folder is only read.

Fine-tuning is checkpointed like `prunetune run`'s (checkpoint.py) into `<out>.checkpoint/`, which also
records the merged recipe and the source folder (path and sha256): `resume_refine(out)` continues an
interrupted refine to the result an uninterrupted one gives.

Example:
    >>> report = refine("runs/quick/model", ["finetune.epochs=2"], data_path="/data/new")   # doctest: +SKIP
    >>> report["stages"]["after"]["new_data"][report["metric"]]                           # doctest: +SKIP
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
from pathlib import Path
from typing import Any, Callable

import torch
from pydantic import ValidationError

from . import __version__
from .artifacts import load_model, loading_entry, read_manifest, resolve_tokenizer, save_model
from .checkpoint import Resume
from .checkpointer import Checkpointer, refuse_stale
from .data import build_data
from .dense import model_info
from .errors import PrunetuneError, RuntimeFault
from .files import staged_folder
from .finetune.options import DROP_FOREIGN
from .measure import count_params, measure_stage, reference_counts
from .models import build_model, classifier_name
from .pruning.masks import masked_layer_names, masked_tensors, realise
from .pruning.targets import select_targets
from .recipe import ModelSpec, Recipe, apply_overrides, dump_recipe, validation_error
from .reporting.write import write_reports
from .session import kernel_settings, open_session
from .tasks.causal_lm import refuse_lm_folder
from .tracking import Tracker
from .training import Trainer

ALLOWED = ("data.", "finetune.")


def model_folder(path: str | Path) -> Path:
    """The saved model's folder; a run folder (holding model/) is accepted too."""
    path = Path(path)
    if not (path / "manifest.json").exists() and (path / "model" / "manifest.json").exists():
        return path / "model"
    return path


def next_version(model_dir: Path) -> Path:
    """`run/model` -> `run/model-v2` (or the next free number); `run/model-v2/model` -> `run/model-v3`.

    '.' and '..' are removed first (lexically, links are not followed; a relative path stays relative
    unless it climbs above the working folder), so the new version always lands beside the model
    folder: `run/model/..` would otherwise give `run/model/..-v2`."""
    norm = os.path.normpath(model_dir)
    model_dir = Path(norm if not norm.startswith("..") and norm != "." else os.path.abspath(model_dir))
    m = re.fullmatch(r"(.+)-v(\d+)", model_dir.parent.name)
    if model_dir.name == "model" and m:
        where, stem = model_dir.parent.parent, m.group(1)
    else:
        where, stem = model_dir.parent, model_dir.name
    pattern = re.compile(re.escape(stem) + r"-v(\d+)")
    taken = [int(g.group(1)) for p in where.iterdir() if (g := pattern.fullmatch(p.name))] if where.is_dir() else []
    return where / f"{stem}-v{max([1, *taken]) + 1}"


def _check_overrides(overrides: list[str]) -> None:
    for o in overrides:
        key = o.split("=", 1)[0].strip()
        if not key.startswith(ALLOWED):
            raise PrunetuneError(
                f"--set {o}: refine only takes data.* and finetune.* overrides; the architecture, masks and "
                "evaluation settings of the saved model are kept"
            )
        if key.startswith("finetune.distill"):
            raise PrunetuneError(f"--set {o}: refine does not distil (there is no dense teacher); remove this override")
        if key == "finetune.method" and o.split("=", 1)[-1].strip() != "full":
            raise PrunetuneError(f"--set {o}: refine trains every parameter (finetune.method=full); remove this override")


def _validate(data: dict[str, Any], source: str, context: dict[str, Any] | None = None) -> Recipe:
    try:
        return Recipe.model_validate(data, context=context)
    except ValidationError as e:
        raise validation_error(e, source) from None


def _names(xs: list[str], at_most: int = 8) -> str:
    shown = ", ".join(repr(x) for x in xs[:at_most])
    return shown + (f" and {len(xs) - at_most} more" if len(xs) > at_most else "")


def check_classes(new: list[str], model: list[str], where: str) -> None:
    """The new data must have exactly the model's classes, in the model's order."""
    if new == model:
        return
    unknown = [c for c in new if c not in model]
    missing = [c for c in model if c not in new]
    if unknown:
        raise PrunetuneError(f"{where}: labels unknown to the model: {_names(unknown)}; the model predicts "
                             f"{_names(model)}; relabel the new data or train a new model")
    if missing:
        raise PrunetuneError(f"{where}: the new data lacks the model's classes {_names(missing)}; "
                             "refine needs examples of every class the model predicts")
    raise PrunetuneError(f"{where}: the new data orders its classes {_names(new)}, the model {_names(model)}; "
                         "name the class folders so they sort in the model's order")


def _reference(manifest, recipe: Recipe, model, trust_code: bool) -> dict[str, Any]:
    """Dense counts as in the original run (sparsity is relative to the dense architecture)."""
    try:
        spec = ModelSpec.model_validate(manifest.model)
        if ":" in spec.name and not spec.name.startswith(("torchvision:", "timm:")):
            spec = spec.model_copy(update={"trust_code": trust_code})
        dense = build_model(spec, manifest.num_classes, tuple(manifest.input_shape), manifest.model_kwargs)
        p = recipe.prune
        keep = [classifier_name(dense)] if p.keep_classifier else []
        return reference_counts(dense, select_targets(dense, p.include, p.exclude, [k for k in keep if k]))
    except PrunetuneError:
        return reference_counts(model, masked_layer_names(model))


def fingerprint(folder: Path) -> str:
    """sha256 over the names and contents of every file in a model folder (resume checks the source is unchanged)."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        h.update(f.relative_to(folder).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def refine(model_dir: str | Path, overrides: list[str] | None = None, out: str | Path | None = None,
           log: Callable[[str], None] = print, *, data_path: str | Path | None = None,
           trust_code: bool = False, track: str | Tracker | None = None, track_uri: str | None = None,
           checkpoint: bool = True) -> dict[str, Any]:
    """Re-fine-tune the model in `model_dir` on new data; return the report (also written, with `folder`).

    `track` ("tensorboard", "mlflow" or a `Tracker`) logs the recipe, every epoch and the report.
    Fine-tuning is checkpointed into `<out>.checkpoint/` unless `checkpoint=False` (see `resume_refine`);
    a leftover checkpoint of an interrupted refine into the same `out` is refused."""
    overrides = list(overrides or [])
    _check_overrides(overrides)
    model_dir = model_folder(model_dir)
    manifest = read_manifest(model_dir)
    refuse_lm_folder(manifest, model_dir, "refine")
    if not manifest.recipe:
        raise PrunetuneError(f"{model_dir}: the manifest holds no recipe; refine needs the recipe the model was made with")
    original = _validate(copy.deepcopy(manifest.recipe), f"{model_dir}/manifest.json recipe", {DROP_FOREIGN: True})
    saved = original.model_dump(mode="json")
    del saved["finetune"]["peft"]  # the saved method's options: refine fine-tunes with full, which takes none
    merged = apply_overrides(saved, overrides)
    if data_path is not None:
        merged["data"]["path"] = str(data_path)
    if not any(o.split("=", 1)[0].strip() == "data.path" for o in overrides) and data_path is None:
        raise PrunetuneError("refine: give the newly collected data with --data PATH (or --set data.path=PATH)")
    notes = []
    if isinstance(merged["finetune"].get("distill"), dict):  # a section (auto and null are strings or None)
        notes.append("finetune.distill of the saved recipe dropped: refine has no dense teacher")
    merged["finetune"]["distill"] = None  # auto included: refine has no dense teacher
    if merged["finetune"].get("method") != "full":
        notes.append(f"finetune.method {merged['finetune'].get('method')!r} replaced by 'full'")
        merged["finetune"]["method"] = "full"
    recipe = _validate(merged, "refine")

    out = Path(out) if out else next_version(model_dir)
    if out.exists():
        raise PrunetuneError(f"--out: {out} already exists; choose another folder or remove it")
    if Path(os.path.realpath(model_dir)) in Path(os.path.realpath(out)).parents:
        raise PrunetuneError(f"--out {out}: inside the model folder {model_dir}, which refine only reads; "
                             "write the new version beside it")
    refuse_stale(out, "refine")
    return _refine(model_dir, recipe, notes, out, log, trust_code=trust_code, track=track, track_uri=track_uri,
                   checkpoint=checkpoint)


def resume_refine(out_dir: str | Path, log: Callable[[str], None] = print, *, trust_code: bool = False,
                  track: str | Tracker | None = None, track_uri: str | None = None) -> dict[str, Any]:
    """Continue the interrupted refine that was writing `out_dir` from its last checkpoint and finish it.

    Everything comes from the checkpoint: the merged recipe (data path included), the source model
    folder (which must be unchanged: its sha256 is checked), the notes and --trust-code."""
    res = Resume.load(out_dir, command="refine")
    args = res.record.get("run_args")
    try:
        label, source, digest = str(args["source_model"]), Path(args["source_path"]), str(args["source_sha256"])
        notes, trust = [str(n) for n in args["notes"]], bool(args["trust_code"])
    except (KeyError, TypeError, ValueError):
        raise res.corrupt("run_args lacks the source model, its sha256, the notes or trust_code") from None
    if not (source / "manifest.json").is_file():
        raise PrunetuneError(f"--resume {res.out}: the source model folder {source} is gone (no manifest.json); "
                             "put it back where it was, or delete the checkpoint folder and refine again")
    if fingerprint(source) != digest:
        raise PrunetuneError(f"--resume {res.out}: the source model folder {source} changed since the refine started; "
                             "put the original back, or delete the checkpoint folder and refine again")
    warn = res.versions_differ()
    if warn:
        log(f"resume: {warn}")
    s = res.summary()
    log(f"resume: {res.out} from {res.dir}: epoch {s['epoch']} after {s['batches']} batches (step {s['global_step']})")
    return _refine(source, res.recipe, notes, res.out, log, trust_code=trust or trust_code, track=track,
                   track_uri=track_uri, resume=res, label=label)


def _refine(model_dir: Path, recipe: Recipe, notes: list[str], out: Path, log: Callable[[str], None], *,
            trust_code: bool, track: str | Tracker | None, track_uri: str | None, checkpoint: bool = True,
            resume: Resume | None = None, label: str | None = None) -> dict[str, Any]:
    """The refine itself, from the validated merged recipe; `label` names the source in the report
    (the path as first given; a resume loads from the absolute path recorded)."""
    label = label if label is not None else str(model_dir)
    model, manifest = load_model(model_dir, trust_code=trust_code, keep_masks=True)
    original = _validate(copy.deepcopy(manifest.recipe), f"{model_dir}/manifest.json recipe", {DROP_FOREIGN: True})
    session = open_session(recipe, log, track=track, track_uri=track_uri)  # after loading: that draws random weights
    tracker, device, task = session.tracker, session.device, session.task
    if manifest.preprocess.get("kind") == "text":  # tokenise with the tokenizer saved in the model folder
        tok = resolve_tokenizer(Path(model_dir), manifest.preprocess)
        recipe = recipe.model_copy(update={"data": recipe.data.with_options(tokenizer=recipe.data.options.tokenizer or tok)})
        original = original.model_copy(update={"data": original.data.with_options(tokenizer=original.data.options.tokenizer or tok)})
    # Sources that check data against the model (sequence width, id tables) see its data-decided kwargs too.
    saved_model = recipe.model.model_copy(update={"kwargs": {**manifest.model_kwargs, **recipe.model.kwargs}})
    new = session.load_data(recipe.data, saved_model, saved=manifest.preprocess)
    check_classes(new.class_names, manifest.class_names, f"data.path {recipe.data.path}")
    if len(new.train) == 0:  # a test-only folder (idx) scores a model but cannot refine it
        raise PrunetuneError(f"data.path {recipe.data.path}: no training data to refine on; give a folder with training files")
    if list(new.input_shape) != list(manifest.input_shape):
        raise PrunetuneError(f"data.path {recipe.data.path}: inputs of shape {list(new.input_shape)} but the model takes "
                             f"{manifest.input_shape}; set data.image_size / data.grayscale to match")
    old = build_data(original.data, original.seed, original.model, saved=manifest.preprocess)
    log(f"data: {len(new.train)} train / {len(new.val)} val / {len(new.test)} test new examples; "
        f"original test set {len(old.test)}")

    ref = _reference(manifest, original, model, trust_code)
    quick = recipe.evaluate.model_copy(update={"latency": False, "memory": False})  # latency does not depend on the data

    def measure(which: str) -> dict[str, dict[str, Any]]:
        log(f"measure: {which}")
        res = {"new_data": measure_stage(model, task, new, recipe.evaluate, device, ref),
               "original_test": measure_stage(model, task, old, quick, device, ref)}
        res["new_data"]["examples"], res["original_test"]["examples"] = len(new.test), len(old.test)
        return res

    masks_before = {k: v.detach().cpu().clone() for k, v in masked_tensors(model).items()}
    nonzero_before = count_params(realise(model))[1]
    stages = {"before": measure("before")}

    # What `resume_refine` needs besides the recipe; the source's sha256 only when a checkpoint may be written.
    digest = resume.record["run_args"]["source_sha256"] if resume is not None else fingerprint(model_dir) if checkpoint else None
    run_args = {"source_model": label, "source_path": os.path.abspath(model_dir), "source_sha256": digest,
                "notes": notes, "trust_code": trust_code}
    ckpt = Checkpointer(out, recipe, log, resume, enabled=checkpoint, run_args=run_args, command="refine")
    with ckpt.guard(), staged_folder(out, on_abort=tracker.abort) as tmp:  # written while training: tensorboard/ goes here
        tracker.start(recipe.model_dump(mode="json"), f"{out.parent.name}/{out.name}", tmp, folder=out)
        torch.manual_seed(recipe.seed + 1)
        ft = recipe.finetune
        trainer = Trainer(model, task, new, ft, device, recipe.finetune_seed, desc="refine", log=log, method="full",
                          on_epoch=lambda row: tracker.log_epoch("finetune", row))
        ckpt.attach(trainer, None, None, None, {}, {})
        if resume is not None:
            resume.restore(trainer, None, None)
        with ckpt.armed():
            history = trainer.fit(ft.epochs)

        masks_after = {k: v.detach().cpu() for k, v in masked_tensors(model).items()}
        changed = [k for k in masks_before if k not in masks_after or not torch.equal(masks_before[k], masks_after[k])]
        if changed or set(masks_after) != set(masks_before):
            raise RuntimeFault(f"refine: the masks of {', '.join(changed) or 'the model'} changed while training; nothing was written")
        nonzero_after = count_params(realise(model))[1]
        if nonzero_after != nonzero_before:
            raise RuntimeFault(f"refine: {nonzero_before:,} non-zero parameters before but {nonzero_after:,} after; "
                               "the sparsity was not kept, nothing was written")
        stages["after"] = measure("after")

        report = {
            "kind": "refine",
            "prunetune_version": __version__,
            "source_model": label,
            "metric": task.metric,
            "higher_is_better": task.higher_is_better,
            "stages": stages,
            "finetune": {"epochs_run": len(history), "best_epoch": trainer.best_epoch,
                         "wall_s": round(trainer.wall_s, 2), "history": history},
            "sparsity_kept": True,
            "nonzero_params": nonzero_after,
            "data": {"new": {"path": recipe.data.path, "train": len(new.train), "val": len(new.val), "test": len(new.test)},
                     "original": {"path": original.data.path, "test": len(old.test)}},
            "notes": notes,
            "recipe": recipe.model_dump(mode="json"),
            "torch_version": torch.__version__,
            "nondeterministic_kernels": kernel_settings(device),
            "checkpoint": ckpt.summary(),
        }
        (tmp / "recipe.resolved.yaml").write_text(dump_recipe(recipe))
        save_model(model, tmp / "model", {**model_info(recipe, new), "refined_from": label})
        report.update(loading_entry(tmp / "model"))
        write_reports(report, tmp)
        tracker.finish(report, tmp)  # before the rename: tensorboard/ is inside tmp, mlflow copies the reports
    log(f"done: {out}")
    return {**report, "folder": str(out)}

