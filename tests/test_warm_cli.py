"""The warm command line the CLI tests use (tests/warm_cli.py) behaves as a fresh `python -m prunetune.cli`
process would: the same exit code, stdout and stderr, its own working directory and environment, a
traceback and exit 1 for an uncaught exception, and a kill at the timeout."""

from __future__ import annotations

import subprocess
import sys

import pytest

import warm_cli
from conftest import cli_env


def test_a_command_gives_what_a_fresh_process_gives(tmp_path):
    args = ["run", "missing.yaml", "--out", "o"]
    env = cli_env(tmp_path)
    fresh = subprocess.run([sys.executable, "-m", "prunetune.cli", *args], capture_output=True, text=True, env=env,
                           cwd=tmp_path, timeout=120)
    warm = warm_cli.run(args, env=env, cwd=tmp_path, timeout=120)
    assert (warm.returncode, warm.stdout, warm.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
    assert warm.returncode == 2 and warm.stderr == "error: missing.yaml: recipe file not found; give the path to a YAML recipe\n"


def test_each_command_has_its_own_directory_environment_and_exit(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text("import os, sys\nprint(os.getcwd(), os.environ.get('PROBE'), sys.argv[1:])\n"
                      "print('to stderr', file=sys.stderr)\nsys.exit(int(sys.argv[1]))\n")
    for code, where in ((0, tmp_path), (5, tmp_path.parent)):
        p = warm_cli.run([str(code), "x"], env={"PROBE": f"p{code}"}, cwd=where, script=script, timeout=60)
        assert p.returncode == code and p.stdout == f"{where} p{code} ['{code}', 'x']\n" and p.stderr == "to stderr\n"
    crash = tmp_path / "crash.py"
    crash.write_text("raise ValueError('boom')\n")
    p = warm_cli.run([], cwd=tmp_path, script=crash, timeout=60)
    assert p.returncode == 1 and p.stderr.startswith("Traceback") and p.stderr.endswith("ValueError: boom\n")
    thread = tmp_path / "thread.py"  # the exit waits for a non-daemon thread, as a fresh interpreter's does
    thread.write_text("import threading, time\nthreading.Thread(target=lambda: (time.sleep(0.3), print('joined'))).start()\n")
    assert warm_cli.run([], cwd=tmp_path, script=thread, timeout=60).stdout == "joined\n"
    sleeper = tmp_path / "sleep.py"
    sleeper.write_text("import time\ntime.sleep(30)\n")
    with pytest.raises(subprocess.TimeoutExpired):
        warm_cli.run([], cwd=tmp_path, script=sleeper, timeout=0.5)
    assert warm_cli.run([str(0)], cwd=tmp_path, script=script, timeout=60).returncode == 0  # the server lives on
