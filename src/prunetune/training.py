"""Training and fine-tuning: optimizers, learning-rate schedules and fine-tuning methods (registered),
and a Trainer with warm-up, clipping, early stopping, best-checkpoint restore and pruning events.

Example:
    >>> cosine(step=50, total=100, warmup=0)
    0.5
"""

from __future__ import annotations

import copy
import math
import time
from contextlib import nullcontext
from typing import Any, Callable

import torch
from torch import nn

from . import distributed
from .data.augment import augment
from .data.base import indexed_batches
from .errors import RuntimeFault
from .progress import progress
from .registry import FINETUNE_METHODS, LR_SCHEDULES, OPTIMIZERS
from .tasks import to_device


@OPTIMIZERS.register("adamw")
def adamw(params, spec) -> torch.optim.Optimizer:
    """AdamW with decoupled weight decay."""
    return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)


@OPTIMIZERS.register("sgd")
def sgd(params, spec) -> torch.optim.Optimizer:
    """SGD with (Nesterov) momentum and L2 weight decay."""
    return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, nesterov=spec.momentum > 0, weight_decay=spec.weight_decay)


@LR_SCHEDULES.register("constant")
def constant(step: int, total: int, warmup: int) -> float:
    """Constant rate after a linear warm-up."""
    return min(1.0, (step + 1) / warmup) if warmup else 1.0


@LR_SCHEDULES.register("linear")
def linear(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then linear decay to zero (the usual transformer fine-tuning schedule)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    return max(0.0, 1.0 - (step - warmup) / max(1, total - warmup))


@LR_SCHEDULES.register("cosine")
def cosine(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@LR_SCHEDULES.register("onecycle")
def onecycle(step: int, total: int, warmup: int) -> float:
    """One cycle (Smith & Topin), as torch's OneCycleLR defaults: cosine rise from lr/25 over the
    warm-up (default 30 % of the steps), then cosine fall to lr/25/1e4 (momentum is not cycled)."""
    up = warmup or max(1, int(0.3 * total))
    start, end = 1.0 / 25.0, 1.0 / 25.0 / 1e4

    def anneal(a: float, b: float, pct: float) -> float:
        return b + (a - b) / 2.0 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, pct))))

    if step < up:
        return anneal(start, 1.0, step / max(1, up - 1))
    return anneal(1.0, end, (step - up + 1) / max(1, total - up))


def set_dropout(model: nn.Module, p: float | None) -> None:
    if p is None:
        return
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = p


