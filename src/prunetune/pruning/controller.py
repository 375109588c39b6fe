"""The controller composes what (importance), how (pruner) and when (schedule phases) with the Trainer."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file
from torch import nn

from .. import distributed
from ..data.base import batches
from ..files import cache_tensors
from ..registry import IMPORTANCES, PRUNERS, SCHEDULES
from ..tasks import to_device
from ..errors import PrunetuneError
from .activations import input_norms
from .batchnorm import recalibrate_bn
from .depth import prune_depth, renamed, renames
from .layerwise import reconstruct_model
from .masks import masked_tensors
from .pruners import Pruner, target_modules
from .regrow import fraction, straight_through, swap
from .schedules import Phase, all_sparsities
from .targets import layer_amounts


class PruningController:
    def __init__(self, spec, task, bundle, device: torch.device, targets: list[str], finetune_epochs: int, seed: int) -> None:
        self.spec, self.task, self.bundle, self.device, self.targets = spec, task, bundle, device, targets
        self.seed = seed
        self.importance = IMPORTANCES.get(spec.importance, "prune.importance")()
        self.phases: list[Phase] = SCHEDULES.get(spec.schedule.kind, "prune.schedule.kind")(spec, finetune_epochs)
        self.sparsities = all_sparsities(self.phases)
        self.pruner_cls = PRUNERS.get(spec.method, "prune.method")
        self.layer_amounts = layer_amounts(targets, spec.layer_sparsity)  # a pattern matching nothing fails here
        self.grad_cache: Path | None = None  # where the dense model's calibration gradients are cached
        self.grads_from_cache: str | None = None
        # Where `finetune` is (its phase and the history so far) and where the next one continues from.
        self._position: dict[str, Any] | None = None
        self._resume_from: dict[str, Any] | None = None
        self.bn_recalibrations = 0  # pruning steps after which BatchNorm statistics were re-estimated
        if getattr(self.importance, "reconstructs", False):  # sparsegpt: fewer batches than asked would be a silent guess
            size = getattr(task, "calibration_batch_size", 64)
            have = -(-len(bundle.train) // size)
            if have < spec.calibration_batches:
                raise PrunetuneError(
                    f"prune.calibration_batches: {spec.importance} asks for {spec.calibration_batches} calibration batches of "
                    f"{size} training examples but the training split has {len(bundle.train)} ({have} batch"
                    f"{'es' if have != 1 else ''}); lower prune.calibration_batches to {have} or give more training data")

    def state_dict(self) -> dict[str, Any]:
        """Where `finetune` is (JSON-able): the phase, where its rows start in the Trainer's history,
        and the history of the finished phases."""
        return dict(self._position or {"phase": 0, "phase_start": 0, "history": []})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The next `finetune` continues at `state` (a `state_dict()`): finished phases are skipped
        and the current one is not pruned again (the Trainer resumes inside it)."""
        self._resume_from = {"phase": int(state["phase"]), "phase_start": int(state["phase_start"]),
                             "history": list(state["history"])}

    @property
    def final_sparsity(self) -> float:
        return self.sparsities[-1]

    def make_pruner(self, model: nn.Module, sparsities: list[float]) -> Pruner:
        """The pruner, set up on `model`; with `prune.depth` (and a width method), the blocks it removes
        are removed from `model` first and the width method prunes the remaining layers."""
        model.to(self.device)
        targets, notes, depth = list(self.targets), [], self.spec.depth
        if depth is not None and self.spec.method != "depth":
            notes = prune_depth(model, depth.amount, depth.importance, self.calibration_batches(), self.task,
                                "prune.depth.amount")
            moved = renames(model)
            targets = [t for t in (renamed(n, moved) for n in targets) if t is not None]
        pruner = self.pruner_cls(self.spec, self.importance, targets)
        pruner.notes += notes
        if hasattr(pruner, "calibration"):  # depth: ranks blocks on calibration batches with the task's loss
            pruner.calibration, pruner.task = self.calibration_batches, self.task
        example = to_device(self.bundle.train.head(2), self.device)
        pruner.setup(model, example, sparsities)
        return pruner

    def calibration_batches(self) -> list[tuple[Any, torch.Tensor]]:
        """`prune.calibration_batches` seeded training batches (inputs, targets), on the device."""
        g = torch.Generator().manual_seed(self.seed + 31)
        size = getattr(self.task, "calibration_batch_size", 64)
        return [(to_device(x, self.device), y.to(self.device)) for _, (x, y) in
                zip(range(self.spec.calibration_batches), batches(self.bundle.train, size, shuffle=True, generator=g))]

    def _calibrate(self, model: nn.Module, cache: Path | None = None, seed: int | None = None) -> None:
        """Accumulate gradients over a few training batches for gradient-based importance (the batches
        drawn with `seed`; default: the run's seed + 31, the same batches at every pruning step).

        With `cache` (the dense model's gradients, keyed by the content hash of what decides the dense
        model and the calibration settings), they are computed once and reused: a sweep's trials all
        prune the same dense model."""
        if cache is not None and cache.exists():
            try:
                grads = load_file(str(cache))
            except Exception:  # a damaged cache file is recomputed below
                grads = {}
            params = dict(model.named_parameters())
            if grads and set(grads) == {n for n, p in params.items()} and all(grads[n].shape == p.shape for n, p in params.items()):
                for n, p in params.items():
                    p.grad = grads[n].to(p.device)
                self.grads_from_cache = str(cache)
                return
        model.zero_grad(set_to_none=True)
        was = model.training
        model.eval()
        g = torch.Generator().manual_seed(self.seed + 31 if seed is None else seed)
        size = getattr(self.task, "calibration_batch_size", 64)  # language models: fewer sequences per batch
        for i, (x, y) in enumerate(batches(self.bundle.train, size, shuffle=True, generator=g)):
            if i >= self.spec.calibration_batches:
                break
            for p in model.parameters():
                p.requires_grad_(True)
            loss = self.task.loss(self.task.forward(model, to_device(x, self.device)), y.to(self.device))
            loss.backward()
        model.train(was)
        if cache is not None:  # a failed write is only a lost cache
            cache_tensors({n: p.grad.detach().cpu() for n, p in model.named_parameters() if p.grad is not None}, cache)

    def _calibration_inputs(self) -> list:
        """`calibration_batches` seeded training batches (inputs only) for activation-based importance."""
        g = torch.Generator().manual_seed(self.seed + 31)
        size = getattr(self.task, "calibration_batch_size", 64)
        return [x for _, (x, _) in zip(range(self.spec.calibration_batches),
                                       batches(self.bundle.train, size, shuffle=True, generator=g))]

    def _recalibrate_bn(self, model: nn.Module) -> None:
        """BatchNorm statistics of the pruned network from `prune.recalibrate_bn` training batches
        (the same seeded batches on every rank, so torchrun ranks stay identical)."""
        g = torch.Generator().manual_seed(self.seed + 37)
        chosen = [to_device(x, self.device) for _, (x, _) in zip(range(self.spec.recalibrate_bn),
                                                                    batches(self.bundle.train, 128, shuffle=True, generator=g))]
        if recalibrate_bn(model, chosen):
            self.bn_recalibrations += 1

    def prune_step(self, pruner: Pruner, model: nn.Module, sparsity: float, from_dense: bool = False) -> bool:
        torch.manual_seed(self.seed + int(sparsity * 1e6))  # random importance repeats run to run
        if self.importance.needs_grad:
            self._calibrate(model, self.grad_cache if from_dense else None)
        calibrated = getattr(self.importance, "needs_activations", False) or getattr(self.importance, "reconstructs", False)
        inputs = self._calibration_inputs() if calibrated else []
        changed = prune_calibrated(pruner, model, sparsity, inputs, lambda x: self.task.forward(model, to_device(x, self.device)))
        distributed.sync_masks(model)  # torchrun: every rank keeps rank 0's masks
        if changed and self.spec.recalibrate_bn:
            self._recalibrate_bn(model)
        pruner.steps_done += 1
        model.zero_grad(set_to_none=True)
        return changed

    def one_shot_copy(self, dense: nn.Module) -> tuple[nn.Module, Pruner]:
        """The dense model pruned straight to the final sparsity, before any fine-tuning."""
        model = copy.deepcopy(dense)
        pruner = self.make_pruner(model, [self.final_sparsity])
        self.prune_step(pruner, model, self.final_sparsity, from_dense=True)
        return model, pruner

    def finetune(self, model: nn.Module, pruner: Pruner, trainer, already_pruned: bool,
                 log: Callable[[str], None]) -> list[dict[str, Any]]:
        """Run every phase: prune to its sparsity, fine-tune with its in-training events."""
        if self.spec.schedule.kind == "adaptive":
            return self._adaptive(model, pruner, trainer, log)
        resume, self._resume_from = self._resume_from, None
        history: list[dict[str, Any]] = list(resume["history"]) if resume else []
        for i, phase in enumerate(self.phases):
            if resume and i < resume["phase"]:
                continue  # finished before the checkpoint
            resumed = bool(resume) and i == resume["phase"]
            if phase.sparsity is not None and not (already_pruned and i == 0) and not resumed:
                log(f"prune: {self.spec.method} to {phase.sparsity:.4f} ({self.spec.importance})")
                if self.prune_step(pruner, model, phase.sparsity):
                    trainer.rebuild_optimizer()
            start = resume["phase_start"] if resumed else len(trainer.history)
            self._position = {"phase": i, "phase_start": start, "history": history}
            regrow = getattr(SCHEDULES.get(self.spec.schedule.kind), "regrows", False)

            def on_event(s: float) -> bool:
                if regrow:  # the dynamic schedule: drop and grow at the same sparsity (step 1 was the prune above)
                    self._swap(pruner, model, pruner.steps_done - 1, len(phase.events))
                    return False
                log(f"prune: {self.spec.method} to {s:.4f} during fine-tuning")
                return self.prune_step(pruner, model, s)

            trainer.fit(phase.epochs, phase.events, on_event)
            for row in trainer.history[start:]:
                history.append({**row, "phase": i + 1})
            if regrow and phase.events:
                kept = sum(int(m.sum()) for m in masked_tensors(model).values())
                pruner.notes.append(f"dynamic: {len(phase.events)} drop-and-grow steps during fine-tuning; {pruner.grown:,} "
                                    f"pruned weights grown back ({100 * pruner.grown / max(1, kept):.1f} % of the {kept:,} kept)")
                log(f"prune: {pruner.notes[-1]}")
        return history

    def _swap(self, pruner: Pruner, model: nn.Module, index: int, count: int) -> None:
        """Drop-and-grow step `index` (from 0) of `count` (pruning/regrow.py); the growth scores are the
        gradients of the masked weights over `prune.calibration_batches` training batches drawn afresh
        at each step."""
        tensors = pruner.weights_and_masks(model)
        with straight_through([m for _, m in tensors]):
            self._calibrate(model, seed=self.seed + 41 + 1009 * index)
        pruner.grown += swap([(o, m.mask, o.grad) for o, m in tensors if o.grad is not None], fraction(index, count))
        distributed.sync_masks(model)
        pruner.steps_done += 1
        model.zero_grad(set_to_none=True)

    def _adaptive(self, model: nn.Module, pruner: Pruner, trainer, log: Callable[[str], None]) -> list[dict[str, Any]]:
        """Step sparsity up while the validation metric holds; on a lasting drop, restore the last good step.

        The model that should be kept is left in `self.final_model` (a different object after the
        roll-back of a structurally pruned model, whose tensors changed shape)."""
        sch = self.spec.schedule
        task, metric = self.task, self.task.metric
        dense_val = task.evaluate(model, self.bundle.val, self.bundle.eval_batch_size, self.device,
                                  self.bundle.class_names)[metric]
        # Within tolerance: at most `tolerance` worse than dense, in the metric's own units and direction.
        threshold = task.threshold(dense_val, sch.tolerance)

        def within(v: float | None) -> bool:
            return v is not None and task.drop(v, dense_val) <= sch.tolerance

        good, good_sparsity = copy.deepcopy(model), 0.0
        steps: list[dict[str, Any]] = []
        history: list[dict[str, Any]] = []
        rolled_back = False
        for i, phase in enumerate(self.phases):
            log(f"prune: {self.spec.method} to {phase.sparsity:.4f} ({self.spec.importance}), adaptive step {i + 1}")
            if self.prune_step(pruner, model, phase.sparsity):
                trainer.rebuild_optimizer()
            acc = None
            for extra in range(phase.epochs + sch.patience):
                start = len(trainer.history)
                trainer.fit(1)
                history += [{**row, "phase": i + 1} for row in trainer.history[start:]]
                acc = trainer.history[-1][f"val_{metric}"]
                if extra + 1 >= phase.epochs and within(acc):
                    break
            ok = within(acc)
            steps.append({"sparsity": phase.sparsity, f"val_{metric}": acc, "within_tolerance": ok})
            if not ok:
                log(f"adaptive: validation {metric} {acc:.2f} beyond {threshold:.2f} at sparsity {phase.sparsity:.4f} after "
                    f"{sch.patience} extra epoch(s); rolling back to sparsity {good_sparsity:.4f}")
                rolled_back = True
                break
            good, good_sparsity = copy.deepcopy(model), phase.sparsity
        self.final_model = good if rolled_back else model
        self.adaptive_summary = {"metric": metric, f"dense_val_{metric}": dense_val, "threshold": threshold, "steps": steps,
                                 "kept_sparsity": good_sparsity if rolled_back else steps[-1]["sparsity"],
                                 "rolled_back": rolled_back}
        return history



