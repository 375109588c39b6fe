"""Writing the checkpoints of a run (or refine) while it fine-tunes: when, in the background, and what
Ctrl-C does. The file format is checkpoint.py's.

Every file is written under a temporary name, flushed, fsynced and renamed into place, and
checkpoint.json is replaced last: a crash at any moment leaves the previous checkpoint whole.
A checkpoint is written at each fine-tuning epoch end, every `finetune.checkpoint_every_steps`
steps when set, and at the first step boundary after Ctrl-C (then KeyboardInterrupt is raised).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import safetensors.torch
import torch
from torch import nn

from . import __version__
from .artifacts import save_model, unique_tensors
from .checkpoint import DENSE, FORMAT, RECORD, Resume, checkpoint_dir, pack
from .errors import Interrupted, PrunetuneError
from .files import atomic_write, fsync_dir

# Schedules whose controller keeps state outside the Trainer (model copies to roll back to) are not checkpointed.
UNSUPPORTED_SCHEDULES = ("adaptive",)


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

    def __init__(self, out: Path, recipe, log: Callable[[str], None], resume: Resume | None = None,
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
    def after_step(self, trainer) -> None:
        if (self.every and trainer.global_step % self.every == 0) or self.stop_requested:
            self.save(trainer)
        if self.stop_requested:
            self.wait()
            raise KeyboardInterrupt

    def after_epoch(self, trainer) -> None:
        self.save(trainer)
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

    def save(self, trainer) -> None:
        """Snapshot the state now (training waits only for this copy), write it in the background.

        One write at a time: a new snapshot first waits for the previous write to be committed."""
        t0 = time.perf_counter()
        self.wait()
        state = unique_tensors(trainer.model.state_dict())
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

        fields, tensors = pack(state, trainer, self.controller, self.pruner)
        name = f"state-{fields['global_step']:08d}-{uuid.uuid4().hex[:8]}.safetensors"
        record = {
            "format": FORMAT, "command": self.command, "prunetune_version": __version__, "torch_version": torch.__version__,
            "out": str(self.out), "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "recipe": self.recipe_json, "run_args": self.run_args,
            "state_file": name, "state_sha256": None, "state_bytes": None,
            **fields,
            "dense": {"folder": DENSE, "info": self.dense_info, "training": self.dense.training} if self.dense is not None else None,
            "stats": {"resumes": self.resumes},
        }
        body = json.dumps(record)  # now: the history and positions go on changing
        fit = fields["fit"]
        done = {"global_step": fields["global_step"], "epoch": fit["epoch"] - (1 if fit["batches"] == 0 else 0)}
        self._thread = threading.Thread(target=self._write, args=(tensors, body, name, done), daemon=True,
                                        name="prunetune-checkpoint")
        self._thread.start()
        self.blocking_s += time.perf_counter() - t0

    def _write(self, tensors: dict[str, torch.Tensor], body: str, name: str, done: dict[str, Any]) -> None:
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