class Trainer:
    """Trains `model` on `bundle.train`, validating on `bundle.val` after every epoch.

    `fit(epochs, events, on_event)` calls `on_event(sparsity)` at each (fraction, sparsity) event;
    when it returns True the parameters were replaced and the optimizer is rebuilt (the learning
    rate follows the global step, so the schedule is unaffected). The best epoch by the task's
    validation metric is tracked only once every event has happened, and restored at the end.

    `state_dict()` / `load_state_dict()` carry everything a resumed Trainer needs to continue
    exactly, inside a `fit` too (see checkpoint.py, which calls `state_dict` from its step hooks).
    """

    def __init__(self, model: nn.Module, task, bundle, spec, device: torch.device, seed: int,
                 desc: str = "train", log: Callable[[str], None] = print, method: Any = "full",
                 loss_fn: Callable[..., torch.Tensor] | None = None,
                 on_epoch: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.model, self.task, self.bundle, self.spec = model, task, bundle, spec
        self.on_epoch = on_epoch  # called with each history row (e.g. experiment tracking)
        # loss_fn(logits, y, x, idx) replaces the task loss (e.g. distillation); x is the augmented batch.
        self.loss_fn = loss_fn or (lambda logits, y, x, idx: task.loss(logits, y, spec.label_smoothing))
        self.device, self.desc, self.log = device, desc, log
        # A fine-tuning method (finetune.base.Method) or its registered name.
        self.method = FINETUNE_METHODS.get(method, "finetune.method")(spec) if isinstance(method, str) else method
        self.steps = 0
        self.gen = torch.Generator().manual_seed(seed)
        self.history: list[dict[str, Any]] = []
        self.best_epoch: int | None = None
        self.wall_s = 0.0
        self.global_step = 0
        # checkpoint.Checkpointer (after_step / after_epoch hooks); None outside the fine-tuning of
        # `prunetune run` / `refine`.
        self.checkpoint: Any = None
        self._position: Callable[[], dict[str, Any]] | None = None  # inside fit: where it is
        self._resume_from: dict[str, Any] | None = None  # the position the next fit continues from
        self.rebuild_optimizer()

    def state_dict(self) -> dict[str, Any]:
        """Counters, history, wall time, optimizer, the generator (shuffles, augmentation) and, when
        called inside `fit` (from a checkpoint hook), `fit`: the position in it (step, epoch, batches
        done, events done, best score and state, epochs without improvement, early stop, the
        generator's state at the epoch's start and the epoch's running loss); else `fit` is None.

        JSON-able values and tensors, the live ones (the optimizer's, the best state's): copy
        them before training goes on."""
        fit = self._position() if self._position is not None else None
        return {"global_step": self.global_step, "steps": self.steps, "best_epoch": self.best_epoch,
                "history": self.history, "wall_s": fit["wall_s"] if fit else self.wall_s,
                "optimizer": self.opt.state_dict(), "generator": self.gen.get_state(), "fit": fit}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state` (a `state_dict()`): the next `fit` resumes at its position. The model
        must already hold the weights, at the shapes, it had then (the optimizer is rebuilt over them)."""
        self.global_step, self.steps, self.best_epoch = int(state["global_step"]), int(state["steps"]), state["best_epoch"]
        self.history = list(state["history"])
        self.wall_s = float(state["wall_s"])
        self.rebuild_optimizer()
        self.opt.load_state_dict(state["optimizer"])
        fit = state.get("fit")
        self._resume_from = None if fit is None else {**fit, "gen": state["generator"]}
        self.gen.set_state(state["generator"])

    def rebuild_optimizer(self) -> None:
        """A fresh optimizer over the current parameters (after structural pruning replaced them)."""
        params = self.method.trainable(self.model)
        self.opt = OPTIMIZERS.get(self.spec.optimizer)(params, self.spec)

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def fit(self, epochs: int, events: list[tuple[float, float]] | None = None,
            on_event: Callable[[float], bool] | None = None) -> list[dict[str, Any]]:
        spec, model = self.spec, self.model
        set_dropout(model, spec.dropout)
        model.to(self.device)
        steps_per_epoch = math.ceil(len(self.bundle.train) / spec.batch_size)
        total = max(1, epochs * steps_per_epoch)
        warmup = int(spec.warmup_epochs * steps_per_epoch)
        lr_fn = LR_SCHEDULES.get(spec.lr_schedule)
        pending = sorted(((min(total - 1, int(round(f * total))), s) for f, s in (events or [])))
        n_events = len(pending)
        best_acc, best_state, bad_epochs = None, None, 0
        start = time.perf_counter()
        step, first, stopped = 0, 1, False
        resume, self._resume_from = self._resume_from, None
        if resume is not None:  # continue from a checkpoint (see load_state_dict)
            step, first, stopped = resume["step"], resume["epoch"], resume["stopped"]
            pending = pending[resume["events_done"]:]
            best_acc, best_state, bad_epochs = resume["best_acc"], resume["best_state"], resume["bad_epochs"]
        lr = spec.lr * lr_fn(max(0, step - 1), total, warmup)  # the last step's rate (a resumed epoch may have none left)

        def position(epoch: int, batches: int, **extra: Any) -> dict[str, Any]:
            return {"step": step, "epoch": epoch, "batches": batches, "events_done": n_events - len(pending),
                    "best_acc": best_acc, "best_state": best_state, "bad_epochs": bad_epochs, "stopped": False,
                    "wall_s": self.wall_s + time.perf_counter() - start, **extra}

        net = distributed.wrap(model)  # DDP across torchrun processes, else the model itself
        for epoch in range(first, epochs + 1 if not stopped else first):
            model.train()
            t0, loss_sum, seen, done = time.perf_counter(), 0.0, 0, 0
            epoch_rng = self.gen.get_state()
            it = indexed_batches(self.bundle.train, spec.batch_size, shuffle=True, generator=self.gen)
            if resume is not None and epoch == first and resume["batches"]:
                # Mid-epoch checkpoint: replay this epoch's shuffle, skip the batches already trained.
                epoch_rng, loss_sum, seen, done = resume["epoch_rng"], resume["loss_sum"], resume["seen"], resume["batches"]
                self.gen.set_state(epoch_rng)
                it = _skip(indexed_batches(self.bundle.train, spec.batch_size, shuffle=True, generator=self.gen),
                           done, self.gen, resume["gen"])
            bar = progress(it, steps_per_epoch - done, f"{self.desc} {epoch}/{epochs}")
            for x, y, idx in bar:
                while pending and pending[0][0] <= step:
                    _, s = pending.pop(0)
                    if on_event is not None and on_event(s):
                        self.rebuild_optimizer()
                        net = distributed.wrap(model)  # the parameters were replaced
                lr = spec.lr * lr_fn(step, total, warmup)
                for g in self.opt.param_groups:
                    g["lr"] = lr
                x = to_device(augment(x, spec.augment, self.gen), self.device)
                y = y.to(self.device)
                if distributed.active():  # this rank's slice of the global batch (augmented identically on every rank)
                    x, idx = distributed.shard(x, idx)
                    y = distributed.shard(y, y)[1]
                with self._autocast():
                    loss = self.loss_fn(self.task.forward(net, x), y, x, idx)
                if not torch.isfinite(loss):
                    saved = f"{self.checkpoint.last_good()}; " if self.checkpoint is not None else ""
                    raise RuntimeFault(
                        f"{self.desc}: non-finite loss at step {self.global_step + 1} (epoch {epoch}, lr {lr:.3g}); "
                        f"{saved}lower the learning rate or set grad_clip"
                    )
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                if spec.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
                self.opt.step()
                step += 1
                self.global_step += 1
                self.steps += 1
                loss_sum += loss.item() * len(y)
                seen += len(y)
                done += 1
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
                if self.checkpoint is not None:
                    self._position = lambda: position(epoch, done, epoch_rng=epoch_rng, loss_sum=loss_sum, seen=seen)
                    self.checkpoint.after_step(self)
            distributed.sync_buffers(model)
            val = self.task.evaluate(model, self.bundle.val, self.bundle.eval_batch_size, self.device, self.bundle.class_names)
            metric = self.task.metric
            row = {"epoch": epoch, "train_loss": loss_sum / max(1, seen), "val_loss": val["loss"],
                   f"val_{metric}": val[metric], "lr": lr, "epoch_s": round(time.perf_counter() - t0, 3)}
            self.history.append(row)
            self.log(f"{self.desc} epoch {epoch}/{epochs}: loss {row['train_loss']:.4f}  "
                     f"val_{metric} {val[metric]:.2f}  ({row['epoch_s']:.1f}s)")
            if self.on_epoch is not None:
                self.on_epoch(row)
            if not pending:  # while still pruning the model's shape may change: no best tracked yet
                score = self.task.score(val)  # higher is better, whatever the task's metric
                if best_acc is None or score > best_acc + (spec.early_stopping.min_delta if spec.early_stopping else 0.0):
                    best_acc, self.best_epoch, bad_epochs = score, epoch, 0
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    bad_epochs += 1
                    stopped = bool(spec.early_stopping and bad_epochs >= spec.early_stopping.patience)
            if self.checkpoint is not None:
                self._position = lambda: position(epoch + 1, 0, stopped=stopped)
                self.checkpoint.after_epoch(self)
            if stopped:
                self.log(f"{self.desc}: early stop after epoch {epoch} (best: epoch {self.best_epoch})")
                break
        # Events scheduled past the last step (e.g. epochs=0) still happen.
        for _, s in pending:
            if on_event is not None:
                on_event(s)
        self._position = None
        if best_state is not None:
            model.load_state_dict(best_state)
        self.wall_s += time.perf_counter() - start
        return self.history


def _skip(it, n: int, gen: torch.Generator, state: torch.Tensor):
    """Batches of a resumed epoch after the first `n`: the shuffle is drawn from the epoch's starting
    generator state, then the generator continues from the checkpointed `state` (augmentation)."""
    it = iter(it)
    for _ in range(n):
        next(it, None)
    gen.set_state(state)
    yield from it
