"""Errors that reach the user as one line (exit code 2 for bad input, 3 for runtime faults)."""

from __future__ import annotations

import re


def one_line(text: str) -> str:
    """`text` with control characters escaped (a newline in a key or a path becomes `\\n`): an error
    message is one line however odd the input it quotes."""
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m.group())[1:-1], text)


class PrunetuneError(Exception):
    """Bad input from the user: a recipe field, a file, a folder. Exit code 2.

    The message names what is wrong and how to fix it, on one line (control characters in the
    input it quotes, such as a newline inside a CSV header cell, are shown escaped).
    """

    exit_code = 2

    def __str__(self) -> str:
        return one_line(super().__str__())


class RuntimeFault(PrunetuneError):
    """A fault found while running (e.g. a non-finite loss). Exit code 3."""

    exit_code = 3


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run that has a checkpoint: `out` is the run folder to pass to
    `prunetune <command> --resume` (command "run" or "refine")."""

    def __init__(self, out, command: str = "run") -> None:
        super().__init__(str(out))
        self.out, self.command = out, command
