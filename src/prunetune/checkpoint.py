"""Checkpoint and resume of `prunetune run` and `prunetune refine` (their fine-tuning stage).

Where: `<out>.checkpoint/` beside the run folder `<out>` (which only appears, by rename, when the
run completes; the checkpoint folder is deleted then). What:

    checkpoint.json                 the commit record (JSON): recipe, position (phase, epoch, step,
                                    batches done in the epoch, pruning events done), history, best
                                    epoch, optimizer hyper-parameters, numpy / python RNG states,
                                    tensor shapes, sha256 of the state file, the dense model's info
    state-<step>-<id>.safetensors   tensors: the model as trained (mask buffers included), the best
                                    state so far, the optimizer state, the torch RNG states (global,
                                    CUDA, the Trainer's generator and its state at the epoch's start)
    dense/                          the dense model (model.safetensors + manifest.json), written once

Every file is written under a temporary name, flushed, fsynced and renamed into place, and
checkpoint.json is replaced last: a crash at any moment leaves the previous checkpoint whole.
Nothing is pickled and nothing is read with torch.load.

A checkpoint is written at each fine-tuning epoch end, every `finetune.checkpoint_every_steps`
steps when set, and at the first step boundary after Ctrl-C (then KeyboardInterrupt is raised).
Resuming rebuilds the run from the recipe (data, dense model from `dense/`, the "dense" and
"pruned" stages measured again), loads the state into the model at its checkpointed shapes,
restores every RNG and lets the Trainer continue at the same step: the result equals an
uninterrupted run's (on CPU; see `kernel_settings` for CUDA).

`refine` (command "refine" in checkpoint.json) uses the same files without dense/: its starting point
is the source model folder, recorded (path and sha256) in `run_args` with the merged recipe; see
`refine.resume_refine`.

Example:
    >>> from pathlib import Path
    >>> checkpoint_dir(Path("runs/c75")).as_posix()
    'runs/c75.checkpoint'
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from . import __version__
from .errors import Interrupted, PrunetuneError
from .files import atomic_write, fsync_dir
from .finetune.options import DROP_FOREIGN

FORMAT = "prunetune-checkpoint/1"
RECORD = "checkpoint.json"
DENSE = "dense"
# Schedules whose controller keeps state outside the Trainer (model copies to roll back to) are not checkpointed.
UNSUPPORTED_SCHEDULES = ("adaptive",)


def checkpoint_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.parent / f"{out.name}.checkpoint"


def kernel_settings(device: torch.device | str) -> bool | dict[str, Any]:
    """report.json's `nondeterministic_kernels`: False on CPU (same recipe + seed -> same result);
    on CUDA the settings the run used (cuDNN / cuBLAS kernels may then vary run to run)."""
    if torch.device(device).type != "cuda":
        return False
    det = torch.are_deterministic_algorithms_enabled()
    return {"possible": not det,
            "torch.backends.cudnn.deterministic": bool(torch.backends.cudnn.deterministic),
            "torch.backends.cudnn.benchmark": bool(torch.backends.cudnn.benchmark),
            "torch.are_deterministic_algorithms_enabled": det}


def _storage_key(t: torch.Tensor) -> tuple:
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)


def _dedupe(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each shared tensor once (safetensors refuses aliases); `_expand` puts the aliases back."""
    seen: set[tuple] = set()
    out = {}
    for k, v in state.items():
        key = _storage_key(v)
        if key not in seen:
            seen.add(key)
            out[k] = v
    return out


