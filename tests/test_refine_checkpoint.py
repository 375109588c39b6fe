"""Checkpoint and resume of `prunetune refine`: an interrupted (killed, Ctrl-C) refine, resumed, ends exactly
where an uninterrupted refine ends (CPU); bad or missing checkpoints are one-line errors (exit 2); a fresh
refine over a leftover checkpoint is refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from prunetune import checkpoint as C
from prunetune import cli
from prunetune.checkpointer import Checkpointer
from prunetune.compare import compare_runs
from prunetune.errors import Interrupted, PrunetuneError
from prunetune.pipeline import run
from prunetune.recipe import load_recipe
from prunetune.refine import refine, resume_refine

from conftest import FMNIST, cli_env
from test_refine import path_bundle  # noqa: F401  (registers the in-process data source "by_path")

QUIET = {"log": lambda m: None}


def assert_same(a: Path, b: Path) -> None:
    diffs = compare_runs(a, b, atol=1e-6)  # report.json without timings; masks exact; weights within 1e-6
    assert not diffs, "\n".join(diffs[:20])
    ma, mb = (json.loads((p / "model" / "manifest.json").read_text()) for p in (a, b))
    assert ma == mb  # refined_from, recipe, shapes, mask densities


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A pruned tiny_cnn run (masks saved) on in-process data; refine reads its model/ folder."""
    out = tmp_path_factory.mktemp("refine-ckpt") / "run"
    run(load_recipe(None, [
        "model.name=tiny_cnn", "data.source=by_path", "data.path=orig", "dense.epochs=2", "dense.lr=0.01",
        "finetune.epochs=1", "finetune.batch_size=16", "prune.method=unstructured", "prune.sparsity=0.5",
        "evaluate.latency=false", "evaluate.memory=false",
    ]), out, **QUIET)
    return out / "model"


class _Killed(Exception):
    pass


def _killed_refine(model_dir: Path, overrides: list[str], out: Path, after_writes: int, monkeypatch) -> dict:
    """Refine in-process and stop dead right after the `after_writes`-th checkpoint (as a SIGKILL would)."""
    real, count = Checkpointer.save, {"n": 0}

    def save(self, trainer):
        real(self, trainer)
        count["n"] += 1
        if count["n"] == after_writes:
            self.wait()
            raise _Killed

    with monkeypatch.context() as m:
        m.setattr(Checkpointer, "save", save)
        with pytest.raises(_Killed):
            refine(model_dir, overrides, out=out, data_path="shift-new", **QUIET)
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.tmp-*"))
    return json.loads((C.checkpoint_dir(out) / "checkpoint.json").read_text())


@pytest.mark.parametrize("overrides,after", [
    # mid-epoch step checkpoints, augmentation draws from the trainer's generator
    (["finetune.epochs=3", "finetune.checkpoint_every_steps=2", "finetune.augment.crop_padding=1",
      "finetune.augment.hflip=true"], 4),
    # epoch-end checkpoints, early stopping and the best state restored at the end
    (["finetune.epochs=6", "finetune.lr=0.03", "finetune.early_stopping.patience=1"], 2),
])
def test_killed_refine_resumed_equals_uninterrupted(source, tmp_path, monkeypatch, overrides, after):
    ref = refine(source, overrides, out=tmp_path / "ref", data_path="shift-new", **QUIET)
    assert not C.checkpoint_dir(tmp_path / "ref").exists(), "a completed refine deletes its checkpoint"
    assert ref["checkpoint"]["enabled"] and ref["checkpoint"]["writes"] >= after

    record = _killed_refine(source, overrides, tmp_path / "x", after, monkeypatch)
    assert record["command"] == "refine" and record["dense"] is None
    assert record["run_args"]["source_model"] == str(source) and record["recipe"]["data"]["path"] == "shift-new"
    assert not (C.checkpoint_dir(tmp_path / "x") / "dense").exists(), "refine does not copy its source model"

    rep = resume_refine(tmp_path / "x", **QUIET)
    assert rep["folder"] == str(tmp_path / "x") and not C.checkpoint_dir(tmp_path / "x").exists()
    assert rep["checkpoint"]["resumes"] and rep["checkpoint"]["writes"] >= after
    assert_same(tmp_path / "ref", tmp_path / "x")


