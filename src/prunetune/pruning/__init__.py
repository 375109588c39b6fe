"""Pruning: what (importance), how (pruners), when (schedules) and which layers (targets)."""
