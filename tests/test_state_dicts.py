"""The stateful objects of fine-tuning carry their own state: a Trainer, a PruningController and a
pruner rebuilt from scratch and given a `state_dict()` taken mid-run (through `load_state_dict()`)
continue exactly as the originals did; and a checkpoint folder written by the code before these
methods existed still resumes to the uninterrupted result."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prunetune.artifacts import resize_to
from prunetune.checkpoint import checkpoint_dir
from prunetune.compare import compare_runs
from prunetune.models import build_model, classifier_name
from prunetune.pipeline import resume_run, run
from prunetune.pruning.controller import PruningController
from prunetune.pruning.targets import select_targets
from prunetune.recipe import load_recipe
from prunetune.registry import TASKS
from prunetune.training import Trainer

from conftest import ROOT, cli_env, make_bundle

QUIET = {"log": lambda m: None}
TINY = ["model.name=tiny_mlp", "data.source=synthetic", "data.limit=200", "dense.epochs=1", "dense.cache=false",
        "finetune.epochs=3", "finetune.batch_size=16", "evaluate.latency=false", "evaluate.memory=false"]


class _Capture:
    """A checkpoint hook that keeps a deep copy of every object's state (and the torch RNG) at one step."""

    def __init__(self, at: int, controller=None, pruner=None) -> None:
        self.at, self.controller, self.pruner, self.saved = at, controller, pruner, None

    def after_step(self, trainer) -> None:
        if trainer.global_step == self.at:
            self.saved = copy.deepcopy({
                "trainer": trainer.state_dict(), "model": trainer.model.state_dict(),
                "shapes": {k: list(v.shape) for k, v in trainer.model.state_dict().items()},
                "controller": self.controller.state_dict() if self.controller else None,
                "pruner": self.pruner.state_dict() if self.pruner else None, "rng": torch.get_rng_state()})
            json.dumps({k: self.saved[k] for k in ("controller", "pruner")})  # plain JSON-able values

    def after_epoch(self, trainer) -> None:
        pass

    def last_good(self) -> str:
        return ""


def _rows(history):
    return [{k: v for k, v in row.items() if k != "epoch_s"} for row in history]


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# 8 steps per epoch: mid-epoch (the shuffle is replayed), and after an epoch's last step, before its validation
@pytest.mark.parametrize("at", [5, 8])
def test_trainer_resumed_from_its_state_dict_continues_identically(at):
    recipe = load_recipe(None, [*TINY, "finetune.augment.hflip=true", "finetune.augment.crop_padding=1",
                                "finetune.early_stopping.patience=2"])
    bundle, task = make_bundle(n=200, seed=recipe.seed), TASKS.get("classification")()
    torch.manual_seed(0)
    dense = build_model(recipe.model, 3, bundle.input_shape)

    def trainer(model):
        return Trainer(model, task, bundle, recipe.finetune, torch.device("cpu"), seed=1, **QUIET)

    ref = trainer(copy.deepcopy(dense))
    ref.checkpoint = cap = _Capture(at)
    ref.fit(3)
    assert cap.saved["trainer"]["fit"]["batches"] == at and ref.steps > at

    again = trainer(copy.deepcopy(dense))
    again.model.load_state_dict(cap.saved["model"])
    again.load_state_dict(cap.saved["trainer"])
    torch.set_rng_state(cap.saved["rng"])
    again.fit(3)
    assert _rows(again.history) == _rows(ref.history)
    assert (again.steps, again.global_step, again.best_epoch) == (ref.steps, ref.global_step, ref.best_epoch)
    _same_weights(again.model, ref.model)


def _pruning_run(recipe, dense, bundle, task):
    """What `run` wires for fine-tuning: a controller, its pruner on a copy of the dense model, a Trainer."""
    p, device = recipe.prune, torch.device("cpu")
    targets = select_targets(dense, p.include, p.exclude, [classifier_name(dense)])
    controller = PruningController(p, task, bundle, device, targets, recipe.finetune.epochs, recipe.seed)
    model = copy.deepcopy(dense)
    pruner = controller.make_pruner(model, controller.sparsities)
    trainer = Trainer(model, task, bundle, recipe.finetune, device, recipe.seed + 1, **QUIET)
    return controller, pruner, trainer


@pytest.mark.parametrize("extra,at", [
    # Torch-Pruning removes channels between phases: resumed in phase 2, after a structural prune
    (["prune.method=structured", "prune.schedule.kind=iterative", "prune.schedule.steps=3"], 30),
    # masks pruned by events during fine-tuning, some before and some after the resume point
    (["prune.method=unstructured", "prune.schedule.kind=gradual", "prune.schedule.end=1.0"], 9),
])
def test_controller_pruner_and_trainer_resume_from_their_state_dicts(extra, at):
    recipe = load_recipe(None, [*TINY, *extra])
    bundle, task = make_bundle(n=200, seed=recipe.seed), TASKS.get("classification")()
    torch.manual_seed(0)
    dense = build_model(recipe.model, 3, bundle.input_shape)

    controller, pruner, trainer = _pruning_run(recipe, dense, bundle, task)
    trainer.checkpoint = cap = _Capture(at, controller, pruner)
    history = controller.finetune(trainer.model, pruner, trainer, already_pruned=False, **QUIET)
    assert cap.saved is not None and cap.saved["pruner"]["steps_done"] >= 1

    controller2, pruner2, trainer2 = _pruning_run(recipe, dense, bundle, task)
    pruner2.load_state_dict(cap.saved["pruner"])
    resize_to(trainer2.model, cap.saved["shapes"])
    trainer2.model.load_state_dict(cap.saved["model"])
    trainer2.load_state_dict(cap.saved["trainer"])
    controller2.load_state_dict(cap.saved["controller"])
    torch.set_rng_state(cap.saved["rng"])
    history2 = controller2.finetune(trainer2.model, pruner2, trainer2, already_pruned=False, **QUIET)
    assert _rows(history2) == _rows(history)
    assert pruner2.state_dict() == pruner.state_dict()
    _same_weights(trainer2.model, trainer.model)


