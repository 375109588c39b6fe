"""Checkpoint and resume of `prunetune run`: a killed or interrupted run, resumed, ends exactly where an
uninterrupted run with the same seed ends (CPU); bad checkpoints are one-line errors; a non-finite loss
names the last good checkpoint and keeps it."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prunetune import checkpoint as C
from prunetune.checkpointer import Checkpointer
from prunetune.compare import compare_runs
from prunetune.errors import RuntimeFault
from prunetune.pipeline import resume_run, run
from prunetune.recipe import load_recipe

import warm_cli
from conftest import FMNIST, cli_env

PT = [sys.executable, "-m", "prunetune.cli"]
TINY = ["model.name=tiny_cnn", "data.source=synthetic", "data.limit=300", "dense.epochs=2", "dense.lr=0.01",
        "finetune.epochs=3", "finetune.batch_size=16", "evaluate.latency=false", "evaluate.memory=false", "dense.cache=false"]


def assert_same_run(a: Path, b: Path) -> None:
    diffs = compare_runs(a, b, atol=1e-6)  # report.json without timings; masks exact; weights within 1e-6
    assert not diffs, "\n".join(diffs[:20])


class _Killed(Exception):
    pass


def _run_killed(recipe, out: Path, after_writes: int, monkeypatch) -> dict:
    """Run in-process and stop dead right after the `after_writes`-th checkpoint (as a SIGKILL would)."""
    real = Checkpointer.save
    count = {"n": 0}

    def save(self, trainer):
        real(self, trainer)
        count["n"] += 1
        if count["n"] == after_writes:
            raise _Killed

    with monkeypatch.context() as m:
        m.setattr(Checkpointer, "save", save)
        with pytest.raises(_Killed):
            run(recipe, out, log=lambda msg: None)
    assert not out.exists()
    return json.loads((C.checkpoint_dir(out) / "checkpoint.json").read_text())


# In-process: every kind of position a checkpoint can hold, resumed to the identical result.
@pytest.mark.parametrize("extra,after", [
    # masks, gradual events before and after the kill, mid-epoch step checkpoint, augmentation draws
    (["prune.method=unstructured", "prune.importance=random", "prune.schedule.kind=gradual", "prune.schedule.end=1.0",
      "finetune.checkpoint_every_steps=5", "finetune.augment.crop_padding=1", "finetune.augment.hflip=true"], 2),
    # dynamic masks: drop-and-grow steps before and after the kill, the count of weights grown
    (["prune.method=unstructured", "prune.sparsity=0.8", "prune.schedule.kind=dynamic", "prune.schedule.steps=6",
      "prune.schedule.end=0.9", "finetune.checkpoint_every_steps=5"], 2),
    # structured removal during fine-tuning (Torch-Pruning's iterative state), epoch-end checkpoint
    (["prune.method=structured", "prune.schedule.kind=gradual", "prune.schedule.end=1.0"], 1),
    # iterative phases: the kill falls in a later phase, after a structural prune between phases
    (["prune.method=structured", "prune.importance=taylor", "prune.schedule.kind=iterative", "prune.schedule.steps=3"], 4),
    # dropout (global torch RNG) and distillation, one-shot masks, mid-epoch
    (["model.name=lenet300", "model.kwargs.dropout=0.3", "prune.method=unstructured", "finetune.checkpoint_every_steps=7",
      "finetune.distill.alpha=0.5"], 3),
    # early stopping: killed right after the stopping epoch's checkpoint
    (["prune.method=unstructured", "finetune.epochs=8", "finetune.lr=0.05", "finetune.early_stopping.patience=1"], 3),
])
def test_in_process_resume_equals_uninterrupted(tmp_path, monkeypatch, extra, after):
    recipe = load_recipe(None, [*TINY, *extra])
    run(recipe, tmp_path / "ref", log=lambda m: None)
    assert not C.checkpoint_dir(tmp_path / "ref").exists(), "a completed run deletes its checkpoint"
    _run_killed(recipe, tmp_path / "x", after, monkeypatch)
    rep = resume_run(tmp_path / "x", log=lambda m: None)
    assert not C.checkpoint_dir(tmp_path / "x").exists()
    assert rep["checkpoint"]["resumes"] and rep["checkpoint"]["writes"] >= after
    assert_same_run(tmp_path / "ref", tmp_path / "x")


def test_non_finite_loss_names_the_last_good_checkpoint_and_keeps_it(tmp_path, monkeypatch):
    from prunetune.tasks.classification import Classification

    real_save, real_loss = Checkpointer.save, Classification.loss
    writes = {"n": 0}

    def save(self, trainer):
        real_save(self, trainer)
        writes["n"] += 1

    def loss(self, logits, target, label_smoothing=0.0):
        value = real_loss(self, logits, target, label_smoothing)
        return value * float("nan") if writes["n"] else value  # NaN from the step after the first checkpoint

    monkeypatch.setattr(Checkpointer, "save", save)
    monkeypatch.setattr(Classification, "loss", loss)
    recipe = load_recipe(None, [*TINY, "dense.epochs=0", "prune.method=unstructured", "finetune.checkpoint_every_steps=4"])
    folder = C.checkpoint_dir(tmp_path / "x")
    with pytest.raises(RuntimeFault, match=r"non-finite loss at step 5 \(epoch 1, lr [0-9.e+-]+\); last good checkpoint: "
                                           + re.escape(str(folder)) + r" \(step 4, epoch 1\)"):
        run(recipe, tmp_path / "x", log=lambda m: None)
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.tmp-*"))
    assert json.loads((folder / "checkpoint.json").read_text())["global_step"] == 4
    assert C.Resume.load(tmp_path / "x").record["fit"]["batches"] == 4  # whole and loadable


def test_fault_before_any_checkpoint_says_so(tmp_path):
    recipe = load_recipe(None, [*TINY, "finetune.lr=1e30", "finetune.optimizer=sgd", "finetune.lr_schedule=constant"])
    with pytest.raises(RuntimeFault, match="no checkpoint was written yet"):
        run(recipe, tmp_path / "x", log=lambda m: None)


def test_resume_errors_are_one_line_exit_2(tmp_path, monkeypatch):
    recipe = load_recipe(None, [*TINY, "prune.method=unstructured"])
    run(recipe, tmp_path / "done", log=lambda m: None)
    _run_killed(recipe, tmp_path / "sum", 1, monkeypatch)
    _run_killed(recipe, tmp_path / "json", 1, monkeypatch)
    _run_killed(recipe, tmp_path / "stale", 1, monkeypatch)
    state = next(C.checkpoint_dir(tmp_path / "sum").glob("state-*.safetensors"))
    data = bytearray(state.read_bytes())
    data[-3] ^= 0xFF
    state.write_bytes(bytes(data))
    (C.checkpoint_dir(tmp_path / "json") / "checkpoint.json").write_text('{"format": "prunetune-checkpoint/1", "reci')
    cases = [
        (["run", "--resume", str(tmp_path / "nothing")], "no checkpoint"),
        (["run", "--resume", str(tmp_path / "done")], "already completed"),
        (["run", "--resume", str(tmp_path / "sum")], "does not match its checksum"),
        (["run", "--resume", str(tmp_path / "json")], "checkpoint.json unreadable"),
        (["run", "--resume", str(tmp_path / "sum"), "--set", "finetune.lr=0.1"], "drop RECIPE, --set and --out"),
        (["run", "--out", str(tmp_path / "stale")], "continue it with prunetune run --resume"),
    ]
    for args, needle in cases:
        p = warm_cli.run(args, env=cli_env(tmp_path), timeout=120)
        err = [line for line in p.stderr.strip().splitlines() if line.startswith("error:")]
        assert p.returncode == 2, (args, p.stderr[-1500:])
        assert len(err) == 1 and needle in err[0], (needle, p.stderr[-1500:])
        assert "Traceback" not in p.stderr
    assert C.checkpoint_dir(tmp_path / "stale").exists(), "a refused run leaves the checkpoint alone"


# Through the command line, on a 600-image slice of Fashion-MNIST: kill -9 / Ctrl-C, then --resume.
CLI_BASE = ["--set", "data.limit=600", "--set", "data.val_size=100", "--set", "data.test_limit=150",
            "--set", "dense.epochs=1", "--set", "finetune.epochs=3", "--set", "finetune.batch_size=64",
            "--set", "model.kwargs.hidden=256", "--set", "evaluate.latency=false", "--set", "evaluate.memory=false"]
GRADUAL = ["--set", "prune.method=unstructured", "--set", "prune.schedule.kind=gradual", "--set", "prune.schedule.end=1.0",
           "--set", "finetune.checkpoint_every_steps=3"]
STRUCTURED = ["--set", "prune.method=structured", "--set", "prune.sparsity=0.5"]


@pytest.fixture(scope="module")
def cli_home(tmp_path_factory):
    if not FMNIST.exists():
        pytest.skip("Fashion-MNIST not installed")
    home = tmp_path_factory.mktemp("ckcli")
    return home, {}


def _reference(home, refs: dict, name: str, args: list[str]) -> Path:
    """An uninterrupted run of `args` (once per module; the dense model is cached for the others)."""
    if name not in refs:
        out = home / f"ref-{name}"
        p = subprocess.run(PT + ["run", *CLI_BASE, *args, "--out", str(out)], capture_output=True, text=True,
                           env=cli_env(home), timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        refs[name] = out
    return refs[name]


def _start_and_stop(home, args: list[str], out: Path, sig: int, ready, preexec=None) -> tuple[subprocess.Popen, dict, str]:
    """Start a run, wait until its checkpoint satisfies `ready(record)`, send `sig`; return the record seen."""
    log = home / f"{out.name}.stderr"
    with open(log, "w") as err:
        proc = subprocess.Popen(PT + ["run", *CLI_BASE, *args, "--out", str(out)], stdout=subprocess.DEVNULL,
                                stderr=err, env=cli_env(home), preexec_fn=preexec)
    record_path = C.checkpoint_dir(out) / "checkpoint.json"
    deadline = time.monotonic() + 240
    record = None
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, "the run ended before it could be stopped:\n" + log.read_text()[-2000:]
            try:
                record = json.loads(record_path.read_text())
            except (OSError, ValueError):
                record = None
            if record is not None and ready(record):
                proc.send_signal(sig)
                break
            time.sleep(0.01)
        else:
            raise AssertionError("no checkpoint appeared:\n" + log.read_text()[-2000:])
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc, record, log.read_text()


def _resume_cli(home, out: Path) -> None:
    p = subprocess.run(PT + ["run", "--resume", str(out)], capture_output=True, text=True, env=cli_env(home), timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "fine-tuned" in p.stdout
    assert not C.checkpoint_dir(out).exists()


@pytest.mark.slow
@pytest.mark.parametrize("name,args", [("gradual", GRADUAL), ("structured", STRUCTURED)])
def test_sigkill_mid_finetuning_then_resume_equals_uninterrupted(cli_home, name, args):
    home, refs = cli_home
    ref = _reference(home, refs, name, args)
    out = home / f"killed-{name}"
    # Killed as soon as epoch 1 of 3 is checkpointed (gradual: 4 pruning events span the kill).
    proc, _, _ = _start_and_stop(home, args, out, signal.SIGKILL, lambda r: r["fit"]["epoch"] >= 2)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    last = json.loads((C.checkpoint_dir(out) / "checkpoint.json").read_text())
    assert (last["fit"]["epoch"], last["fit"]["batches"]) < (4, 0), "the kill landed after fine-tuning"
    if name == "gradual":
        assert 0 < last["fit"]["events_done"] < 4
    _resume_cli(home, out)
    assert_same_run(ref, out)


@pytest.mark.slow
def test_ctrl_c_writes_a_checkpoint_and_exits_130_then_resume_completes(cli_home, ctrl_c):
    home, refs = cli_home
    ref = _reference(home, refs, "structured", STRUCTURED)
    out = home / "interrupted"
    proc, seen, err = _start_and_stop(home, STRUCTURED, out, signal.SIGINT, lambda r: r["fit"]["epoch"] >= 2, preexec=ctrl_c)
    assert proc.returncode == 130, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("interrupted")]
    assert lines == [f"interrupted: resume with prunetune run --resume {out}"], err[-2000:]
    assert "Traceback" not in err
    last = json.loads((C.checkpoint_dir(out) / "checkpoint.json").read_text())
    assert last["global_step"] > seen["global_step"], "Ctrl-C writes a checkpoint at the next step boundary"
    assert not out.exists() and not list(home.glob(f".{out.name}.tmp-*"))
    _resume_cli(home, out)
    assert_same_run(ref, out)
