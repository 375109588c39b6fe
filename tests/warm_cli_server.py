"""The server behind tests/warm_cli.py: import torch, transformers and prunetune once, then fork one
child per command line read from stdin (one JSON request per line), and answer its exit code.

Each child is its own process, as `python -m prunetune.cli ARGS` would be: its own working directory,
environment, stdin (/dev/null), stdout and stderr (files the client reads), `sys.argv`, and
`sys.path[0]` set to the working directory as `-m` sets it; it runs the CLI module as `__main__`,
waits for its non-daemon threads, runs the atexit handlers, then exits with the CLI's code (an uncaught exception: its traceback on
stderr and 1, as the interpreter does). Only the imports are shared. The server itself runs no torch
operation, so no OpenMP thread pool exists when it forks.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys
import threading
import time
import traceback

import torch  # noqa: F401

import prunetune.cli  # noqa: F401

try:  # the text and language-model commands import these lazily; preloading them is the point
    import peft  # noqa: F401
    import transformers  # noqa: F401
except ImportError:
    pass
# `-m` runs the module as __main__ only; a copy left imported would make runpy warn that it was found in
# sys.modules before execution. Its imports stay cached.
del sys.modules["prunetune.cli"]


def _child(req: dict) -> None:
    code = 1
    try:
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                (2, req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
            f = os.open(path, flags, 0o600)
            os.dup2(f, fd)
            os.close(f)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        sys.path[0] = os.getcwd()
        sys.argv = ["prunetune", *req["argv"]]
        try:
            if req.get("script"):
                sys.argv = [req["script"], *req["argv"]]
                runpy.run_path(req["script"], run_name="__main__")
            else:
                runpy.run_module("prunetune.cli", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except BaseException:  # noqa: BLE001 - what the interpreter would print
            traceback.print_exc()
            code = 1
        threading._shutdown()  # as the interpreter's exit does: wait for non-daemon threads, then atexit
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def main() -> None:
    for line in sys.stdin:
        req = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            _child(req)
        deadline, timed_out = time.monotonic() + req["timeout"], False
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                _, status = os.waitpid(pid, 0)
                timed_out = True
                break
            time.sleep(0.005)
        print(json.dumps({"rc": os.waitstatus_to_exitcode(status), "timed_out": timed_out}), flush=True)


if __name__ == "__main__":
    main()