def test_structured_pruner_state_carries_torch_pruning_progress():
    """Without its state a rebuilt Torch-Pruning pruner would start its schedule over (and cut less)."""
    recipe = load_recipe(None, [*TINY, "prune.method=structured", "prune.schedule.kind=iterative", "prune.schedule.steps=3"])
    bundle, task = make_bundle(n=200, seed=recipe.seed), TASKS.get("classification")()
    torch.manual_seed(0)
    dense = build_model(recipe.model, 3, bundle.input_shape)
    controller, pruner, trainer = _pruning_run(recipe, dense, bundle, task)
    model, steps = trainer.model, controller.sparsities
    controller.prune_step(pruner, model, steps[0])
    state = json.loads(json.dumps(pruner.state_dict()))  # what a checkpoint record holds
    assert state["steps_done"] == 1 and state["torch_pruning"]["current_step"] == 1
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    weights = copy.deepcopy(model.state_dict())
    controller.prune_step(pruner, model, steps[1])

    def rebuilt(load: bool):
        c, p, t = _pruning_run(recipe, dense, bundle, task)
        if load:
            p.load_state_dict(state)
        resize_to(t.model, shapes)
        t.model.load_state_dict(weights)
        c.prune_step(p, t.model, steps[1])
        return t.model

    _same_weights(rebuilt(True), model)
    with pytest.raises(AssertionError):
        _same_weights(rebuilt(False), model)


# A checkpoint written by the code before state_dict()/load_state_dict() (commit 9933572, whose
# checkpoint.py read the objects' fields itself) must still resume: written here by that code, in a
# subprocess, then resumed by this code and compared with an uninterrupted run of this code.
BASE = "9933572"
OLD_WRITER = """
import sys
sys.path.insert(0, {tests!r})
import conftest  # registers tiny_mlp and the synthetic data source
import prunetune
assert prunetune.__file__.startswith({src!r}), prunetune.__file__  # the previous code, not this one
from prunetune import checkpoint as C
from prunetune.pipeline import run
from prunetune.recipe import load_recipe

real, n = C.Checkpointer.save, [0]

class Killed(Exception):
    pass

def save(self, trainer, pos):
    real(self, trainer, pos)
    n[0] += 1
    if n[0] == {after}:
        self.wait()
        raise Killed

C.Checkpointer.save = save
try:
    run(load_recipe(None, {overrides!r}), {out!r}, log=lambda m: None)
except Killed:
    pass
"""


@pytest.fixture(scope="module")
def old_src(tmp_path_factory) -> Path:
    git = shutil.which("git")
    if git is None or subprocess.run([git, "-C", str(ROOT), "cat-file", "-e", f"{BASE}^{{commit}}"]).returncode:
        pytest.skip(f"needs git and commit {BASE} of this repository")
    where = tmp_path_factory.mktemp("old")
    archive = subprocess.run([git, "-C", str(ROOT), "archive", BASE, "src"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    return where / "src"


@pytest.mark.parametrize("extra,after", [
    (["prune.method=structured", "prune.schedule.kind=gradual", "prune.schedule.end=1.0"], 2),
    # importance and scope spelled out: the old code's unstructured defaults (l2, per layer) are not today's
    (["prune.method=unstructured", "prune.importance=l2", "prune.scope=layer", "prune.schedule.kind=gradual",
      "prune.schedule.end=1.0", "finetune.checkpoint_every_steps=5", "finetune.augment.hflip=true"], 3),
])
def test_checkpoint_written_by_the_previous_code_resumes(old_src, tmp_path, extra, after):
    # The old code's defaults spelled out (today's: lr 2e-3 with a 0.2-epoch warm-up, a teacher, evaluation batches of 128).
    # 210 examples, 70 a class: held-out splits took equal counts per class before and keep the class
    # proportions now, which select the same examples only when the classes are equal.
    overrides = [*TINY, "data.limit=210", "finetune.lr=1e-3", "finetune.warmup_epochs=0", "finetune.distill=null", "data.eval_batch_size=512", *extra]
    out = tmp_path / "x"
    script = OLD_WRITER.format(tests=str(ROOT / "tests"), src=str(old_src), after=after, overrides=overrides, out=str(out))
    env = {**cli_env(tmp_path), "PYTHONPATH": str(old_src)}
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    record = json.loads((checkpoint_dir(out) / "checkpoint.json").read_text())
    assert "pruner_steps" in record["controller"] and record["global_step"] > 0

    recipe = load_recipe(None, overrides)
    run(recipe, tmp_path / "ref", **QUIET)
    resume_run(out, **QUIET)
    diffs = compare_runs(tmp_path / "ref", out, atol=1e-6)
    assert not diffs, "\n".join(diffs[:20])
