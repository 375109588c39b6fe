"""Checkpoint and resume of `prunetune run` and `prunetune refine` (their fine-tuning stage): the file
format. What goes in it comes from the objects' own `state_dict()` (Trainer, PruningController,
Pruner) and goes back through their `load_state_dict()`.

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

Nothing is pickled and nothing is read with torch.load. The writing (when, in the background,
atomically, Ctrl-C) is checkpointer.py's; `pack` and `Resume.restore` are the two directions.
A checkpoint written by an earlier prunetune (same FORMAT) is read the same way.

Resuming (`pipeline.resume_run`) rebuilds the run from the recipe (data, dense model from `dense/`,
the "dense" and "pruned" stages measured again), loads the state into the model at its checkpointed
shapes, restores every RNG and lets the Trainer continue at the same step: the result equals an
uninterrupted run's (on CPU; see `session.kernel_settings` for CUDA).

`refine` (command "refine" in checkpoint.json) uses the same files without dense/: its starting point
is the source model folder, recorded (path and sha256) in `run_args` with the merged recipe; see
`refine.resume_refine`.

Example:
    >>> from pathlib import Path
    >>> checkpoint_dir(Path("runs/c75")).as_posix()
    'runs/c75.checkpoint'
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from torch import nn

from . import __version__
from .artifacts import load_model, load_state, resize_to, unique_tensors, with_aliases
from .errors import PrunetuneError
from .recipe import Recipe, validation_error
from .finetune.options import DROP_FOREIGN

FORMAT = "prunetune-checkpoint/1"
RECORD = "checkpoint.json"
DENSE = "dense"


def checkpoint_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.parent / f"{out.name}.checkpoint"


def pack(state: dict[str, torch.Tensor], trainer, controller, pruner) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The record's state fields and the state file's tensors, from the objects' `state_dict()` and the
    process's RNGs, now; `state` is the model's `unique_tensors`. Tensors training goes on changing
    are copied; the record must be serialised before training goes on (the history grows).

    `controller` and `pruner` are None for refine: its record holds theirs before any step."""

    def copy(v: torch.Tensor) -> torch.Tensor:
        return v.detach().to("cpu", copy=True).contiguous()

    tensors: dict[str, torch.Tensor] = {f"model/{k}": copy(v) for k, v in state.items()}
    ts = trainer.state_dict()
    fit = dict(ts["fit"])
    best, epoch_rng, best_kind = fit.pop("best_state"), fit.pop("epoch_rng", None), None
    if best is not None:
        # At an improving epoch's end the best state is the model itself: not stored twice.
        if all(k in best and best[k].shape == v.shape and torch.equal(best[k], v) for k, v in state.items()):
            best_kind = "model"
        else:  # a deep copy the Trainer never changes: no copy needed
            best_kind = "stored"
            tensors.update({f"best/{k}": v.detach().cpu().contiguous() for k, v in unique_tensors(best).items()})
    opt = ts["optimizer"]
    opt_json: dict[str, Any] = {"param_groups": opt["param_groups"], "state": {}}
    for i, st in opt["state"].items():
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim/{i}/{name}"] = copy(v)
            else:
                opt_json["state"].setdefault(str(i), {})[name] = v
    tensors["rng/torch"] = torch.get_rng_state()
    tensors["rng/gen"] = ts["generator"]
    if epoch_rng is not None:
        tensors["rng/gen_epoch"] = epoch_rng.clone()
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    if cuda:
        for i, st in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = st
    np_state = np.random.get_state()
    py_state = random.getstate()
    ctrl = controller.state_dict() if controller is not None else {"phase": 0, "phase_start": 0, "history": []}
    pr = pruner.state_dict() if pruner is not None else {"steps_done": 0}
    fields = {
        "global_step": ts["global_step"],
        "fit": {**fit, "best": best_kind},
        "trainer": {"steps": ts["steps"], "best_epoch": ts["best_epoch"], "history": ts["history"]},
        "controller": {"phase": ctrl["phase"], "phase_start": ctrl["phase_start"], "history": ctrl["history"],
                       "pruner_steps": pr["steps_done"], "pruner_grown": pr.get("grown", 0),
                       "torch_pruning": pr.get("torch_pruning")},
        "shapes": {k: list(v.shape) for k, v in state.items()},
        "optimizer": opt_json,
        "rng": {"numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
                "python": [py_state[0], list(py_state[1]), py_state[2]],
                "cuda_devices": torch.cuda.device_count() if cuda else 0},
    }
    return fields, tensors


