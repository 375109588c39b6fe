"""`python -m prunetune.cli ARGS` for the tests, without paying the imports each time.

Most of a short CLI test is the interpreter importing torch (about 1.5 s here) and, for text models,
transformers and peft (several seconds more): the bad-input corpus alone runs 90-odd commands. A warm
server (tests/warm_cli_server.py) imports them once per test process and forks a child per command,
each with its own working directory, environment, stdin, stdout and stderr and exit code, so what a
test checks (exit code, the one stderr line, no traceback, the files written) is the real process's.

    done = warm_cli.run(["run", "recipe.yaml", "--out", "o"], env=env, cwd=tmp, timeout=300)

returns a subprocess.CompletedProcess (text stdout and stderr) and raises subprocess.TimeoutExpired
when the command outlives `timeout` (the child is killed). A server serves one command at a time:
threads take one each from `servers(n)`. Commands that need a fresh interpreter (signals sent to the
process, a fault injected before the imports, the import itself under test) keep a real subprocess.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

SERVER = Path(__file__).with_name("warm_cli_server.py")


class Server:
    def __init__(self) -> None:
        self._proc = subprocess.Popen([sys.executable, str(SERVER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True, env=os.environ.copy())
        self._lock = threading.Lock()
        self._dir = tempfile.mkdtemp(prefix="warm-cli-")

    def run(self, args: list[str], *, env: dict[str, str] | None = None, cwd: str | Path | None = None,
            timeout: float = 600, script: str | Path | None = None) -> subprocess.CompletedProcess:
        out, err = os.path.join(self._dir, "stdout"), os.path.join(self._dir, "stderr")
        req = {"argv": [str(a) for a in args], "env": dict(os.environ if env is None else env),
               "cwd": str(cwd or os.getcwd()), "stdout": out, "stderr": err, "timeout": timeout,
               "script": str(script) if script else None}
        with self._lock:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the warm CLI server exited with {self._proc.returncode}")
            self._proc.stdin.write(json.dumps(req) + "\n")
            self._proc.stdin.flush()
            answer = json.loads(self._proc.stdout.readline())
            stdout, stderr = (Path(p).read_text(errors="replace") for p in (out, err))
        cmd = [sys.executable, *([str(script)] if script else ["-m", "prunetune.cli"]), *req["argv"]]
        if answer["timed_out"]:
            raise subprocess.TimeoutExpired(cmd, timeout, stdout, stderr)
        return subprocess.CompletedProcess(cmd, answer["rc"], stdout, stderr)

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()
            self._proc.wait(timeout=30)
        for name in ("stdout", "stderr"):
            Path(self._dir, name).unlink(missing_ok=True)
        os.rmdir(self._dir)


_pool: queue.Queue[Server] = queue.Queue()
_made: list[Server] = []
_made_lock = threading.Lock()


def servers(n: int) -> None:
    """Make sure `n` servers exist (started in parallel: each imports for a few seconds)."""
    with _made_lock:
        for _ in range(n - len(_made)):
            s = Server()
            _made.append(s)
            _pool.put(s)


def run(args: list[str], **kw) -> subprocess.CompletedProcess:
    """One command on a free server (one is started when none exists yet)."""
    servers(1)
    s = _pool.get()
    try:
        return s.run(args, **kw)
    finally:
        _pool.put(s)


@atexit.register
def _close_all() -> None:
    for s in _made:
        try:
            s.close()
        except Exception:  # noqa: BLE001 - the test process is ending anyway
            pass