def prune_calibrated(pruner: Pruner, model: nn.Module, sparsity: float, inputs: list, forward: Callable[[Any], Any]) -> bool:
    """Prune `model` to `sparsity` with a set-up `pruner`, its importance calibrated on `inputs` (each run by
    `forward(x)`) when it needs them: input norms (wanda), or layer-by-layer reconstruction (sparsegpt, which
    writes the pruner's masks and the reconstructed weights itself). True when parameters were replaced.

    Example (a decoder pruned to 2:4 by SparseGPT, no recipe needed):
        >>> spec = PruneSpec(method="nm", importance="sparsegpt")            # doctest: +SKIP
        >>> pruner = PRUNERS.get("nm")(spec, IMPORTANCES.get("sparsegpt")(), targets)  # doctest: +SKIP
        >>> pruner.setup(model, None, [0.5])                                  # doctest: +SKIP
        >>> prune_calibrated(pruner, model, 0.5, batches, lambda x: model(**x))  # doctest: +SKIP
    """
    importance = pruner.importance
    reconstructs = getattr(importance, "reconstructs", False)
    if reconstructs or getattr(importance, "needs_activations", False):
        was = model.training
        model.eval()
        try:
            if reconstructs:
                reconstruct_model(model, forward, inputs, pruner.reconstruction_plan(model, sparsity))
                return False
            importance.norms = input_norms(forward, dict(target_modules(model, list(pruner.targets))), inputs)
        finally:
            model.train(was)
    return pruner.prune_to(model, sparsity)