def test_ctrl_c_writes_a_checkpoint_then_resume_completes(source, tmp_path, monkeypatch, capsys, ctrl_c):
    overrides = ["finetune.epochs=2", "finetune.checkpoint_every_steps=4"]
    refine(source, overrides, out=tmp_path / "ref", data_path="shift-new", **QUIET)
    out = tmp_path / "model-v2"
    real = Checkpointer.after_step

    def after_step(self, trainer):
        if trainer.global_step == 3:  # Ctrl-C mid-epoch: the handler asks for a checkpoint at this step's end
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        real(self, trainer)

    with monkeypatch.context() as m:
        m.setattr(Checkpointer, "after_step", after_step)
        with pytest.raises(Interrupted) as e:
            refine(source, overrides, out=out, data_path="shift-new", **QUIET)
    assert (e.value.out, e.value.command) == (out, "refine")
    assert C.Resume.load(out, command="refine").record["global_step"] == 3, "written at the step Ctrl-C came in"
    assert not out.exists()
    # What the command line prints for it.
    with pytest.raises(cli.typer.Exit) as ex:
        cli._guard(lambda: (_ for _ in ()).throw(e.value))
    assert ex.value.exit_code == 130
    assert capsys.readouterr().err == f"interrupted: resume with prunetune refine --resume {out}\n"

    resume_refine(out, **QUIET)
    assert_same(tmp_path / "ref", out)