def _expand(saved: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    full = model.state_dict()
    first: dict[tuple, str] = {}
    for k, v in full.items():
        first.setdefault(_storage_key(v), k)
    return {k: saved[k] if k in saved else saved[first[_storage_key(v)]] for k, v in full.items()}


def _tp_state(pruner) -> dict[str, Any] | None:
    """What Torch-Pruning's iterative pruner keeps between steps (structured pruning during fine-tuning)."""
    tp = getattr(pruner, "_tp", None)
    if tp is None:
        return None
    names = tp.DG._module2name
    return {"current_step": int(tp.current_step),
            # Channels per ranking scope when first pruned: later steps' counts are relative to these.
            "scope_initial_channels": {str(k): int(v) for k, v in tp._scope_initial_channels.items()},
            "num_heads": {names[m]: int(n) for m, n in tp.num_heads.items() if m in names},
            "out_channel_groups": {names[m]: int(n) for m, n in tp.out_channel_groups.items() if m in names}}


def _set_tp_state(pruner, state: dict[str, Any] | None) -> None:
    tp = getattr(pruner, "_tp", None)
    if tp is None or state is None:
        return
    modules = {n: m for m, n in tp.DG._module2name.items()}
    tp.current_step = state["current_step"]
    tp._scope_initial_channels = dict(state["scope_initial_channels"])
    for key in ("num_heads", "out_channel_groups"):
        table = getattr(tp, key)
        for name, n in state[key].items():
            table[modules[name]] = n


def _ours(name: str) -> bool:
    """A name a checkpoint folder holds: the record, state files, the dense copy, temporary files."""
    return (name in (RECORD, DENSE) or name.startswith(f".{DENSE}.tmp-")
            or (name.startswith("state-") and name.endswith(".safetensors")) or (name.startswith(".") and name.endswith(".tmp")))


def refuse_stale(out: str | Path, command: str = "run") -> None:
    """The command line refuses to start a fresh run (or refine) over an interrupted one's checkpoint."""
    d = checkpoint_dir(out)
    if (d / RECORD).exists():
        where = f"--out {out}" if command == "run" else f"{command} {out}"  # refine's default out is not given
        raise PrunetuneError(f"{where}: an interrupted {command} left a checkpoint in {d}; continue it with "
                             f"prunetune {command} --resume {out}, or delete that folder to start over")


class Checkpointer:
    """Writes the checkpoints of one run; installed as `Trainer.checkpoint` during fine-tuning."""

    def __init__(self, out: Path, recipe, log: Callable[[str], None], resume: "Resume | None" = None,
                 enabled: bool = True, run_args: dict[str, Any] | None = None, command: str = "run") -> None:
        self.out, self.dir, self.log, self.command = Path(out), checkpoint_dir(out), log, command
        self.recipe_json = recipe.model_dump(mode="json")
        self.every = recipe.finetune.checkpoint_every_steps
        # refine trains the saved model without a pruning schedule: the recipe's schedule does not matter.
        self.enabled = enabled and (command != "run" or recipe.prune.schedule.kind not in UNSUPPORTED_SCHEDULES)
        self.run_args = run_args or {}
        self.trainer = self.controller = self.pruner = self.dense = None
        self.stop_requested = self.is_armed = False
        self.writes, self.write_s, self.setup_s, self.blocking_s, self.state_bytes = 0, 0.0, 0.0, 0.0, 0
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.resumes: list[dict[str, Any]] = []
        self.last: dict[str, Any] | None = None
        if resume is not None:
            stats = resume.record.get("stats", {})
            self.writes, self.write_s = int(stats.get("writes", 0)), float(stats.get("write_s", 0.0))
            self.setup_s = float(stats.get("setup_s", 0.0))
            self.blocking_s = float(stats.get("blocking_s", 0.0))
            self.state_bytes = int(resume.record.get("state_bytes", 0))
            self.resumes = list(stats.get("resumes", [])) + [resume.summary()]
            fit = resume.record["fit"]
            self.last = {"global_step": resume.record["global_step"], "epoch": fit["epoch"] - (0 if fit["batches"] else 1)}
        elif self.enabled and (self.dir.exists() or self.dir.is_symlink()):
            # A run interrupted before its first checkpoint, or one the caller chose to start over;
            # never a folder (or a link) prunetune did not write.
            foreign = self.dir.is_symlink() or not self.dir.is_dir() or [
                f.name for f in self.dir.iterdir() if not _ours(f.name)]
            if foreign:
                raise PrunetuneError(f"--out {self.out}: {self.dir} exists and is not a prunetune checkpoint folder "
                                     f"({'a link or a file' if foreign is True else repr(foreign[0])}); move it away "
                                     "or choose another --out")
            self.log(f"checkpoint: removing {self.dir} left by an earlier run with this output folder")
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- wiring -------------------------------------------------------------------------------
    def attach(self, trainer, controller, pruner, dense: nn.Module | None, model_info: dict[str, Any],
               dense_info: dict[str, Any]) -> None:
        """`controller`, `pruner` and `dense` are None for refine (no pruning; its start is the source folder)."""
        if not self.enabled:
            return
        self.trainer, self.controller, self.pruner = trainer, controller, pruner
        self.dense, self.model_info, self.dense_info = dense, model_info, dense_info
        trainer.checkpoint = self

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Around the whole run: Ctrl-C is deferred to the next step boundary while armed; a
        KeyboardInterrupt leaving a checkpoint becomes `Interrupted(out)`; success removes the folder."""
        previous = None
        if self.enabled and threading.current_thread() is threading.main_thread():
            current = signal.getsignal(signal.SIGINT)
            if current is not signal.SIG_IGN:
                previous = current
                signal.signal(signal.SIGINT, self._on_sigint)
        try:
            yield
        except KeyboardInterrupt:
            with contextlib.suppress(Exception):
                self.wait()
            if self.enabled and (self.dir / RECORD).exists():
                raise Interrupted(self.out, self.command) from None
            raise
        except BaseException:
            with contextlib.suppress(Exception):
                self.wait()  # the last good checkpoint stays, complete
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        self.wait()
        self.remove()

    @contextlib.contextmanager
    def armed(self) -> Iterator[None]:
        """Around fine-tuning: the first Ctrl-C asks for a checkpoint at the next step boundary."""
        self.is_armed = True
        try:
            yield
        finally:
            self.is_armed = False
        if self.stop_requested:  # Ctrl-C after the last step: the last checkpoint is current
            raise KeyboardInterrupt

    def _on_sigint(self, signum, frame) -> None:
        if self.is_armed and not self.stop_requested and self.trainer is not None:
            self.stop_requested = True  # a second Ctrl-C stops at once
            return
        raise KeyboardInterrupt

    # -- Trainer hooks ------------------------------------------------------------------------
    def after_step(self, trainer, position: Callable[[], dict[str, Any]]) -> None:
        if (self.every and trainer.global_step % self.every == 0) or self.stop_requested:
            self.save(trainer, position())
        if self.stop_requested:
            self.wait()
            raise KeyboardInterrupt

    def after_epoch(self, trainer, position: Callable[[], dict[str, Any]]) -> None:
        self.save(trainer, position())
        if self.stop_requested:
            self.wait()
            raise KeyboardInterrupt

    def last_good(self) -> str:
        with contextlib.suppress(Exception):
            self.wait()
        if self.last is None:
            return "no checkpoint was written yet"
        return f"last good checkpoint: {self.dir} (step {self.last['global_step']}, epoch {self.last['epoch']})"

    # -- writing ------------------------------------------------------------------------------
    def _write_dense(self) -> None:
        from .artifacts import save_model

        t0 = time.perf_counter()
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob(f".{DENSE}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        folder = save_model(self.dense, self.dir / DENSE, {**self.model_info, "dense": self.dense_info})
        for f in folder.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(folder)
        fsync_dir(self.dir)
        self.setup_s += time.perf_counter() - t0

    def save(self, trainer, pos: dict[str, Any]) -> None:
        """Snapshot the state now (training waits only for this copy), write it in the background.

        One write at a time: a new snapshot first waits for the previous write to be committed."""
        t0 = time.perf_counter()
        self.wait()
        state = _dedupe(trainer.model.state_dict())
        if not all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point()):
            self.log(f"checkpoint: not written at step {trainer.global_step}: the weights are not finite "
                     f"({self.last_good()})")
            return
        if not self.dir.is_dir():  # refine's first checkpoint (a run's is made with dense/)
            self.dir.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.dir.parent)
        if self.dense is not None and not (self.dir / DENSE / "manifest.json").exists():
            self._write_dense()
            t0 = time.perf_counter()

        def copy(v: torch.Tensor) -> torch.Tensor:  # training goes on changing these in place
            return v.detach().to("cpu", copy=True).contiguous()

        tensors: dict[str, torch.Tensor] = {f"model/{k}": copy(v) for k, v in state.items()}
        best, best_kind = pos.get("best_state"), None
        if best is not None:
            # At an improving epoch's end the best state is the model itself: not stored twice.
            if all(k in best and best[k].shape == v.shape and torch.equal(best[k], v) for k, v in state.items()):
                best_kind = "model"
            else:  # a deep copy the Trainer never changes: no copy needed
                best_kind = "stored"
                tensors.update({f"best/{k}": v.detach().cpu().contiguous() for k, v in _dedupe(best).items()})
        opt = trainer.opt.state_dict()
        opt_json: dict[str, Any] = {"param_groups": opt["param_groups"], "state": {}}
        for i, st in opt["state"].items():
            for name, v in st.items():
                if torch.is_tensor(v):
                    tensors[f"optim/{i}/{name}"] = copy(v)
                else:
                    opt_json["state"].setdefault(str(i), {})[name] = v
        tensors["rng/torch"] = torch.get_rng_state()
        tensors["rng/gen"] = trainer.gen.get_state()
        if pos.get("epoch_rng") is not None:
            tensors["rng/gen_epoch"] = pos["epoch_rng"].clone()
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        if cuda:
            for i, st in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng/cuda/{i}"] = st
        np_state = np.random.get_state()
        py_state = random.getstate()
        ctrl = getattr(self.controller, "position", None) or {"phase": 0, "phase_start": 0, "history": []}
        fit = {k: v for k, v in pos.items() if k not in ("best_state", "epoch_rng")}
        name = f"state-{trainer.global_step:08d}-{uuid.uuid4().hex[:8]}.safetensors"
        record = {
            "format": FORMAT, "command": self.command, "prunetune_version": __version__, "torch_version": torch.__version__,
            "out": str(self.out), "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "recipe": self.recipe_json, "run_args": self.run_args,
            "state_file": name, "state_sha256": None, "state_bytes": None,
            "global_step": trainer.global_step,
            "fit": {**fit, "best": best_kind},
            "trainer": {"steps": trainer.steps, "best_epoch": trainer.best_epoch, "history": trainer.history},
            "controller": {"phase": ctrl["phase"], "phase_start": ctrl["phase_start"], "history": ctrl["history"],
                           "pruner_steps": getattr(self.pruner, "steps_done", 0), "torch_pruning": _tp_state(self.pruner)},
            "shapes": {k: list(v.shape) for k, v in state.items()},
            "optimizer": opt_json,
            "rng": {"numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
                    "python": [py_state[0], list(py_state[1]), py_state[2]],
                    "cuda_devices": torch.cuda.device_count() if cuda else 0},
            "dense": {"folder": DENSE, "info": self.dense_info, "training": self.dense.training} if self.dense is not None else None,
            "stats": {"resumes": self.resumes},
        }
        body = json.dumps(record)  # now: the history and positions go on changing
        done = {"global_step": trainer.global_step, "epoch": pos["epoch"] - (1 if pos["batches"] == 0 else 0)}
        self._thread = threading.Thread(target=self._write, args=(tensors, body, name, done), daemon=True,
                                        name="prunetune-checkpoint")
        self._thread.start()
        self.blocking_s += time.perf_counter() - t0

    def _write(self, tensors: dict[str, torch.Tensor], body: str, name: str, done: dict[str, Any]) -> None:
        import safetensors.torch

        try:
            t0 = time.perf_counter()
            data = safetensors.torch.save(tensors)
            atomic_write(self.dir / name, data)
            record = json.loads(body)
            record.update(state_sha256=hashlib.sha256(data).hexdigest(), state_bytes=len(data))
            record["stats"].update(writes=self.writes + 1, write_s=round(self.write_s + time.perf_counter() - t0, 4),
                                   blocking_s=round(self.blocking_s, 4), setup_s=round(self.setup_s, 4))
            atomic_write(self.dir / RECORD, json.dumps(record).encode())  # the commit point
            self.last = done
            for old in self.dir.glob("state-*.safetensors"):
                if old.name != name:
                    old.unlink(missing_ok=True)
            for tmp in self.dir.glob(".*.tmp"):  # left by a process killed mid-write
                tmp.unlink(missing_ok=True)
            self.writes += 1
            self.state_bytes = len(data)
            self.write_s += time.perf_counter() - t0
        except BaseException as e:  # handed to the main thread by `wait`
            self._error = e

    def wait(self) -> None:
        """Until the checkpoint being written is committed; its write error, if any, is raised here."""
        t, self._thread = self._thread, None
        if t is not None:
            t.join()
        e, self._error = self._error, None
        if e is not None:
            raise e

    def remove(self) -> None:
        if self.enabled:
            shutil.rmtree(self.dir, ignore_errors=True)

    def summary(self) -> dict[str, Any]:
        """report.json's `checkpoint` section (timings cover every process of a resumed run)."""
        if not self.enabled:
            return {"enabled": False}
        self.wait()
        n = max(1, self.writes)
        return {"enabled": True, "every_steps": self.every, "writes": self.writes,
                # Training waits only for the snapshot; serialising, hashing and fsync run in a background thread.
                "blocking_s": round(self.blocking_s, 4), "mean_blocking_s": round(self.blocking_s / n, 4),
                "write_s": round(self.write_s, 4), "mean_write_s": round(self.write_s / n, 4),
                "state_bytes": self.state_bytes, "dense_copy_s": round(self.setup_s, 4), "resumes": self.resumes}


class Resume:
    """A validated checkpoint of an interrupted run (or refine), ready to be continued by `pipeline.run`
    (or `refine.resume_refine`)."""

    REQUIRED = ("recipe", "state_file", "state_sha256", "global_step", "fit", "trainer", "controller", "shapes",
                "optimizer", "rng", "dense")

    def __init__(self, out: Path, record: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        from .recipe import Recipe

        self.out, self.dir, self.record, self.tensors = out, checkpoint_dir(out), record, tensors
        self.command = record.get("command", "run")
        try:
            self.recipe = Recipe.model_validate(record["recipe"], context={DROP_FOREIGN: True})
        except Exception as e:  # pydantic's ValidationError, or a registry name this install lacks
            raise self.corrupt(f"its recipe does not validate: {str(e).splitlines()[0][:120]}") from None

    def corrupt(self, why: str) -> PrunetuneError:
        again = "the refine" if self.command == "refine" else "the recipe"
        return PrunetuneError(f"--resume {self.out}: the checkpoint in {self.dir} is corrupt ({why}); "
                              f"delete that folder and run {again} again")

    @classmethod
    def load(cls, out_dir: str | Path, command: str = "run") -> "Resume":
        """The checkpoint of the interrupted `prunetune <command>` whose output folder was `out_dir`."""
        import safetensors.torch
        from safetensors import SafetensorError

        out = Path(out_dir)
        d = checkpoint_dir(out)
        again = "the refine" if command == "refine" else "the recipe"
        if out.exists():
            raise PrunetuneError(f"--resume {out}: that {command} already completed (its folder exists); nothing to resume")
        path = d / RECORD
        if not path.exists():
            raise PrunetuneError(f"--resume {out}: no checkpoint ({path} not found): the {command} stopped before its "
                                 f"first fine-tuning epoch ended, or never started; run {again} again")

        def corrupt(why: str) -> PrunetuneError:
            return PrunetuneError(f"--resume {out}: the checkpoint in {d} is corrupt ({why}); "
                                  f"delete that folder and run {again} again")

        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise corrupt(f"{RECORD} unreadable: {e.__class__.__name__}") from None
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise corrupt(f"{RECORD} is not a {FORMAT} record")
        written_by = record.get("command", "run")
        if written_by != command:
            if written_by not in ("run", "refine"):
                raise corrupt(f"{RECORD}: command {str(written_by)[:20]!r} is neither run nor refine")
            raise PrunetuneError(f"--resume {out}: that checkpoint was written by prunetune {written_by}; "
                                 f"continue it with prunetune {written_by} --resume {out}")
        missing = [k for k in cls.REQUIRED if k not in record]
        if missing:
            raise corrupt(f"{RECORD} lacks {', '.join(missing)}")
        name = record["state_file"]
        if not isinstance(name, str) or "\0" in name or Path(name).name != name or not name.startswith("state-") \
                or not name.endswith(".safetensors"):  # a plain file name in the checkpoint folder, as written
            raise corrupt(f"{RECORD}: state_file {str(name)[:60]!r} is not a state-*.safetensors file of this folder")
        state = d / name
        try:
            data = state.read_bytes()
        except OSError:
            raise corrupt(f"{state.name} missing or unreadable") from None
        if hashlib.sha256(data).hexdigest() != record["state_sha256"]:
            raise corrupt(f"{state.name} does not match its checksum")
        try:
            tensors = safetensors.torch.load(data)
        except (SafetensorError, ValueError, RuntimeError) as e:
            raise corrupt(f"{state.name}: {str(e)[:80]}") from None
        if command == "run" and not (d / DENSE / "manifest.json").exists():
            raise corrupt(f"{DENSE}/ missing")
        return cls(out, record, tensors)

    def summary(self) -> dict[str, Any]:
        """Where the run continues: `epoch` (1-based, of the phase) after `batches` of its batches."""
        fit = self.record["fit"]
        return {"global_step": self.record["global_step"], "phase": self.record["controller"]["phase"] + 1,
                "epoch": fit["epoch"], "batches": fit["batches"], "checkpoint_written": self.record.get("written")}

    def versions_differ(self) -> str | None:
        was = (self.record.get("prunetune_version"), self.record.get("torch_version"))
        if was != (__version__, torch.__version__):
            return (f"checkpoint written by prunetune {was[0]} / torch {was[1]}, resumed with {__version__} / "
                    f"{torch.__version__}: the result may differ from an uninterrupted run")
        return None

    def dense(self, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
        """The run's dense model, as it was (train/eval mode included: tracing for structured pruning
        runs a forward pass, which updates BatchNorm statistics in train mode)."""
        from .artifacts import load_model

        try:
            model, _ = load_model(self.dir / DENSE, trust_code=self.recipe.model.trust_code)
        except PrunetuneError as e:
            raise self.corrupt(f"{DENSE}/: {e}") from None
        model.train(bool(self.record["dense"].get("training", False)))
        return model.to(device), self.record["dense"]["info"]

    def restore(self, trainer, controller, pruner) -> None:
        """Put the checkpointed state into the freshly rebuilt run; call just before `controller.finetune`
        (refine: just before `trainer.fit`, with no controller and no pruner)."""
        from .artifacts import _load_state, resize_to

        rec, tensors = self.record, self.tensors
        model = trainer.model
        try:
            if pruner is not None:
                pruner.steps_done = int(rec["controller"]["pruner_steps"])
                _set_tp_state(pruner, rec["controller"].get("torch_pruning"))
            resize_to(model, rec["shapes"])
            _load_state(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}, self.dir)
            trainer.rebuild_optimizer()
            opt_state: dict[int, dict[str, Any]] = {}
            for k, v in tensors.items():
                if k.startswith("optim/"):
                    _, i, name = k.split("/", 2)
                    opt_state.setdefault(int(i), {})[name] = v
            for i, extra in rec["optimizer"]["state"].items():
                opt_state.setdefault(int(i), {}).update(extra)
            trainer.opt.load_state_dict({"state": opt_state, "param_groups": rec["optimizer"]["param_groups"]})
            fit = dict(rec["fit"])
            kind = fit.pop("best")
            prefix = "model/" if kind == "model" else "best/"
            best = {k[len(prefix):]: v.clone() for k, v in tensors.items() if k.startswith(prefix)}
            fit["best_state"] = _expand(best, model) if kind else None
            fit["gen"] = tensors["rng/gen"]
            fit["epoch_rng"] = tensors.get("rng/gen_epoch")
        except (PrunetuneError, KeyError, ValueError, RuntimeError) as e:
            raise self.corrupt(f"state does not fit the rebuilt run: {str(e).splitlines()[0][:120]}") from None
        t = rec["trainer"]
        trainer.global_step, trainer.steps, trainer.best_epoch = rec["global_step"], t["steps"], t["best_epoch"]
        trainer.history = list(t["history"])
        trainer.wall_s = float(fit["wall_s"])
        trainer.resume_from = fit
        if controller is not None:
            controller.resume_from = rec["controller"]
        # RNG states last: nothing may draw from them between here and the next training step.
        trainer.gen.set_state(tensors["rng/gen"])
        torch.set_rng_state(tensors["rng/torch"])
        cuda = [tensors[f"rng/cuda/{i}"] for i in range(int(rec["rng"].get("cuda_devices", 0)))]
        if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
            torch.cuda.set_rng_state_all(cuda)
        n = rec["rng"]["numpy"]
        np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
        p = rec["rng"]["python"]
        random.setstate((p[0], tuple(p[1]), p[2]))


def resume_run(out_dir: str | Path, log: Callable[[str], None] = print, *, track: Any = None,
               track_uri: str | None = None) -> dict[str, Any]:
    """Continue the interrupted run whose output folder was `out_dir` from its last checkpoint."""
    from .pipeline import run

    res = Resume.load(out_dir)
    warn = res.versions_differ()
    if warn:
        log(f"resume: {warn}")
    s = res.summary()
    log(f"resume: {res.out} from {res.dir}: phase {s['phase']}, epoch {s['epoch']} after {s['batches']} batches "
        f"(step {s['global_step']})")
    args = {k: v for k, v in res.record.get("run_args", {}).items() if k in ("score_on", "save")}
    return run(res.recipe, res.out, log, track=track, track_uri=track_uri, resume=res, **args)


# Report fields that are measurements of time or of the machine, not results of the run.
TIMING_KEYS = frozenset({"epoch_s", "wall_s", "s_per_step", "latency_ms", "peak_memory_bytes", "train_peak_memory_bytes",
                         "threads", "teacher_s", "speedup_batch_1", "speedup_batch_N", "process_peak_rss_bytes"})


def _diff(a: Any, b: Any, where: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k in TIMING_KEYS:
                continue
            if k not in a or k not in b:
                out.append(f"{where}{k}: only in {'the first' if k in a else 'the second'}")
            else:
                _diff(a[k], b[k], f"{where}{k}.", out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{where}{i}.", out)
    elif a != b:
        out.append(f"{where.rstrip('.')}: {a!r} != {b!r}")


def compare_runs(a: str | Path, b: str | Path, atol: float = 1e-6) -> list[str]:
    """Differences between two run folders' results: report.json without timings and bookkeeping
    (the checkpoint section, how the dense model was obtained), masks exactly, weights within `atol`.

    An empty list means the runs ended identically (e.g. a resumed run and an uninterrupted one)."""
    from safetensors.torch import load_file

    a, b = Path(a), Path(b)
    ra, rb = (json.loads((p / "report.json").read_text()) for p in (a, b))
    for r in (ra, rb):
        r.pop("checkpoint", None)
        for key in ("source", "cache"):
            (r.get("dense") or {}).pop(key, None)
    out: list[str] = []
    _diff(ra, rb, "", out)
    for name in ("model.safetensors", "masks.safetensors"):
        pa, pb = a / "model" / name, b / "model" / name
        if pa.exists() != pb.exists():
            out.append(f"model/{name}: only in one run")
            continue
        if not pa.exists():
            continue
        ta, tb = load_file(str(pa)), load_file(str(pb))
        if ta.keys() != tb.keys():
            out.append(f"model/{name}: different tensors")
            continue
        for k in ta:
            if ta[k].shape != tb[k].shape:
                out.append(f"model/{name}:{k}: shape {list(ta[k].shape)} != {list(tb[k].shape)}")
            elif ta[k].dtype == torch.bool or name == "masks.safetensors":
                if not torch.equal(ta[k], tb[k]):
                    out.append(f"model/{name}:{k}: masks differ")
            else:
                d = float((ta[k].double() - tb[k].double()).abs().max()) if ta[k].numel() else 0.0
                if not d <= atol:
                    out.append(f"model/{name}:{k}: max abs difference {d:.3g} > {atol}")
    return out
