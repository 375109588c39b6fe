"""Errors that reach the user as one line (exit code 2 for bad input, 3 for runtime faults)."""

from __future__ import annotations


class PrunetuneError(Exception):
    """Bad input from the user: a recipe field, a file, a folder. Exit code 2.

    The message names what is wrong and how to fix it, on one line.
    """

    exit_code = 2


class RuntimeFault(PrunetuneError):
    """A fault found while running (e.g. a non-finite loss). Exit code 3."""

    exit_code = 3