def _cli(args: list[str], capsys) -> tuple[int, str]:
    """The command line in-process: exit code and stderr."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(sys, "argv", ["prunetune", *map(str, args)])
        with pytest.raises(SystemExit) as e:
            cli.main()
    return e.value.code, capsys.readouterr().err


def test_resume_errors_are_one_line_exit_2(source, tmp_path, monkeypatch, capsys):
    overrides = ["finetune.epochs=2"]
    refine(source, overrides, out=tmp_path / "done", data_path="shift-new", **QUIET)
    for name in ("sum", "stale"):
        _killed_refine(source, overrides, tmp_path / name, 1, monkeypatch)
    state = next(C.checkpoint_dir(tmp_path / "sum").glob("state-*.safetensors"))
    data = bytearray(state.read_bytes())
    data[-3] ^= 0xFF
    state.write_bytes(bytes(data))
    # A source model changed after the refine began (a copy: the module's source stays as it is).
    copy = tmp_path / "src" / "model"
    shutil.copytree(source, copy)
    _killed_refine(copy, overrides, tmp_path / "changed", 1, monkeypatch)
    manifest = copy / "manifest.json"
    manifest.write_text(manifest.read_text() + "\n")

    stale = tmp_path / "stale"
    cases = [
        (["refine", "--resume", tmp_path / "nothing"], "no checkpoint"),
        (["refine", "--resume", tmp_path / "done"], "that refine already completed"),
        (["refine", "--resume", tmp_path / "sum"], "does not match its checksum"),
        (["refine", "--resume", tmp_path / "changed"], "changed since the refine started"),
        (["refine", "--resume", stale, "--data", "shift-other"], "drop MODEL_DIR, --data, --set and --out"),
        (["refine", "--resume", stale, source], "drop MODEL_DIR, --data, --set and --out"),
        (["run", "--resume", stale], f"written by prunetune refine; continue it with prunetune refine --resume {stale}"),
        (["refine", source, "--data", "shift-new", "--out", stale],
         f"an interrupted refine left a checkpoint in {C.checkpoint_dir(stale)}; continue it with prunetune refine --resume {stale}"),
        (["refine", "--data", "shift-new"], "give the saved model folder MODEL_DIR"),
    ]
    for args, needle in cases:
        code, err = _cli(args, capsys)
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 2 and len(errors) == 1 and needle in errors[0], (args, needle, err[-1500:])
    assert (C.checkpoint_dir(stale) / "checkpoint.json").exists(), "a refused refine leaves the checkpoint alone"
    assert not stale.exists()

    # The default version folder is refused the same way: model-v2 of the source has a leftover checkpoint.
    _killed_refine(source, overrides, source.parent / "model-v2", 1, monkeypatch)
    try:
        with pytest.raises(PrunetuneError, match=r"refine .*model-v2: an interrupted refine left a checkpoint"):
            refine(source, overrides, data_path="shift-new", **QUIET)
    finally:
        shutil.rmtree(C.checkpoint_dir(source.parent / "model-v2"))


# Through the command line, on real Fashion-MNIST slices: kill -9 mid-fine-tuning, then --resume.
def _fm_slice(folder: Path, start: int, n_train: int, n_test: int) -> Path:
    """Fashion-MNIST images [start, start + n) of the training and test files, as an IDX folder."""
    from prunetune.data.fashion_mnist import read_idx

    from test_data import write_idx

    folder.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        for kind in ("images-idx3", "labels-idx1"):
            name = f"{prefix}-{kind}-ubyte.gz"
            arr = read_idx(FMNIST / name)[start:start + n]
            write_idx(folder / name, np.ascontiguousarray(arr), compress=True)
    return folder


REFINE = ["--set", "data.val_size=100", "--set", "finetune.epochs=3", "--set", "finetune.batch_size=32",
          "--set", "finetune.checkpoint_every_steps=4", "--set", "finetune.augment.hflip=true"]


@pytest.mark.slow
@pytest.mark.skipif(not FMNIST.exists(), reason="Fashion-MNIST not installed (make data)")
def test_sigkill_cli_refine_then_resume_equals_uninterrupted(tmp_path):
    old, new = _fm_slice(tmp_path / "fm-old", 0, 400, 100), _fm_slice(tmp_path / "fm-new", 400, 420, 100)
    run(load_recipe(None, [
        f"data.path={old}", "data.val_size=50", "model.kwargs.hidden=128", "dense.epochs=1", "dense.cache=false",
        "finetune.epochs=1", "prune.method=unstructured", "evaluate.latency=false", "evaluate.memory=false",
    ]), tmp_path / "run", **QUIET)
    model, env = tmp_path / "run" / "model", cli_env(tmp_path)
    pt = [sys.executable, "-m", "prunetune.cli"]

    p = subprocess.run(pt + ["refine", str(model), "--data", str(new), *REFINE, "--out", str(tmp_path / "ref")],
                       check=False, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]

    out = tmp_path / "run" / "model-v2"  # the default version folder
    record_path = C.checkpoint_dir(out) / "checkpoint.json"
    log = tmp_path / "killed.stderr"
    with open(log, "w") as err:
        proc = subprocess.Popen(pt + ["refine", str(model), "--data", str(new), *REFINE], stdout=subprocess.DEVNULL,
                                stderr=err, env=env)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert proc.poll() is None, "the refine ended before it could be killed:\n" + log.read_text()[-2000:]
            try:
                seen = json.loads(record_path.read_text())
            except (OSError, ValueError):
                seen = None
            if seen is not None and seen["global_step"] >= 12:  # epoch 2 of 3 under way (10 steps an epoch)
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        else:
            raise AssertionError("no checkpoint appeared:\n" + log.read_text()[-2000:])
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    last = json.loads(record_path.read_text())
    assert (last["fit"]["epoch"], last["fit"]["batches"]) < (4, 0), "the kill landed after fine-tuning"

    p = subprocess.run(pt + ["refine", "--resume", str(out)], check=False, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"wrote {out}" in p.stdout and "resume: " in p.stderr
    assert not C.checkpoint_dir(out).exists()
    assert_same(tmp_path / "ref", out)
