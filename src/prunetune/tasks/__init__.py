"""Tasks: the head-independent part of a job (loss, metric and its formatting, example inputs), one
file per task, registered by name: `classification`, `regression`, `causal_lm`.

Adding a task is one file here (a `Task` subclass registered with `@TASKS.register(name)`) plus its
line in `prunetune/builtins.py`.
"""

from .base import Task, to_device

__all__ = ["Task", "to_device"]
