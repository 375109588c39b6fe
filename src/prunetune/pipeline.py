"""`run`: the whole loop. Dense model -> measure -> prune -> measure -> fine-tune -> measure -> save.

Everything is written to a temporary sibling folder and renamed into place at the end, so a
failed or interrupted run never leaves a folder that looks complete. `resume_run` continues an
interrupted run from its checkpoint (checkpoint.py).

Example:
    >>> from prunetune.recipe import load_recipe                                   # doctest: +SKIP
    >>> report = run(load_recipe(None, ["data.limit=2000"]), out="runs/quick")     # doctest: +SKIP
    >>> report["stages"]["finetuned"]["accuracy"]                                  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Callable

import torch

from . import __version__, distributed
from .artifacts import loading_entry, save_model
from .checkpoint import Resume
from .checkpointer import Checkpointer
from .dense import dense_key, model_info, split_fingerprint, write_run_dense
from .errors import PrunetuneError
from .measure import measure_stage, plan_rows, process_peak_rss_bytes, reference_counts, training_memory
from .models import classifier_name
from .pruning.controller import PruningController
from .pruning.depth import check_depth
from .pruning.targets import select_targets
from .recipe import Recipe, dump_recipe
from .finetune.base import trainable_summary
from .finetune.distill import Distiller, load_teacher
from .registry import FINETUNE_METHODS
from .tasks import to_device
from .files import cache_root, staged_folder
from .reporting.format import pruned_text, speedups
from .reporting.write import write_reports
from .session import kernel_settings, open_session
from .timing import stage_speedup
from .tracking import Tracker
from .training import Trainer


def _each(row: dict[str, Any], tracked: Callable[[str, dict[str, Any]], None],
          hook: Callable[[dict[str, Any]], None] | None) -> None:
    tracked("finetune", row)
    if hook is not None:
        hook(row)


def default_out(recipe: Recipe) -> Path:
    return Path("runs") / f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def format_plan(plan: list[dict[str, Any]]) -> str:
    """The per-layer plan as aligned text lines."""
    width = max(len(r["layer"]) for r in plan)
    lines = ["plan:"]
    for r in plan:
        text = pruned_text(r)
        mark = "" if text == "yes" else "  (kept)" if text == "no" else f"  (pruned: {text})"
        lines.append(f"  {r['layer']:<{width}}  {str(r['shape_before']):>18} -> {str(r['shape_after']):<18} "
                     f"sparsity {r['sparsity']:.3f}{mark}")
    return "\n".join(lines)


def run(recipe: Recipe, out: str | Path | None = None, log: Callable[[str], None] = print, *,
        track: str | Tracker | None = None, track_uri: str | None = None, score_on: str = "test",
        save: bool = True, on_finetune_epoch: Callable[[dict[str, Any]], None] | None = None,
        checkpoint: bool = True, resume: Resume | None = None) -> dict[str, Any]:
    """Run a recipe end to end and return its report (also written to `out`).

    `track` ("tensorboard", "mlflow" or a `Tracker`) logs the recipe, every epoch and the report.
    `score_on="val"` measures every stage on the validation split (search trials: the test set
    never guides a search); `save=False` skips the model folder; `on_finetune_epoch(row)` is called
    after each fine-tuning epoch and may raise to stop the run (e.g. optuna.TrialPruned).
    Fine-tuning is checkpointed into `<out>.checkpoint/` unless `checkpoint=False`; `resume` (a
    `checkpoint.Resume`; see `resume_run`) continues an interrupted run from its checkpoint."""
    out = distributed.rank_folder(Path(out) if out else default_out(recipe))  # torchrun: rank r > 0 writes OUT.rank<r>
    rank, world_size = distributed.world()
    if out.exists():
        raise PrunetuneError(f"--out: {out} already exists; choose another folder or remove it")
    session = open_session(recipe, log, track=track, track_uri=track_uri)
    tracker, device, task = session.tracker, session.device, session.task
    if recipe.prune.order == "prune_first" and recipe.dense.epochs:
        # Prune the starting (e.g. pretrained) model itself: no task training before pruning.
        recipe = recipe.model_copy(update={"dense": recipe.dense.model_copy(update={"epochs": 0})})
        log("prune.order prune_first: dense.epochs taken as 0")
    bundle = session.load_data(recipe.data, recipe.model, robustness=recipe.evaluate.robustness, score_on=score_on,
                               announce=True)

    ckpt = Checkpointer(out, recipe, log, resume, enabled=checkpoint, run_args={"score_on": score_on, "save": save})
    with ckpt.guard(), staged_folder(out, on_abort=tracker.abort) as tmp:
        (tmp / "recipe.resolved.yaml").write_text(dump_recipe(recipe))
        tracker.start(recipe.model_dump(mode="json"), out.name, tmp, folder=out)
        dense, dense_info = resume.dense(device) if resume is not None else session.obtain_dense(
            recipe, on_epoch=lambda row: tracker.log_epoch("dense", row))
        if dense_info.get("source") == "cache":  # the cached model's training curves
            for row in dense_info.get("history") or []:
                tracker.log_epoch("dense", row)
        keep = [classifier_name(dense)] if recipe.prune.keep_classifier else []
        p = recipe.prune
        if p.method == "depth" or p.depth is not None:  # refused before any measuring: too many blocks, or none
            check_depth(dense, p.sparsity if p.method == "depth" else p.depth.amount,
                        "prune.sparsity" if p.method == "depth" else "prune.depth.amount")
        targets = select_targets(dense, p.include, p.exclude, [k for k in keep if k])
        ref = reference_counts(dense, targets)
        controller = PruningController(p, task, bundle, device, targets, recipe.finetune.epochs, recipe.seed)
        if recipe.dense.source == "train" and recipe.dense.cache:  # gradient importance of the dense model, once
            controller.grad_cache = cache_root() / "grads" / f"{dense_key(recipe)}-c{p.calibration_batches}.safetensors"

        log("measure: dense")
        stages = {"dense": measure_stage(dense, task, bundle, recipe.evaluate, device, ref)}

        pruned, pruner = controller.one_shot_copy(dense)
        plan = plan_rows(dense, pruned, targets)
        if not any(row["sparsity"] > 0 for row in plan):
            raise PrunetuneError(
                f"prune.sparsity: {p.sparsity} prunes nothing in the selected layers ({', '.join(targets)}); raise it"
            )
        log(format_plan(plan))
        log(f"measure: pruned to {controller.final_sparsity:.3f} before fine-tuning")
        stages["pruned"] = measure_stage(pruned, task, bundle, recipe.evaluate, device, ref)
        masked, timed = bool(getattr(pruner, "masked", False)), {}
        if recipe.evaluate.latency:  # the pruned model is trained in place next: time it against dense now
            log("measure: pruned vs dense, timed alternately")
            timed["pruned"] = stage_speedup(dense, pruned, task, bundle, recipe.evaluate, device, masked)
        oneshot = len(controller.sparsities) == 1
        if oneshot:
            model = pruned
        else:
            del pruned
            model = copy.deepcopy(dense)
            pruner = controller.make_pruner(model, controller.sparsities)

        ft = recipe.finetune
        distiller, kd = None, ft.distillation(task, bundle, p.method)
        if kd is not None:
            teacher, teacher_name = load_teacher(kd, dense, bundle, recipe.model.trust_code)
            log(f"distill: teacher {teacher_name}, alpha {kd.alpha}, T {kd.temperature}"
                + (" (finetune.distill auto; null turns it off)" if ft.distill == "auto" else ""))
            logits_cache = (cache_root() / "teacher" / f"{dense_key(recipe)}-{split_fingerprint(bundle)}.safetensors"
                            if teacher_name == "dense" and recipe.dense.source == "train" and recipe.dense.cache else None)
            distiller = Distiller(kd, task, teacher, bundle, device, ft.label_smoothing, ft.augment.active, logits_cache)
            teacher_score = (stages["dense"][task.metric] if teacher_name == "dense" else task.evaluate(
                distiller.teacher, bundle.test, bundle.eval_batch_size, device, bundle.class_names)[task.metric])

        torch.manual_seed(recipe.seed + 1)
        method = FINETUNE_METHODS.get(ft.method, "finetune.method")(ft, classifier_name(model))
        trained = method.prepare(model)
        if method.mergeable:
            method.probe_with(to_device(bundle.val.head(32), device))
        trainer = Trainer(trained, task, bundle, ft, device, recipe.finetune_seed, desc="finetune", log=log,
                          method=method, loss_fn=distiller.loss if distiller else None,
                          on_epoch=lambda row: _each(row, tracker.log_epoch, on_finetune_epoch))
        train_info = {**method.summary, **trainable_summary(trained),
                      "train_peak_memory_bytes": training_memory(trained, task, bundle, ft, device)}
        log(f"finetune: {ft.method}, {train_info['trainable_params']:,} trainable parameters "
            f"({100 * train_info['trainable_fraction']:.2f}%)")
        ckpt.attach(trainer, controller, pruner, dense, model_info(recipe, bundle), dense_info)
        if resume is not None:
            resume.restore(trainer, controller, pruner)
        with ckpt.armed():
            history = controller.finetune(model, pruner, trainer, already_pruned=oneshot, log=log)
        if getattr(controller, "final_model", None) is not None:  # adaptive: possibly rolled back
            trained = model = controller.final_model
        model = method.finish(trained)
        if "merge" in method.summary:
            mg = method.summary["merge"]
            log(f"merge: non-zeros {mg['nonzero_before']:,} -> {mg['nonzero_after']:,}, "
                f"max logit difference {mg['max_logit_diff']:.2e}")
        log("measure: fine-tuned")
        stages["finetuned"] = measure_stage(model, task, bundle, recipe.evaluate, device, ref)
        if recipe.evaluate.latency:
            log("measure: fine-tuned vs dense, timed alternately")
            timed["finetuned"] = stage_speedup(dense, model, task, bundle, recipe.evaluate, device, masked)

        report = {
            "kind": "run",
            "prunetune_version": __version__,
            "recipe": recipe.model_dump(mode="json"),
            "task": task.name,
            "metric": task.metric,
            "higher_is_better": task.higher_is_better,
            "stages": stages,
            "speedup": speedups(stages, timed),
            "plan": plan_rows(dense, model, targets),
            "finetune": {"epochs_run": len(history), "best_epoch": trainer.best_epoch,
                         "wall_s": round(trainer.wall_s, 2), "steps": trainer.steps,
                         "s_per_step": round(trainer.wall_s / max(1, trainer.steps), 4),
                         **train_info, "merge": method.summary.get("merge"), "history": history},
            "dense": dense_info,
            "distill": ({**distiller.summary(teacher_name, teacher_score), "auto": ft.distill == "auto"}
                        if distiller else None),
            "notes": pruner.notes,
            "bn_recalibrations": controller.bn_recalibrations,
            "adaptive": getattr(controller, "adaptive_summary", None),
            "importance_gradients": ({"from_cache": controller.grads_from_cache} if controller.grads_from_cache else None),
            "torch_version": torch.__version__,
            "distributed": {"world_size": world_size, "backend": "nccl" if device.type == "cuda" else "gloo"} if world_size > 1 else None,
            "scored_on": score_on,
            "nondeterministic_kernels": kernel_settings(device),
            "checkpoint": ckpt.summary(),
            "process_peak_rss_bytes": process_peak_rss_bytes(),
        }
        if save:
            save_model(model, tmp / "model", {**model_info(recipe, bundle), "modules": method.structure()})
            report.update(loading_entry(tmp / "model"))
            write_run_dense(tmp / "dense", dense, dense_info, stages["dense"], model_info(recipe, bundle))
        write_reports(report, tmp)
        tracker.finish(report, tmp)  # before the rename: tensorboard/ is inside tmp, mlflow copies the reports
    log(f"done: {out}")
    return report


def resume_run(out_dir: str | Path, log: Callable[[str], None] = print, *, track: str | Tracker | None = None,
               track_uri: str | None = None) -> dict[str, Any]:
    """Continue the interrupted run whose output folder was `out_dir` from its last checkpoint."""
    res = Resume.load(out_dir)
    warn = res.versions_differ()
    if warn:
        log(f"resume: {warn}")
    s = res.summary()
    log(f"resume: {res.out} from {res.dir}: phase {s['phase']}, epoch {s['epoch']} after {s['batches']} batches "
        f"(step {s['global_step']})")
    args = {k: v for k, v in res.record.get("run_args", {}).items() if k in ("score_on", "save")}
    return run(res.recipe, res.out, log, track=track, track_uri=track_uri, resume=res, **args)
