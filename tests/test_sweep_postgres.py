"""Two sweep workers share one study in a real PostgreSQL server; one is SIGKILLed mid-trial.

`make test` (and so `.ci/run`) installs and starts Debian's PostgreSQL and sets
PRUNETUNE_TEST_PG_URL. Without it the test looks for the same server on loopback and is skipped
only when none answers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

from conftest import FMNIST

URL = os.environ.get("PRUNETUNE_TEST_PG_URL", "postgresql://prunetune:prunetune@127.0.0.1:5432/prunetune_test")


def _server_up() -> bool:
    try:
        import sqlalchemy

        with sqlalchemy.create_engine(URL, connect_args={"connect_timeout": 3}).connect():
            return True
    except Exception:
        return False


pytestmark = [
    pytest.mark.skipif(not os.environ.get("PRUNETUNE_TEST_PG_URL") and not _server_up(),
                       reason="no PostgreSQL server (make test starts one)"),
    pytest.mark.skipif(not FMNIST.exists(), reason="needs dataset-fashion-mnist"),
]


class Worker:
    """A `prunetune sweep` process whose stderr lines are collected as they arrive."""

    def __init__(self, recipe: Path, out: Path, study: str, env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "prunetune.cli", "sweep", str(recipe), "--storage", URL, "--study", study, "--out", str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())

    def wait_for(self, needle: str, timeout: float) -> None:
        end = time.time() + timeout
        while time.time() < end:
            if any(needle in line for line in self.lines):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"worker never logged {needle!r}: {self.lines[-20:]}")


def test_two_workers_one_killed_mid_trial_every_trial_counted_once(tmp_path):
    import optuna
    from optuna.trial import TrialState

    study = f"pg-{uuid.uuid4().hex[:10]}"
    recipe = tmp_path / "sweep.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "pg",
        "data": {"limit": 600, "val_size": 200, "test_limit": 300},
        "dense": {"epochs": 1},
        "finetune": {"epochs": 4},
        "evaluate": {"min_run_time": 0.05, "memory": False},
        "search": {"tolerance": 50.0, "objective": "nonzero", "sampler": "random", "trials": 6, "heartbeat_s": 1,
                   "retries": 2, "space": {"prune.sparsity": [0.2, 0.8], "prune.method": {"choices": ["unstructured", "structured"]}}},
    }))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PRUNETUNE_CACHE": str(tmp_path / "cache")}
    # Train the shared dense model once first, so both workers start their trials at once.
    warm = subprocess.run([sys.executable, "-m", "prunetune.cli", "sweep", str(recipe), "--storage", URL, "--study", study,
                           "--out", str(tmp_path / "w0"), "--trials", "0"], capture_output=True, text=True, env=env, timeout=600)
    assert warm.returncode == 0, warm.stderr[-2000:]

    a = Worker(recipe, tmp_path / "a", study, env)
    b = Worker(recipe, tmp_path / "b", study, env)
    a.wait_for("trial ", timeout=300)  # a trial has started in worker a
    time.sleep(1.0)  # ... and is in the middle of its fine-tuning
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(timeout=30)
    killed_at = [line for line in a.lines if line.startswith("trial ")]
    assert b.proc.wait(timeout=900) == 0, "\n".join(b.lines[-30:])

    trials = optuna.load_study(study_name=study, storage=URL).get_trials(deepcopy=False)
    states = [t.state for t in trials]
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states, states
    assert len(finished) == 6, (states, killed_at)  # the target, reached exactly once: nothing lost, nothing doubled
    assert failed, f"the killed worker's trial should be failed: {states} {killed_at}"
    retried = {t.system_attrs.get("failed_trial") for t in trials} - {None}
    assert {t.number for t in failed} <= retried  # every failed trial was retried with its parameters
    for f in failed:
        retry = next(t for t in trials if t.system_attrs.get("failed_trial") == f.number)
        assert retry.params == f.params
    doc = json.loads((tmp_path / "b" / "sweep.json").read_text())
    assert sorted(r["trial"] for r in doc["rows"]) == sorted(t.number for t in trials)
    assert doc["counts"].get("fail") == len(failed)