class Resume:
    """A validated checkpoint of an interrupted run (or refine), ready to be continued by `pipeline.run`
    (or `refine.resume_refine`)."""

    REQUIRED = ("recipe", "state_file", "state_sha256", "global_step", "fit", "trainer", "controller", "shapes",
                "optimizer", "rng", "dense")

    def __init__(self, out: Path, record: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self.out, self.dir, self.record, self.tensors = out, checkpoint_dir(out), record, tensors
        self.command = record.get("command", "run")
        try:
            self.recipe = Recipe.model_validate(record["recipe"], context={DROP_FOREIGN: True})
        except ValidationError as e:  # e.g. a registry name this install lacks
            raise self.corrupt(f"its recipe does not validate: {str(validation_error(e, 'recipe'))[:120]}") from None

    def corrupt(self, why: str) -> PrunetuneError:
        again = "the refine" if self.command == "refine" else "the recipe"
        return PrunetuneError(f"--resume {self.out}: the checkpoint in {self.dir} is corrupt ({why}); "
                              f"delete that folder and run {again} again")

    @classmethod
    def load(cls, out_dir: str | Path, command: str = "run") -> "Resume":
        """The checkpoint of the interrupted `prunetune <command>` whose output folder was `out_dir`."""
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
        try:
            model, _ = load_model(self.dir / DENSE, trust_code=self.recipe.model.trust_code, keep_masks=True)
        except PrunetuneError as e:
            raise self.corrupt(f"{DENSE}/: {e}") from None
        model.train(bool(self.record["dense"].get("training", False)))
        return model.to(device), self.record["dense"]["info"]

    def restore(self, trainer, controller, pruner) -> None:
        """Put the checkpointed state into the freshly rebuilt run; call just before `controller.finetune`
        (refine: just before `trainer.fit`, with no controller and no pruner)."""
        rec, tensors = self.record, self.tensors
        model = trainer.model
        try:
            if pruner is not None:  # before the shapes change: Torch-Pruning's tables name the modules
                pruner.load_state_dict({"steps_done": rec["controller"]["pruner_steps"],
                                        "grown": rec["controller"].get("pruner_grown", 0),
                                        "torch_pruning": rec["controller"].get("torch_pruning")})
            resize_to(model, rec["shapes"])
            load_state(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}, self.dir)
            opt_state: dict[int, dict[str, Any]] = {}
            for k, v in tensors.items():
                if k.startswith("optim/"):
                    _, i, name = k.split("/", 2)
                    opt_state.setdefault(int(i), {})[name] = v
            for i, extra in rec["optimizer"]["state"].items():
                opt_state.setdefault(int(i), {}).update(extra)
            fit = dict(rec["fit"])
            kind = fit.pop("best")
            prefix = "model/" if kind == "model" else "best/"
            best = {k[len(prefix):]: v.clone() for k, v in tensors.items() if k.startswith(prefix)}
            fit["best_state"] = with_aliases(best, model) if kind else None
            fit["epoch_rng"] = tensors.get("rng/gen_epoch")
            t = rec["trainer"]
            trainer.load_state_dict({
                "global_step": rec["global_step"], "steps": t["steps"], "best_epoch": t["best_epoch"],
                "history": t["history"], "wall_s": fit["wall_s"], "generator": tensors["rng/gen"], "fit": fit,
                "optimizer": {"state": opt_state, "param_groups": rec["optimizer"]["param_groups"]}})
            if controller is not None:
                controller.load_state_dict(rec["controller"])
        except (PrunetuneError, KeyError, ValueError, RuntimeError, TypeError) as e:
            raise self.corrupt(f"state does not fit the rebuilt run: {str(e).splitlines()[0][:120]}") from None
        # The process's RNG states last: nothing may draw from them between here and the next training step.
        torch.set_rng_state(tensors["rng/torch"])
        cuda = [tensors[f"rng/cuda/{i}"] for i in range(int(rec["rng"].get("cuda_devices", 0)))]
        if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
            torch.cuda.set_rng_state_all(cuda)
        n = rec["rng"]["numpy"]
        np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
        p = rec["rng"]["python"]
        random.setstate((p[0], tuple(p[1]), p[2]))
