"""Full fine-tuning: every parameter trains (also how the dense model is trained)."""

from __future__ import annotations

from ..registry import FINETUNE_METHODS
from .base import Method


@FINETUNE_METHODS.register("full")
class Full(Method):
    """Full fine-tuning: every parameter trains."""

    name = "full"
